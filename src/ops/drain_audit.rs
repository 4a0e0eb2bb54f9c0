//! The audit records of `eventpipe spool drain`: what a restarted gateway on the spool would
//! publish, under the dead host's identity.
//!
//! A host killed with records in its spool published windows with `events_pending > 0` and
//! never gets another boot to bring them to 0; the checker would leave those windows pending
//! for ever. The drain therefore does what `FallbackSink::attach_audit` does at a gateway's
//! start-up: before anything is sent, it counts every record left in the spool (from the replay
//! checkpoints) as pending in its own window, then the replayer moves each to `events_replayed`
//! as Kafka acknowledges it (a quarantined record leaves pending, as in the gateway). The same
//! [`Books`] and [`Publisher`] as the gateway's publish them: `collector_host` is the
//! `Enrichment.collector_host` the spooled records carry (the dead host's, so that the checker
//! matches them with the records it finds in the topics and reads pending from this, the host's
//! latest boot), a fresh `boot_id`, and the config's `[audit]` topic, window and delays.
//!
//! A spool whose records name several hosts (a host renamed between boots on the same disk) is
//! not audited: the books are not kept per host, and counting one host's records under another
//! would make the checker report the second's windows as missing. The drain then warns and
//! publishes nothing: those windows stay as their hosts left them (pending: the safe side).
//! Records whose payload does not name a host (not an `Event`/`DeadLetter`) count under the host
//! the others name.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::audit::{Books, Identity, Publisher, ReplayAudit};
use crate::config::Config;
use crate::sink::kafka::{producer_config, KafkaSink};
use crate::sink::spool::Spool;

/// The longest the final publish may take once the spool is drained. Kafka has just
/// acknowledged the records, so it usually takes a round trip; a refusal for good (e.g. the
/// audit topic does not exist) ends it at once.
pub const FLUSH_BUDGET: Duration = Duration::from_secs(30);

/// The same after SIGINT/SIGTERM (as a gateway's shutdown publishes what it counted): short,
/// the operator asked the drain to stop.
pub const INTERRUPT_FLUSH_BUDGET: Duration = Duration::from_secs(5);

/// Host names remembered while reading the spool (enough to name them in a warning).
const MAX_HOSTS: usize = 8;

/// How the audit of a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditStatus {
    /// Every audit record was acknowledged by Kafka.
    Published,
    /// Some audit records could not be published within the budget (the drained records are
    /// delivered all the same; the checker sees the host's windows as still pending).
    Failed,
    /// Not audited: the records name several hosts, or none.
    Skipped,
    /// The drain stopped early (interrupted: what was counted is published within a short
    /// budget; timed out: nothing more is published). The next run counts what is left.
    Stopped,
}

/// The audit part of the drain's summary.
#[derive(Debug, Clone, Serialize)]
pub struct AuditSummary {
    pub status: AuditStatus,
    pub topic: String,
    /// The host the records were published under.
    pub collector_host: Option<String>,
    pub boot_id: Option<String>,
    /// Records counted as pending before the drain sent anything.
    pub inventoried: u64,
    /// (window, topic) cells left unpublished.
    pub unpublished: u64,
    pub detail: Option<String>,
}

impl AuditSummary {
    pub fn text(&self) -> String {
        let host = self.collector_host.as_deref().unwrap_or("?");
        match self.status {
            AuditStatus::Published => format!(
                "audit: published to {} as host {host} (boot {})",
                self.topic,
                self.boot_id.as_deref().unwrap_or("?")
            ),
            AuditStatus::Failed => format!(
                "audit: FAILED to publish {} audit record(s) to {} for host {host}: `eventpipe audit` \
                 will show its windows as pending ({}); the drained records are delivered",
                self.unpublished,
                self.topic,
                self.detail.as_deref().unwrap_or("see the log")
            ),
            AuditStatus::Skipped => format!(
                "audit: not published: {}",
                self.detail.as_deref().unwrap_or("?")
            ),
            AuditStatus::Stopped => format!(
                "audit: stopped with the drain (host {host}, {} audit record(s) unpublished); \
                 the next run publishes what is left",
                self.unpublished
            ),
        }
    }
}

/// The audit of one drain: books counted from the spool, and their publisher.
pub struct DrainAudit {
    books: Arc<Books>,
    replay: Option<Arc<ReplayAudit>>,
    publisher: Option<Publisher>,
    sink: Option<Arc<KafkaSink>>,
    summary: AuditSummary,
}

impl DrainAudit {
    /// Counts what `spool` holds as pending and, if its records name exactly one host, starts
    /// publishing under it (its own producer, as in the gateway). Call before the replayer
    /// starts. Reads every pending record once. Errors: the audit producer cannot be created.
    pub fn start(config: &Config, spool: &Spool) -> anyhow::Result<DrainAudit> {
        let books = Arc::new(crate::server::audit_books(config));
        let replay = Arc::new(ReplayAudit::new(books.clone()));
        let mut hosts: BTreeMap<String, u64> = BTreeMap::new();
        let mut more_hosts = false;
        let mut inventoried = 0u64;
        spool.inventory().for_each_record(|r| {
            replay.inherited(r);
            inventoried += 1;
            if let Some(h) = crate::audit::collector_host(&r.payload) {
                let known = hosts.len();
                match hosts.entry(h) {
                    std::collections::btree_map::Entry::Occupied(mut e) => *e.get_mut() += 1,
                    std::collections::btree_map::Entry::Vacant(e) if known < MAX_HOSTS => {
                        e.insert(1);
                    }
                    std::collections::btree_map::Entry::Vacant(_) => more_hosts = true,
                }
            }
        });
        replay.inventory_done();
        let mut summary = AuditSummary {
            status: AuditStatus::Skipped,
            topic: config.audit.topic.clone(),
            collector_host: None,
            boot_id: None,
            inventoried,
            unpublished: 0,
            detail: None,
        };
        let host = match hosts.len() {
            1 => hosts.into_keys().next(),
            0 => {
                summary.detail = Some("no spooled record names its collector host".into());
                None
            }
            _ => {
                let named: Vec<String> = hosts.iter().map(|(h, n)| format!("{h} ({n})")).collect();
                summary.detail = Some(format!(
                    "the spooled records name several hosts: {}{}; the audit is kept per host, \
                     and counting them under one would report the others' windows as missing",
                    named.join(", "),
                    if more_hosts { ", ..." } else { "" }
                ));
                None
            }
        };
        let Some(host) = host else {
            return Ok(DrainAudit {
                books,
                replay: None,
                publisher: None,
                sink: None,
                summary,
            });
        };
        let producer = producer_config(&config.kafka.brokers, &config.kafka.librdkafka);
        let sink = Arc::new(
            KafkaSink::new(&producer, Duration::from_secs(5))
                .context("creating the audit producer")?,
        );
        let id = Identity {
            collector_host: host.clone(),
            collector_version: env!("CARGO_PKG_VERSION").into(),
            boot_id: uuid::Uuid::new_v4().to_string(),
        };
        summary.collector_host = Some(host);
        summary.boot_id = Some(id.boot_id.clone());
        let publisher = Publisher::spawn(
            books.clone(),
            sink.clone(),
            id,
            &config.audit.topic,
            config.audit_publish_delay_ms(),
            Duration::from_millis(config.kafka.ack_timeout_ms),
            Duration::from_millis(config.audit.retry_backoff_ms),
        );
        Ok(DrainAudit {
            books,
            replay: Some(replay),
            publisher: Some(publisher),
            sink: Some(sink),
            summary,
        })
    }

    /// What the replay target counts in (None when not audited).
    pub fn replay_audit(&self) -> Option<Arc<ReplayAudit>> {
        self.replay.clone()
    }

    /// One line for the progress output.
    pub fn started_line(&self) -> String {
        match &self.summary.collector_host {
            Some(h) => format!(
                "audit: {} records counted as pending for host {h}, publishing to {} as boot {}",
                self.summary.inventoried,
                self.summary.topic,
                self.summary.boot_id.as_deref().unwrap_or("?")
            ),
            None => self.summary.text(),
        }
    }

    /// Publishes everything not yet published within `budget` (None: stops publishing at once).
    /// `drained`: the spool is empty, the books are final.
    pub async fn finish(mut self, drained: bool, budget: Option<Duration>) -> AuditSummary {
        let Some(publisher) = self.publisher.take() else {
            return self.summary;
        };
        match budget {
            Some(b) => publisher.shutdown(b).await,
            None => drop(publisher),
        }
        let left = self.books.due(crate::now_ms(), 0, true).len() as u64;
        self.summary.unpublished = left;
        if !drained {
            self.summary.status = AuditStatus::Stopped;
            // Its destructor may wait on a broker that is not answering: the process ends soon.
            std::mem::forget(self.sink.take());
        } else if left == 0 {
            self.summary.status = AuditStatus::Published;
        } else {
            self.summary.status = AuditStatus::Failed;
            self.summary.detail = Some(format!(
                "not acknowledged within {}s (is the audit topic there? `eventpipe topics create`)",
                budget.unwrap_or_default().as_secs()
            ));
            std::mem::forget(self.sink.take());
        }
        self.summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::spool::SpoolOptions;
    use crate::sink::Record;

    fn spool(dir: &std::path::Path) -> Spool {
        Spool::open(SpoolOptions {
            dir: dir.to_owned(),
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(3600),
            segment_bytes: 1 << 20,
            seal_after: Duration::from_millis(1),
            io_error_backoff: Duration::from_secs(1),
        })
        .unwrap()
    }

    /// A spool holding `records`, closed and opened again (what a drain finds).
    async fn spool_of(dir: &std::path::Path, records: &[Record]) -> Spool {
        let s = spool(dir);
        s.append(records).await.unwrap();
        s.close().await;
        spool(dir)
    }

    fn event_of(host: &str, received_at_ms: i64) -> Record {
        let mut r = crate::audit::tests::event(received_at_ms);
        let mut ev: crate::thrift::Event = crate::thrift::from_compact_bytes(&r.payload).unwrap();
        ev.enrichment.collector_host = host.into();
        r.payload = crate::thrift::to_compact_bytes(&ev);
        r
    }

    fn config() -> Config {
        // Nothing listens there: publishing fails.
        let brokers = toml::Value::String("127.0.0.1:9".into());
        crate::config::load(None, vec![], vec![("kafka.brokers", brokers)]).unwrap()
    }

    #[tokio::test]
    async fn a_spool_naming_several_hosts_is_not_audited() {
        let dir = tempfile::tempdir().unwrap();
        let s = spool_of(
            dir.path(),
            &[
                event_of("a", 1_000),
                event_of("b", 1_000),
                event_of("a", 2_000),
            ],
        )
        .await;
        let audit = DrainAudit::start(&config(), &s).unwrap();
        assert!(audit.replay_audit().is_none());
        let summary = audit.finish(true, Some(Duration::from_secs(1))).await;
        assert_eq!(summary.status, AuditStatus::Skipped);
        assert_eq!(summary.inventoried, 3);
        let detail = summary.detail.unwrap();
        assert!(detail.contains("a (2), b (1)"), "{detail}");
        s.close().await;
    }

    #[tokio::test]
    async fn one_host_is_audited_under_its_name_and_a_failed_publish_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut odd = event_of("a", 1_000);
        odd.payload = b"not thrift".to_vec();
        let s = spool_of(
            dir.path(),
            &[event_of("a", 1_000), odd, event_of("a", 5_000)],
        )
        .await;
        let audit = DrainAudit::start(&config(), &s).unwrap();
        assert!(audit.replay_audit().is_some());
        assert!(
            audit
                .started_line()
                .contains("3 records counted as pending for host a"),
            "{}",
            audit.started_line()
        );
        let summary = audit.finish(true, Some(Duration::from_millis(300))).await;
        assert_eq!(summary.collector_host.as_deref(), Some("a"));
        assert_eq!(summary.status, AuditStatus::Failed, "{summary:?}");
        assert!(summary.unpublished >= 1, "{summary:?}");
        assert!(summary.text().contains("FAILED"), "{}", summary.text());
        s.close().await;
    }
}
