// src/store.js
var DB_VERSION = 1;
var BEACONS = "beacons";
var EVENTS = "events";
var META = "meta";
var META_KEY = "m";
function emptyMeta() {
  return { count: 0, bytes: 0, dropped: 0 };
}
var MemoryStore = class {
  constructor(maxEvents, maxBytes) {
    this.kind = "memory";
    this.maxEvents = maxEvents;
    this.maxBytes = maxBytes;
    this.recs = /* @__PURE__ */ new Map();
    this.meta = emptyMeta();
  }
  async add(rec) {
    if (this.recs.has(rec.id)) {
      this.recs.set(rec.id, rec);
      return 0;
    }
    return addTo(this.meta, rec, this.maxEvents, this.maxBytes, {
      oldest: () => {
        let first = null;
        for (const r of this.recs.values()) if (!first || r.seq < first.seq) first = r;
        return first;
      },
      remove: (r) => this.recs.delete(r.id),
      put: (r) => this.recs.set(r.id, r)
    });
  }
  async addMany(recs) {
    let dropped = 0;
    for (const r of recs) dropped += await this.add(r);
    return dropped;
  }
  async list(beaconBefore, limit) {
    return [...this.recs.values()].filter((r) => !r.beaconAt || r.beaconAt < beaconBefore).sort((a, b) => a.seq - b.seq).slice(0, limit);
  }
  async remove(ids) {
    for (const id of ids) {
      const r = this.recs.get(id);
      if (r) {
        this.recs.delete(id);
        this.meta.count -= 1;
        this.meta.bytes -= r.bytes;
      }
    }
  }
  async mark(ids, at) {
    for (const id of ids) {
      const r = this.recs.get(id);
      if (r) r.beaconAt = at;
    }
  }
  async dropped() {
    return this.meta.dropped;
  }
  async takeDropped(n) {
    this.meta.dropped = Math.max(0, this.meta.dropped - n);
  }
  async count() {
    return this.meta.count;
  }
};
function addTo(meta, rec, maxEvents, maxBytes, ops) {
  if (rec.bytes > maxBytes) {
    meta.dropped += 1;
    return 1;
  }
  let dropped = 0;
  while (meta.count > 0 && (meta.count + 1 > maxEvents || meta.bytes + rec.bytes > maxBytes)) {
    const old = ops.oldest();
    if (!old) break;
    ops.remove(old);
    meta.count -= 1;
    meta.bytes -= old.bytes;
    dropped += 1;
  }
  meta.dropped += dropped;
  ops.put(rec);
  meta.count += 1;
  meta.bytes += rec.bytes;
  return dropped;
}
function commitNow(tx) {
  if (typeof tx.commit === "function") tx.commit();
}
function promisify(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}
function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error || new Error("transaction aborted"));
  });
}
var IdbStore = class _IdbStore {
  static async open(name, maxEvents, maxBytes) {
    const req = indexedDB.open(name, DB_VERSION);
    req.onupgradeneeded = () => {
      const db2 = req.result;
      const events = db2.createObjectStore(EVENTS, { keyPath: "id" });
      events.createIndex("seq", "seq");
      db2.createObjectStore(META);
      db2.createObjectStore(BEACONS);
    };
    const db = await new Promise((resolve, reject) => {
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
      req.onblocked = () => reject(new Error("IndexedDB open blocked"));
    });
    const store2 = new _IdbStore(db, maxEvents, maxBytes);
    await store2.reconcile();
    return store2;
  }
  constructor(db, maxEvents, maxBytes) {
    this.kind = "indexeddb";
    this.db = db;
    this.maxEvents = maxEvents;
    this.maxBytes = maxBytes;
  }
  // One read-write transaction over the events and the totals (and the page-hide marks when
  // `beacons`): tabs never interleave inside it. Page-hide marks are not held up by it otherwise.
  async _rw(body, beacons = false) {
    const tx = this.db.transaction(beacons ? [EVENTS, META, BEACONS] : [EVENTS, META], "readwrite");
    const events = tx.objectStore(EVENTS);
    const metaStore = tx.objectStore(META);
    const meta = await promisify(metaStore.get(META_KEY)) || emptyMeta();
    const result = await body(events, meta, beacons ? tx.objectStore(BEACONS) : null);
    metaStore.put(meta, META_KEY);
    await done(tx);
    return result;
  }
  // The events are written in the caller's task, in one transaction of blind puts (see the
  // module doc); then accounted. Returns the number dropped.
  async addMany(recs) {
    const keep = recs.filter((r) => r.bytes <= this.maxBytes);
    const tooBig = recs.length - keep.length;
    const tx = this.db.transaction(EVENTS, "readwrite");
    const events = tx.objectStore(EVENTS);
    for (const rec of keep) events.put({ ...rec, acc: false });
    commitNow(tx);
    await done(tx);
    return await this.reconcile(keep.map((r) => r.id), tooBig) + tooBig;
  }
  // Counts unaccounted events (of `ids`; all, from scratch, when not given) into the totals,
  // then drops the oldest until the queue is within its bounds. Returns the number dropped.
  async reconcile(ids, alreadyDropped = 0) {
    return this._rw(async (events, meta) => {
      let fresh;
      if (ids) {
        fresh = [];
        for (const id of ids) {
          const r = await promisify(events.get(id));
          if (r && !r.acc) fresh.push(r);
        }
      } else {
        fresh = await promisify(events.getAll());
        meta.count = 0;
        meta.bytes = 0;
      }
      for (const r of fresh) {
        meta.count += 1;
        meta.bytes += r.bytes;
        if (!r.acc) events.put({ ...r, acc: true });
      }
      let dropped = 0;
      if (meta.count > this.maxEvents || meta.bytes > this.maxBytes) {
        for (const old of await oldest(events, meta, 0, this.maxEvents + 1, this.maxBytes)) {
          events.delete(old.id);
          if (old.acc || fresh.some((f) => f.id === old.id)) {
            meta.count -= 1;
            meta.bytes -= old.bytes;
          }
          dropped += 1;
        }
      }
      meta.dropped += dropped + alreadyDropped;
      return dropped;
    });
  }
  async list(beaconBefore, limit) {
    const tx = this.db.transaction([EVENTS, BEACONS], "readonly");
    const index = tx.objectStore(EVENTS).index("seq");
    const beacons = /* @__PURE__ */ new Map();
    await new Promise((resolve, reject) => {
      const req = tx.objectStore(BEACONS).openCursor();
      req.onerror = () => reject(req.error);
      req.onsuccess = () => {
        const c = req.result;
        if (!c) return resolve();
        beacons.set(c.key, c.value);
        c.continue();
      };
    });
    const out = [];
    await new Promise((resolve, reject) => {
      const req = index.openCursor();
      req.onerror = () => reject(req.error);
      req.onsuccess = () => {
        const cursor = req.result;
        if (!cursor || out.length >= limit) return resolve();
        const r = { ...cursor.value, beaconAt: beacons.get(cursor.value.id) || 0 };
        if (!r.beaconAt || r.beaconAt < beaconBefore) out.push(r);
        cursor.continue();
      };
    });
    return out;
  }
  async remove(ids) {
    return this._rw(async (events, meta, beacons) => {
      for (const id of ids) {
        const r = await promisify(events.get(id));
        beacons.delete(id);
        if (r) {
          events.delete(id);
          if (r.acc) {
            meta.count -= 1;
            meta.bytes -= r.bytes;
          }
        }
      }
    }, true);
  }
  // Blind writes, issued in the caller's task (page hide).
  async mark(ids, at) {
    const tx = this.db.transaction(BEACONS, "readwrite");
    const beacons = tx.objectStore(BEACONS);
    for (const id of ids) {
      if (at) beacons.put(at, id);
      else beacons.delete(id);
    }
    commitNow(tx);
    await done(tx);
  }
  async dropped() {
    const tx = this.db.transaction(META, "readonly");
    const meta = await promisify(tx.objectStore(META).get(META_KEY)) || emptyMeta();
    return meta.dropped;
  }
  async takeDropped(n) {
    return this._rw(async (_events, meta) => {
      meta.dropped = Math.max(0, meta.dropped - n);
    });
  }
  async count() {
    const tx = this.db.transaction(META, "readonly");
    const meta = await promisify(tx.objectStore(META).get(META_KEY)) || emptyMeta();
    return meta.count;
  }
};
function oldest(events, meta, bytes, maxEvents, maxBytes) {
  return new Promise((resolve, reject) => {
    const out = [];
    let count = meta.count;
    let total = meta.bytes;
    const req = events.index("seq").openCursor();
    req.onerror = () => reject(req.error);
    req.onsuccess = () => {
      const cursor = req.result;
      if (!cursor || count + 1 <= maxEvents && total + bytes <= maxBytes) return resolve(out);
      out.push(cursor.value);
      count -= 1;
      total -= cursor.value.bytes;
      cursor.continue();
    };
  });
}

// src/send.js
var KEEPALIVE_BUDGET = 64 * 1024;
var encoder = new TextEncoder();
function byteLength(s) {
  return encoder.encode(s).length;
}
function url(endpoint, writeKey) {
  if (!writeKey) return endpoint;
  const sep = endpoint.includes("?") ? "&" : "?";
  return `${endpoint}${sep}key=${encodeURIComponent(writeKey)}`;
}
function bundle(recs, context, dropped) {
  const ctx = dropped > 0 ? { ...context, tracker: { ...context.tracker || {}, dropped } } : context;
  return JSON.stringify({
    sent_at: (/* @__PURE__ */ new Date()).toISOString(),
    context: ctx,
    events: recs.map((r) => r.event)
  });
}
function retryAfterMs(headers, now) {
  const v = headers && headers.get("retry-after");
  if (!v) return 0;
  const secs = Number(v);
  if (Number.isFinite(secs)) return Math.max(0, secs * 1e3);
  const at = Date.parse(v);
  return Number.isFinite(at) ? Math.max(0, at - now) : 0;
}
function classify(status, body, recs, retryAfter) {
  const ids = recs.map((r) => r.id);
  const rejectedOf = (list) => (Array.isArray(list) ? list : []).map((r) => {
    var _a;
    return {
      event_id: (_a = r.event_id) != null ? _a : recs[r.index] && recs[r.index].id,
      reason: r.reason,
      path: r.path,
      message: r.message
    };
  });
  if (status === 200 || status === 202) {
    return {
      kind: "done",
      remove: ids,
      retry: [],
      accepted: Number(body && body.accepted) || 0,
      spooled: Number(body && body.spooled) || 0,
      rejected: rejectedOf(body && body.rejected)
    };
  }
  if (status === 500 && body && body.error === "dead_letter_refused" && Array.isArray(body.failed)) {
    const failed = new Set(
      body.failed.map((f) => recs[f.index] ? recs[f.index].id : f.event_id).filter(Boolean)
    );
    return {
      kind: "partial",
      remove: ids.filter((id) => !failed.has(id)),
      retry: ids.filter((id) => failed.has(id)),
      accepted: Number(body.accepted) || 0,
      spooled: Number(body.spooled) || 0,
      rejected: rejectedOf(body.rejected),
      retryAfter
    };
  }
  if (status === 413) return { kind: "split" };
  if (status === 0 || status === 408 || status === 429 || status >= 500) {
    return { kind: "retry", remove: [], retry: ids, retryAfter };
  }
  if (status === 401 || status === 403) {
    return { kind: "retry", remove: [], retry: ids, retryAfter, auth: true };
  }
  const reason = body && body.error || `http_${status}`;
  return {
    kind: "done",
    remove: ids,
    retry: [],
    accepted: 0,
    spooled: 0,
    rejected: ids.map((id) => ({ event_id: id, reason, message: body && body.message }))
  };
}
function backoff(failures2, base, max, retryAfter, random = Math.random) {
  const cap = Math.min(max, base * 2 ** Math.min(failures2, 30));
  const jitter = random() * cap;
  return Math.min(max, Math.max(jitter, retryAfter || 0));
}
async function post(endpoint, writeKey, body, keepalive) {
  const started = Date.now();
  try {
    const res = await fetch(url(endpoint, writeKey), {
      method: "POST",
      headers: { "Content-Type": "text/plain" },
      body,
      keepalive,
      credentials: "omit",
      mode: "cors"
    });
    let json = null;
    try {
      json = await res.json();
    } catch (_) {
      json = null;
    }
    return { status: res.status, body: json, retryAfter: retryAfterMs(res.headers, Date.now()), started };
  } catch (err) {
    return { status: 0, body: null, retryAfter: 0, started, error: String(err) };
  }
}

// src/eventpipe.js
var VERSION = "0.1.0";
var DEFAULTS = {
  endpoint: "",
  writeKey: "",
  context: {},
  maxBatchEvents: 100,
  maxBatchBytes: 60 * 1024,
  flushIntervalMs: 1e3,
  maxQueueEvents: 1e4,
  maxQueueBytes: 5 * 1024 * 1024,
  baseRetryDelayMs: 500,
  maxRetryDelayMs: 60 * 1e3,
  beaconGraceMs: 30 * 1e3,
  storage: "indexeddb",
  name: "eventpipe",
  onRejected: null,
  onAttempt: null
};
var cfg = null;
var store = null;
var ready = null;
var leader = false;
var channel = null;
var timer = null;
var pumping = null;
var retryAt = 0;
var failures = 0;
var seq = 0;
var keepaliveInFlight = 0;
var sending = /* @__PURE__ */ new Set();
var known = /* @__PURE__ */ new Map();
var unstored = /* @__PURE__ */ new Set();
var toStore = [];
var flushWaiters = /* @__PURE__ */ new Map();
var counters = { queued: 0, sent: 0, accepted: 0, spooled: 0, rejected: 0, dropped: 0, retries: 0, authFailures: 0 };
function uuid() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  const b = new Uint8Array(16);
  if (c && typeof c.getRandomValues === "function") c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  b[6] = b[6] & 15 | 64;
  b[8] = b[8] & 63 | 128;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
function init(options) {
  if (cfg) return ready;
  cfg = { ...DEFAULTS, ...options };
  if (!cfg.endpoint) throw new Error("eventpipe.init: endpoint is required");
  const maxEvents = cfg.maxQueueEvents;
  const maxBytes = cfg.maxQueueBytes;
  ready = (async () => {
    if (cfg.storage !== "memory" && typeof indexedDB !== "undefined") {
      try {
        store = await IdbStore.open(cfg.name, maxEvents, maxBytes);
      } catch (_) {
        store = null;
      }
    }
    if (!store) store = new MemoryStore(maxEvents, maxBytes);
    const early = [...known.values()].filter((r) => unstored.has(r.id));
    if (early.length) await storeRecs(early);
    await refreshCount();
    await lead();
  })();
  addEventListener("visibilitychange", () => {
    if (document.visibilityState === "hidden") onHide(false);
  });
  addEventListener("pagehide", () => onHide(true));
  return ready;
}
async function lead() {
  const locks = typeof navigator !== "undefined" && navigator.locks;
  if (store.kind === "memory" || !locks) {
    leader = true;
    schedule(0);
    return;
  }
  if (typeof BroadcastChannel !== "undefined") {
    channel = new BroadcastChannel(`${cfg.name}:queue`);
    channel.onmessage = (m) => onMessage(m.data);
  }
  locks.request(`${cfg.name}:sender`, () => {
    leader = true;
    schedule(0);
    return new Promise(() => {
    });
  });
}
function onMessage(msg) {
  if (!msg || !leader) {
    if (msg && msg.type === "flushed" && flushWaiters.has(msg.nonce)) {
      flushWaiters.get(msg.nonce)();
      flushWaiters.delete(msg.nonce);
    }
    return;
  }
  if (msg.type === "queued") schedule(cfg.flushIntervalMs);
  if (msg.type === "flush") {
    pump().then(() => channel && channel.postMessage({ type: "flushed", nonce: msg.nonce }));
  }
}
function track(schema, data, options = {}) {
  if (!cfg) throw new Error("eventpipe.track before eventpipe.init");
  const id = options.event_id || uuid();
  const event = { schema, event_id: id, ts: options.ts || (/* @__PURE__ */ new Date()).toISOString(), data: data != null ? data : {} };
  if (options.context) event.context = options.context;
  const rec = { id, seq: Date.now() * 1e3 + seq++ % 1e3, bytes: byteLength(JSON.stringify(event)), event, beaconAt: 0 };
  known.set(id, rec);
  unstored.add(id);
  if (store) {
    toStore.push(rec);
    if (toStore.length === 1) {
      queueMicrotask(() => {
        const recs = toStore;
        toStore = [];
        storeRecs(recs);
      });
    }
  }
  return id;
}
async function storeRecs(recs) {
  try {
    counters.dropped += await store.addMany(recs);
  } catch (_) {
    if (store.kind !== "memory") {
      const mem = new MemoryStore(cfg.maxQueueEvents, cfg.maxQueueBytes);
      store = mem;
      leader = true;
      counters.dropped += await mem.addMany(recs);
    }
  }
  for (const rec of recs) {
    unstored.delete(rec.id);
    if (!leader) known.delete(rec.id);
  }
  await refreshCount();
  if (channel) channel.postMessage({ type: "queued" });
  if (leader) schedule(counters.queued >= cfg.maxBatchEvents ? 0 : cfg.flushIntervalMs);
}
async function refreshCount() {
  try {
    counters.queued = await store.count();
  } catch (_) {
  }
}
function schedule(delay) {
  if (!leader) return;
  const wait = Math.max(delay, retryAt - Date.now());
  if (timer) {
    if (timer.at <= Date.now() + wait) return;
    clearTimeout(timer.id);
  }
  const at = Date.now() + wait;
  timer = { at, id: setTimeout(() => (timer = null, pump()), wait) };
}
async function flush() {
  if (!cfg) return;
  await ready;
  if (leader) return pump(true);
  if (!channel) return waitQueued(Date.now() + 3e4);
  const nonce = uuid();
  await new Promise((resolve) => {
    flushWaiters.set(nonce, resolve);
    channel.postMessage({ type: "flush", nonce });
    setTimeout(() => flushWaiters.delete(nonce) && resolve(), 3e4);
  });
  await refreshCount();
}
var sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitQueued(deadline) {
  const ids = async () => new Set((await store.list(Infinity, Infinity).catch(() => [])).map((r) => r.id));
  while (unstored.size && Date.now() < deadline) await sleep(20);
  const before = await ids();
  while (before.size && Date.now() < deadline) {
    await sleep(100);
    const now = await ids();
    for (const id of before) if (!now.has(id)) before.delete(id);
  }
  await refreshCount();
}
function pump() {
  if (!leader) return Promise.resolve();
  if (pumping) return pumping;
  const run = (async () => {
    while (Date.now() >= retryAt) {
      const now = Date.now();
      const recs = await store.list(now - cfg.beaconGraceMs, cfg.maxBatchEvents * 4);
      for (const r of recs) known.set(r.id, known.get(r.id) || r);
      const batch = take(recs.filter((r) => !inFlight(known.get(r.id) || r, now)));
      if (!batch.length) break;
      if (!await sendBatch(batch)) break;
    }
  })();
  pumping = run.catch(() => {
  }).then(async () => {
    pumping = null;
    await refreshCount();
    if (counters.queued > 0 || !channel && store.kind !== "memory") schedule(Date.now() >= retryAt ? cfg.flushIntervalMs : 0);
  });
  return pumping;
}
function inFlight(r, now) {
  return r.beaconAt > 0 && r.beaconAt >= now - cfg.beaconGraceMs;
}
function take(recs) {
  const out = [];
  let bytes = 256 + byteLength(JSON.stringify(cfg.context));
  for (const r of recs) {
    if (out.length && (out.length >= cfg.maxBatchEvents || bytes + r.bytes + 1 > cfg.maxBatchBytes)) break;
    out.push(r);
    bytes += r.bytes + 1;
  }
  return out;
}
async function sendBatch(recs) {
  const dropped = await store.dropped().catch(() => 0);
  const body = bundle(recs, cfg.context, dropped);
  counters.sent += recs.length;
  for (const r of recs) sending.add(r.id);
  let res;
  try {
    res = await post(cfg.endpoint, cfg.writeKey, body, false);
  } finally {
    for (const r of recs) sending.delete(r.id);
  }
  report(res, recs);
  const verdict = classify(res.status, res.body, recs, res.retryAfter);
  if (verdict.kind === "split") {
    if (recs.length === 1) {
      await settle({
        kind: "done",
        remove: [recs[0].id],
        retry: [],
        accepted: 0,
        spooled: 0,
        rejected: [{ event_id: recs[0].id, reason: res.body && res.body.error || "too_large", message: res.body && res.body.message }]
      }, 0);
      return true;
    }
    const half = Math.ceil(recs.length / 2);
    return await sendBatch(recs.slice(0, half)) && sendBatch(recs.slice(half));
  }
  return settle(verdict, dropped);
}
function report(res, recs) {
  if (typeof cfg.onAttempt === "function") {
    try {
      cfg.onAttempt({ started: res.started, ended: Date.now(), status: res.status, retryAfterMs: res.retryAfter, events: recs.length, error: res.error });
    } catch (_) {
    }
  }
}
async function settle(v, dropped) {
  if (v.remove && v.remove.length) {
    await store.remove(v.remove);
    for (const id of v.remove) known.delete(id);
  }
  if (v.kind === "done" || v.kind === "partial") {
    counters.accepted += v.accepted;
    counters.spooled += v.spooled;
    counters.rejected += v.rejected.length;
    if (dropped > 0) await store.takeDropped(dropped).catch(() => {
    });
    if (v.rejected.length && typeof cfg.onRejected === "function") {
      try {
        cfg.onRejected(v.rejected);
      } catch (_) {
      }
    }
  }
  if (v.retry && v.retry.length) {
    failures += 1;
    counters.retries += 1;
    if (v.auth) counters.authFailures += 1;
    const wait = v.auth ? cfg.maxRetryDelayMs : backoff(failures, cfg.baseRetryDelayMs, cfg.maxRetryDelayMs, v.retryAfter);
    retryAt = Date.now() + wait;
    return false;
  }
  failures = 0;
  return true;
}
function onHide(unload) {
  if (!cfg || !store) return;
  const now = Date.now();
  const recs = [...known.values()].filter((r) => (leader || unstored.has(r.id)) && !inFlight(r, now) && (unload || !sending.has(r.id))).sort((a, b) => a.seq - b.seq);
  let i = 0;
  let beaconOk = typeof navigator !== "undefined" && typeof navigator.sendBeacon === "function";
  while (i < recs.length) {
    const batch = take(recs.slice(i));
    i += batch.length;
    const body = bundle(batch, cfg.context, 0);
    const bytes = byteLength(body);
    let sent = false;
    if (keepaliveInFlight + bytes <= KEEPALIVE_BUDGET) {
      keepaliveInFlight += bytes;
      sent = true;
      counters.sent += batch.length;
      post(cfg.endpoint, cfg.writeKey, body, true).then(async (res) => {
        keepaliveInFlight -= bytes;
        report(res, batch);
        const v = classify(res.status, res.body, batch, res.retryAfter);
        if (v.auth) counters.authFailures += 1;
        if (v.kind === "done" || v.kind === "partial") await settle(v, 0);
        const back = v.kind === "split" || v.kind === "retry" ? batch.map((r) => r.id) : v.retry;
        for (const id of back || []) {
          const r = known.get(id);
          if (r) r.beaconAt = 0;
        }
        if (back && back.length) await store.mark(back, 0).catch(() => {
        });
      });
    } else if (beaconOk) {
      sent = navigator.sendBeacon(url(cfg.endpoint, cfg.writeKey), new Blob([body], { type: "text/plain" }));
      if (sent) counters.sent += batch.length;
      else beaconOk = false;
    }
    if (sent) {
      for (const r of batch) r.beaconAt = now;
      store.mark(batch.map((r) => r.id), now).catch(() => {
      });
    }
  }
}
function stats() {
  return { ...counters, storage: store ? store.kind : "pending", leader };
}
var eventpipe = { init, track, flush, stats, VERSION };
var eventpipe_default = eventpipe;
export {
  VERSION,
  eventpipe_default as default,
  flush,
  init,
  stats,
  track
};
