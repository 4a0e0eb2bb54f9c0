//! Realistic request bodies for the shipped schemas.
//!
//! Bodies are built once, as a small pool of templates (a bundle context, `events_per_request`
//! events of mixed schemas, a configured share of invalid events). Each event id sits at a known
//! byte offset, so a request is a copy of a template with fresh v4 UUIDs written in place: every
//! event sent is unique, yet the generator costs a `memcpy` and a few UUIDs per request, not a JSON
//! serialisation, and leaves the CPU to the gateway.
//!
//! Event sizes are drawn uniformly from 50%..150% of `event_bytes` (so the mean is `event_bytes`)
//! and reached by filling each schema's natural free-text field (a page title, a log message, click
//! attributes, more order items) with word-like text, which compresses like real text.

use serde_json::{json, Map, Value};

/// A valid UUID that marks where a fresh event id is written.
const ID_PLACEHOLDER: &str = "00000000-0000-4000-8000-000000000000";

/// Which generator produces an event's `data` for a schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    PageView,
    Click,
    Purchase,
    AppOpen,
    ServerLog1,
    ServerLog2,
}

/// One schema the generator sends, with its share of the traffic.
#[derive(Debug, Clone)]
pub struct SchemaChoice {
    /// `name/major` as sent.
    pub id: String,
    pub kind: Kind,
    pub weight: u32,
}

/// The traffic mix of the shipped schemas (a web-heavy beacon stream).
pub fn shipped_mix() -> Vec<SchemaChoice> {
    let c = |id: &str, kind, weight| SchemaChoice {
        id: id.into(),
        kind,
        weight,
    };
    vec![
        c("page_view/1", Kind::PageView, 35),
        c("click/1", Kind::Click, 30),
        c("app_open/1", Kind::AppOpen, 10),
        c("purchase/1", Kind::Purchase, 5),
        c("server_log/1", Kind::ServerLog1, 12),
        c("server_log/2", Kind::ServerLog2, 8),
    ]
}

/// `count` schemas for the many-schemas points: copy `i` has the shape of the shipped schema
/// `i % 6` (page_view, click, app_open, purchase, server_log/1, server_log/2) and that schema's
/// weight, so the events keep the shipped mix's sizes and kinds while the topics multiply; the
/// volume per schema is uneven, as in a real catalogue. One schema is a page_view copy.
pub fn shipped_copies(count: usize) -> Vec<SchemaChoice> {
    let shipped = shipped_mix();
    (0..count)
        .map(|i| {
            let source = &shipped[i % shipped.len()];
            let major = source.id.rsplit('/').next().unwrap_or("1");
            SchemaChoice {
                id: format!("{}/{major}", copy_name(i)),
                kind: source.kind,
                weight: source.weight,
            }
        })
        .collect()
}

/// Name of the i-th schema copy.
pub fn copy_name(i: usize) -> String {
    format!("s{i:03}")
}

/// Writes the schema files of `shipped_copies(count)` under `dir`, each a copy of its shipped
/// schema (from `shipped`, the shipped schemas directory) under its new name.
pub fn write_copies(
    shipped: &std::path::Path,
    dir: &std::path::Path,
    count: usize,
) -> std::io::Result<()> {
    let sources = shipped_mix();
    for (i, copy) in shipped_copies(count).iter().enumerate() {
        let source = &sources[i % sources.len()];
        let (name, major) = source.id.split_once('/').unwrap_or((&source.id, "1"));
        let text = std::fs::read_to_string(shipped.join(name).join(format!("{major}.json")))?;
        let new_name = copy.id.split('/').next().unwrap_or(&copy.id);
        let text = text.replace(
            &format!("\"title\": \"{name}\""),
            &format!("\"title\": \"{new_name}\""),
        );
        std::fs::create_dir_all(dir.join(new_name))?;
        std::fs::write(dir.join(new_name).join(format!("{major}.json")), text)?;
    }
    Ok(())
}

/// What the pool is made of.
#[derive(Debug, Clone)]
pub struct GenConfig {
    pub events_per_request: usize,
    pub event_bytes: usize,
    /// Share of invalid events, 0.0..=1.0.
    pub invalid_share: f64,
    pub schemas: Vec<SchemaChoice>,
    /// Number of distinct templates.
    pub templates: usize,
    pub seed: u64,
}

/// One pre-built body.
pub struct Template {
    pub body: Vec<u8>,
    id_offsets: Vec<usize>,
    pub events: usize,
    /// Events built to be rejected.
    pub invalid: usize,
}

impl Template {
    /// A copy of the body with fresh event ids.
    pub fn fresh_body(&self) -> Vec<u8> {
        let mut body = self.body.clone();
        for &off in &self.id_offsets {
            uuid::Uuid::new_v4()
                .hyphenated()
                .encode_lower(&mut body[off..off + ID_PLACEHOLDER.len()]);
        }
        body
    }
}

/// The template pool.
pub struct Generator {
    pub templates: Vec<Template>,
}

impl Generator {
    pub fn new(cfg: &GenConfig) -> Generator {
        assert!(!cfg.schemas.is_empty(), "at least one schema");
        let mut rng = Rng::new(cfg.seed);
        let templates = (0..cfg.templates.max(1))
            .map(|t| build_template(cfg, t, &mut rng))
            .collect();
        Generator { templates }
    }

    /// The template for request number `n`.
    pub fn template(&self, n: u64) -> &Template {
        &self.templates[(n % self.templates.len() as u64) as usize]
    }

    /// Mean body size in bytes (uncompressed).
    pub fn mean_body_bytes(&self) -> f64 {
        let total: usize = self.templates.iter().map(|t| t.body.len()).sum();
        total as f64 / self.templates.len() as f64
    }

    /// Mean events per body.
    pub fn mean_events(&self) -> f64 {
        let total: usize = self.templates.iter().map(|t| t.events).sum();
        total as f64 / self.templates.len() as f64
    }
}

/// Gzip at the fastest level: the generator should not starve the gateway of CPU.
pub fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 3),
        flate2::Compression::fast(),
    );
    enc.write_all(body).expect("writing to a Vec");
    enc.finish().expect("writing to a Vec")
}

fn build_template(cfg: &GenConfig, t: usize, rng: &mut Rng) -> Template {
    let visitor = rng.below(1_000_000);
    let mut body = String::with_capacity(cfg.events_per_request * (cfg.event_bytes + 64) + 256);
    let head = json!({
        "sent_at": timestamp(rng),
        "context": {
            "visitor_id": format!("v-{visitor}"),
            "session_id": format!("s-{visitor}-{}", rng.below(100)),
            "app": {"name": pick(rng, &["web", "ios", "android"]), "version": "4.2.0"},
            "locale": pick(rng, &["en-US", "de-DE", "fr-FR", "ja-JP"]),
        },
    });
    let head = head.to_string();
    body.push_str(&head[..head.len() - 1]);
    body.push_str(",\"events\":[");
    let mut id_offsets = Vec::with_capacity(cfg.events_per_request);
    let mut invalid = 0;
    let total_weight: u64 = cfg.schemas.iter().map(|s| u64::from(s.weight)).sum();
    for i in 0..cfg.events_per_request {
        if i > 0 {
            body.push(',');
        }
        let schema = weighted(&cfg.schemas, total_weight, rng);
        let bad = rng.unit() < cfg.invalid_share;
        let target = cfg.event_bytes / 2 + rng.below(cfg.event_bytes as u64 + 1) as usize;
        let (event, has_id) = build_event(schema, bad, target, t * 1000 + i, rng);
        invalid += usize::from(bad);
        if has_id {
            let at = event
                .find(ID_PLACEHOLDER)
                .expect("the event holds its placeholder");
            id_offsets.push(body.len() + at);
        }
        body.push_str(&event);
    }
    body.push_str("]}");
    Template {
        body: body.into_bytes(),
        id_offsets,
        events: cfg.events_per_request,
        invalid,
    }
}

/// One event's JSON text; `bool` says whether it holds an id placeholder.
fn build_event(
    schema: &SchemaChoice,
    bad: bool,
    target: usize,
    n: usize,
    rng: &mut Rng,
) -> (String, bool) {
    let mut schema_id = schema.id.clone();
    let mut event_id = ID_PLACEHOLDER.to_string();
    let mut kind = Some(schema.kind);
    if bad {
        match rng.below(5) {
            0 => schema_id = "no_such_schema/1".into(),
            1 => event_id = format!("not-a-uuid-{n}"),
            _ => kind = None, // data that misses its schema's required fields
        }
    }
    let mut ev = Map::new();
    ev.insert("schema".into(), Value::String(schema_id));
    ev.insert("event_id".into(), Value::String(event_id.clone()));
    ev.insert("ts".into(), Value::String(timestamp(rng)));
    if rng.below(3) == 0 {
        ev.insert(
            "context".into(),
            json!({"page_id": format!("p-{}", rng.below(10_000))}),
        );
    }
    let base_len = Value::Object(ev.clone()).to_string().len() + "\"data\":".len() + 1;
    let budget = target.saturating_sub(base_len);
    let data = match kind {
        Some(k) => data_for(k, budget, rng),
        None => json!({"unexpected": words(rng, budget.saturating_sub(20))}),
    };
    ev.insert("data".into(), data);
    (Value::Object(ev).to_string(), event_id == ID_PLACEHOLDER)
}

/// A valid `data` object of about `budget` bytes.
fn data_for(kind: Kind, budget: usize, rng: &mut Rng) -> Value {
    let mut data = match kind {
        Kind::PageView => json!({
            "url": format!("https://shop.example.com/{}/{}", pick(rng, &["c", "p", "search"]), rng.below(100_000)),
            "referrer": "https://search.example/",
            "viewport": {"width": 360 + rng.below(2000), "height": 640 + rng.below(800)},
            "load_ms": rng.below(5000) as f64 / 4.0,
        }),
        Kind::Click => json!({
            "element": format!("{}#{}", pick(rng, &["button", "a.nav", "div.card"]), rng.below(500)),
            "url": "https://shop.example.com/",
            "x": rng.below(1920), "y": rng.below(1080),
            "attributes": {"data-track": format!("t-{}", rng.below(100))},
        }),
        Kind::AppOpen => json!({
            "platform": pick(rng, &["ios", "android"]),
            "os_version": format!("{}.{}", 12 + rng.below(6), rng.below(5)),
            "cold_start": rng.below(2) == 0,
            "startup_ms": 200 + rng.below(3000),
        }),
        Kind::Purchase => json!({
            "order_id": format!("o-{}", rng.below(1 << 40)),
            "currency": pick(rng, &["EUR", "USD", "JPY"]),
            "total_minor": 0,
            "items": [],
        }),
        Kind::ServerLog1 => json!({
            "service": pick(rng, &["checkout", "search", "auth", "cart"]),
            "level": pick(rng, &["debug", "info", "info", "warn", "error"]),
            "message": "",
            "fields": {"request_id": format!("r-{}", rng.below(1 << 32)), "elapsed_ms": rng.below(2000)},
        }),
        Kind::ServerLog2 => json!({
            "service": pick(rng, &["checkout", "search", "auth", "cart"]),
            "severity": rng.below(8),
            "message": "",
            "fields": {"request_id": format!("r-{}", rng.below(1 << 32)), "retry": false},
        }),
    };
    let fill = budget.saturating_sub(data.to_string().len() + 16);
    let obj = data.as_object_mut().expect("built as an object");
    match kind {
        Kind::PageView => {
            let title = fill.min(1000);
            obj.insert("title".into(), Value::String(words(rng, title)));
            if fill > title {
                let q = words(rng, (fill - title).min(4000)).replace(' ', "+");
                obj.insert(
                    "referrer".into(),
                    Value::String(format!("https://search.example/?q={q}")),
                );
            }
        }
        Kind::Click => {
            let attrs = obj["attributes"].as_object_mut().expect("object");
            attrs.insert("data-text".into(), Value::String(words(rng, fill)));
        }
        Kind::AppOpen => {
            obj.insert("device".into(), Value::String(words(rng, fill)));
        }
        Kind::Purchase => {
            let (mut total, mut items) = (0u64, Vec::new());
            let mut used = 0;
            loop {
                let price = 100 + rng.below(20_000);
                let qty = 1 + rng.below(3);
                let item = json!({"sku": format!("sku-{}", rng.below(1_000_000)), "quantity": qty, "price_minor": price});
                used += item.to_string().len() + 1;
                total += price * qty;
                items.push(item);
                if used >= fill || items.len() >= 200 {
                    break;
                }
            }
            obj.insert("items".into(), Value::Array(items));
            obj.insert("total_minor".into(), json!(total));
        }
        Kind::ServerLog1 | Kind::ServerLog2 => {
            obj.insert("message".into(), Value::String(words(rng, fill)));
        }
    }
    data
}

const VOCAB: &[&str] = &[
    "the",
    "order",
    "shoes",
    "timeout",
    "request",
    "user",
    "cart",
    "search",
    "blue",
    "summer",
    "delivery",
    "index",
    "retry",
    "page",
    "session",
    "price",
    "returned",
    "connection",
    "fast",
    "product",
    "review",
    "size",
    "color",
    "checkout",
    "payment",
    "accepted",
    "upstream",
    "cache",
];

/// About `len` bytes of word-like lowercase text.
fn words(rng: &mut Rng, len: usize) -> String {
    let mut s = String::with_capacity(len + 12);
    while s.len() < len {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(VOCAB[rng.below(VOCAB.len() as u64) as usize]);
    }
    s.truncate(len);
    s
}

fn timestamp(rng: &mut Rng) -> String {
    format!(
        "2026-11-21T{:02}:{:02}:{:02}.{:03}Z",
        rng.below(24),
        rng.below(60),
        rng.below(60),
        rng.below(1000)
    )
}

fn pick<'a>(rng: &mut Rng, options: &[&'a str]) -> &'a str {
    options[rng.below(options.len() as u64) as usize]
}

fn weighted<'a>(schemas: &'a [SchemaChoice], total: u64, rng: &mut Rng) -> &'a SchemaChoice {
    let mut r = rng.below(total.max(1));
    for s in schemas {
        if r < u64::from(s.weight) {
            return s;
        }
        r -= u64::from(s.weight);
    }
    &schemas[schemas.len() - 1]
}

/// splitmix64: deterministic, seedable, good enough to shape test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `0.0..1.0`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(invalid_share: f64) -> GenConfig {
        GenConfig {
            events_per_request: 50,
            event_bytes: 500,
            invalid_share,
            schemas: shipped_mix(),
            templates: 8,
            seed: 7,
        }
    }

    #[test]
    fn valid_events_pass_the_shipped_schemas_and_ids_are_fresh() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
        let registry = eventpipe::schema::Registry::load(&root).unwrap();
        let gen = Generator::new(&cfg(0.0));
        let mut seen = std::collections::HashSet::new();
        for t in &gen.templates {
            let body = t.fresh_body();
            let v: Value = serde_json::from_slice(&body).unwrap();
            for ev in v["events"].as_array().unwrap() {
                let schema = registry.get(ev["schema"].as_str().unwrap()).unwrap();
                assert!(schema.validate(&ev["data"]).is_ok(), "{ev}");
                let id = ev["event_id"].as_str().unwrap();
                assert!(uuid::Uuid::parse_str(id).is_ok());
                assert!(seen.insert(id.to_owned()), "duplicate id {id}");
            }
        }
        let mean = gen.mean_body_bytes() / gen.mean_events();
        assert!((400.0..650.0).contains(&mean), "mean event size {mean}");
    }

    #[test]
    fn many_schema_copies_load_validate_and_keep_the_shipped_sizes() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
        let dir = tempfile::tempdir().unwrap();
        write_copies(&root, dir.path(), 200).unwrap();
        let registry = eventpipe::schema::Registry::load(dir.path()).unwrap();
        let copies = shipped_copies(200);
        let gen = Generator::new(&GenConfig {
            schemas: copies.clone(),
            templates: 64,
            ..cfg(0.0)
        });
        let mut used = std::collections::HashSet::new();
        for t in &gen.templates {
            let v: Value = serde_json::from_slice(&t.fresh_body()).unwrap();
            for ev in v["events"].as_array().unwrap() {
                let id = ev["schema"].as_str().unwrap();
                let schema = registry.get(id).unwrap();
                assert!(schema.validate(&ev["data"]).is_ok(), "{ev}");
                used.insert(id.to_owned());
            }
        }
        // One topic each: 200 distinct names, and the traffic reaches most of them.
        let names: std::collections::HashSet<_> = copies
            .iter()
            .map(|c| c.id.split('/').next().unwrap())
            .collect();
        assert_eq!(names.len(), 200);
        assert!(used.len() > 150, "only {} schemas used", used.len());
        let mean = gen.mean_body_bytes() / gen.mean_events();
        assert!((400.0..650.0).contains(&mean), "mean event size {mean}");
    }

    #[test]
    fn invalid_share_is_roughly_honoured() {
        let gen = Generator::new(&GenConfig {
            templates: 64,
            ..cfg(0.1)
        });
        let invalid: usize = gen.templates.iter().map(|t| t.invalid).sum();
        let share = invalid as f64 / (64.0 * 50.0);
        assert!((0.07..0.13).contains(&share), "{share}");
    }
}
