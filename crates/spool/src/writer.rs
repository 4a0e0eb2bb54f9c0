//! The writer thread: owns the active segment and commits appends in groups (one fdatasync for
//! every append waiting when the previous one finished). See the module doc of `spool`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::segment::{fsync_dir, segment_path};
use super::{now_ms, Sealed, Shared, SpoolError};

/// Appends per group commit, at most (bounds one fsync's latency).
const MAX_GROUP: usize = 1024;

enum Cmd {
    Append {
        bytes: Vec<u8>,
        records: u64,
        now_ms: i64,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
    Seal {
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
    /// Ends the thread (releasing the directory lock); `seal: false` imitates a crash.
    Stop {
        seal: bool,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
}

/// (bytes, records, append time, reply) of one admitted append.
type Admitted = (Vec<u8>, u64, i64, oneshot::Sender<Result<(), SpoolError>>);

#[derive(Clone)]
pub(crate) struct Handle {
    tx: mpsc::Sender<Cmd>,
}

impl Handle {
    pub async fn append(
        &self,
        bytes: Vec<u8>,
        records: u64,
        now_ms: i64,
    ) -> Result<(), SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Append {
                bytes,
                records,
                now_ms,
                reply,
            })
            .map_err(|_| SpoolError::Closed)?;
        rx.await.map_err(|_| SpoolError::Closed)?
    }

    pub async fn seal(&self) -> Result<(), SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Seal { reply })
            .map_err(|_| SpoolError::Closed)?;
        rx.await.map_err(|_| SpoolError::Closed)?
    }

    /// Stops the writer thread once it has answered everything queued before this.
    pub async fn stop(&self, seal: bool) -> Result<(), SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Stop { seal, reply })
            .map_err(|_| SpoolError::Closed)?;
        rx.await.map_err(|_| SpoolError::Closed)?
    }
}

struct Active {
    seq: u64,
    file: File,
    len: u64,
    first_ms: i64,
    /// When the first record went in (the seal clock starts then).
    first_append: Option<Instant>,
}

struct Writer {
    shared: Arc<Shared>,
    active: Option<Active>,
    next_seq: u64,
    /// Holds the directory's `flock` while this writer lives.
    lock: Option<File>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        tracing::debug!(dir = %self.shared.opts.dir.display(), "spool writer stopped");
    }
}

pub(crate) fn spawn(shared: Arc<Shared>, lock: File, next_seq: u64) -> std::io::Result<Handle> {
    let (tx, rx) = mpsc::channel::<Cmd>();
    let mut writer = Writer {
        shared,
        active: None,
        next_seq,
        lock: Some(lock),
    };
    std::thread::Builder::new()
        .name("spool-writer".into())
        .spawn(move || writer.run(rx))?;
    Ok(Handle { tx })
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Cmd>) {
        let tick = self.shared.opts.seal_after.min(Duration::from_millis(100));
        loop {
            let first = match rx.recv_timeout(tick) {
                Ok(cmd) => cmd,
                Err(RecvTimeoutError::Timeout) => {
                    self.seal_if_due();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.seal();
                    return;
                }
            };
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(cmd) => group.push(cmd),
                    Err(_) => break,
                }
            }
            let stop = group.iter().position(|c| matches!(c, Cmd::Stop { .. }));
            if let Some(at) = stop {
                // Commands after the stop are dropped: their callers see `Closed`.
                group.truncate(at + 1);
                let Some(Cmd::Stop { seal, reply }) = group.pop() else {
                    unreachable!("position found a Stop");
                };
                self.commit(group);
                let result = if seal { self.seal() } else { Ok(()) };
                // Drop the file handles and the directory lock before answering.
                self.active = None;
                self.lock = None;
                let _ = reply.send(result);
                return;
            }
            self.commit(group);
            self.seal_if_due();
        }
    }

    /// Seals the active segment once it has held data for `seal_after` — idle or not — so the
    /// replayer never waits behind a segment that steady traffic keeps open.
    fn seal_if_due(&mut self) {
        let due = self.active.as_ref().is_some_and(|a| {
            a.len > 0
                && a.first_append
                    .is_some_and(|t| t.elapsed() >= self.shared.opts.seal_after)
        });
        if due {
            let _ = self.seal();
        }
    }

    /// Writes every admitted append of the group, fsyncs once, answers all.
    fn commit(&mut self, group: Vec<Cmd>) {
        let mut appends = Vec::new();
        let mut seals = Vec::new();
        let mut admitted_bytes = self.shared.bytes.load(Ordering::Relaxed);
        for cmd in group {
            match cmd {
                // `run` takes stops out of the group before committing it.
                Cmd::Seal { reply } | Cmd::Stop { reply, .. } => seals.push(reply),
                Cmd::Append {
                    bytes,
                    records,
                    now_ms,
                    reply,
                } => {
                    // The byte limit is checked again here, in commit order, so concurrent
                    // requests cannot overshoot it together.
                    if admitted_bytes + bytes.len() as u64 > self.shared.opts.max_bytes {
                        self.shared.last_full_ms.store(now_ms, Ordering::Relaxed);
                        let _ = reply.send(Err(SpoolError::Full));
                        continue;
                    }
                    admitted_bytes += bytes.len() as u64;
                    appends.push((bytes, records, now_ms, reply));
                }
            }
        }
        if !appends.is_empty() {
            let result = self.write_group(&appends);
            if result.is_ok() {
                metrics::histogram!(self.shared.opts.metrics.group_size)
                    .record(appends.len() as f64);
            }
            for (_, _, _, reply) in appends {
                let _ = reply.send(result.clone());
            }
        }
        let full = self
            .active
            .as_ref()
            .is_some_and(|a| a.len >= self.shared.opts.segment_bytes);
        if full || !seals.is_empty() {
            let result = self.seal();
            for reply in seals {
                let _ = reply.send(result.clone());
            }
        }
    }

    fn write_group(&mut self, appends: &[Admitted]) -> Result<(), SpoolError> {
        let format = self.shared.format;
        let fsync_latency = self.shared.opts.metrics.fsync_latency;
        let active = match self.active_segment() {
            Ok(a) => a,
            Err(e) => return Err(self.disk_error(e)),
        };
        let before = active.len;
        let started = Instant::now();
        let mut written = Ok(());
        let mut end = before;
        for (bytes, ..) in appends {
            if let Err(e) = active.file.write_all(bytes) {
                written = Err(e);
                break;
            }
            end += bytes.len() as u64;
        }
        // The commit marker ends the group: bytes before it were fsynced with it, so damage
        // before a valid marker is corruption, never a torn tail (module doc). Same fsync.
        let mut marker = Vec::with_capacity(format.commit_len());
        format.push_commit(end, &mut marker);
        let written = written.and_then(|_| active.file.write_all(&marker));
        let synced = written.and_then(|_| active.file.sync_data());
        metrics::histogram!(fsync_latency).record(started.elapsed().as_secs_f64());
        if let Err(e) = synced {
            // Cut the unacknowledged batch back off; if the disk won't even do that, seal the
            // segment as it is and let the next start-up scan keep its valid prefix.
            let cut = active
                .file
                .set_len(before)
                .and_then(|_| active.file.sync_data());
            if cut.is_err() {
                self.seal_after_error();
            } else if let Some(a) = self.active.as_mut() {
                a.len = before;
            }
            return Err(self.disk_error(e));
        }
        let added: u64 = end + marker.len() as u64 - before;
        let records: u64 = appends.iter().map(|(_, r, ..)| *r).sum();
        let first_ms = appends
            .iter()
            .map(|(_, _, ms, _)| *ms)
            .min()
            .unwrap_or_else(now_ms);
        let active = self
            .active
            .as_mut()
            .expect("active segment exists after a write");
        active.len += added;
        active.first_append.get_or_insert_with(Instant::now);
        if active.first_ms == 0 {
            active.first_ms = first_ms;
            self.shared
                .active_first_ms
                .store(first_ms, Ordering::Relaxed);
        }
        self.shared.bytes.fetch_add(added, Ordering::Relaxed);
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
        self.shared.records.fetch_add(records, Ordering::Relaxed);
        self.shared.last_io_error_ms.store(0, Ordering::Relaxed);
        Ok(())
    }

    fn disk_error(&self, e: std::io::Error) -> SpoolError {
        static LAST: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
        if crate::names::log_allowed(&LAST) {
            tracing::error!(error = %e, dir = %self.shared.opts.dir.display(), "spool write failed (logged at most once a second)");
        }
        metrics::counter!(self.shared.opts.metrics.io_errors).increment(1);
        self.shared
            .last_io_error_ms
            .store(now_ms().max(1), Ordering::Relaxed);
        SpoolError::Io(e.kind().to_string())
    }

    /// The active segment, created (and its directory entry made durable) on first use.
    fn active_segment(&mut self) -> std::io::Result<&mut Active> {
        if self.active.is_none() {
            let dir = self.shared.opts.dir.clone();
            let seq = self.next_seq;
            let path = segment_path(&dir, seq);
            let mut file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)?;
            // The header (magic + nonce) is made durable by the first group's fdatasync.
            let header = self.shared.format.header();
            if let Err(e) = file.write_all(&header).and_then(|_| fsync_dir(&dir)) {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
            self.shared
                .bytes
                .fetch_add(header.len() as u64, Ordering::Relaxed);
            self.next_seq += 1;
            self.active = Some(Active {
                seq,
                file,
                len: header.len() as u64,
                first_ms: 0,
                first_append: None,
            });
        }
        Ok(self.active.as_mut().expect("just created"))
    }

    /// Hands the active segment to the replayer. Its bytes are already fsynced.
    fn seal(&mut self) -> Result<(), SpoolError> {
        let Some(active) = self.active.take() else {
            return Ok(());
        };
        let path = segment_path(&self.shared.opts.dir, active.seq);
        if active.first_append.is_none() {
            // Nothing was ever committed to it: only its header (or an unanswered write).
            let _ = std::fs::remove_file(&path);
            let _ = self
                .shared
                .bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    Some(b.saturating_sub(active.len))
                });
            return Ok(());
        }
        self.shared
            .sealed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(Sealed {
                seq: active.seq,
                path,
                len: active.len,
                first_ms: active.first_ms,
            });
        self.shared.active_first_ms.store(0, Ordering::Relaxed);
        self.shared.sealed_notify.notify_one();
        Ok(())
    }

    fn seal_after_error(&mut self) {
        if let Some(a) = self.active.as_mut() {
            // We no longer know the file's length; take it from the file system (the replayer
            // reads only the valid prefix anyway) and account for the extra bytes, so the
            // replayer's subtraction at deletion balances.
            let on_disk = a.file.metadata().map(|m| m.len()).unwrap_or(a.len);
            if on_disk > a.len {
                self.shared
                    .bytes
                    .fetch_add(on_disk - a.len, Ordering::Relaxed);
                a.len = on_disk;
            }
        }
        let _ = self.seal();
    }
}
