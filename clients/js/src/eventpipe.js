// eventpipe browser tracker: `init`, `track`, `flush`, `stats`.
//
// Events go into a queue (IndexedDB, shared by the origin's tabs; memory when IndexedDB is not
// available) and one tab at a time — the holder of a Web Lock — sends them in bundles (by count,
// bytes and time). Each event's id is fixed at `track` and kept on every retry, so the gateway's
// dedup window and consumers can recognise a resend. The answer is read per event: accepted and
// rejected events leave the queue; only what must be retried stays (a whole bundle after a network
// error, 408, 429 or 5xx; only the `failed` ones after a 500 `dead_letter_refused`). Retries wait a
// full-jitter exponential backoff, at least `Retry-After`, at most `maxRetryDelayMs`. A 413 splits
// the bundle in halves; a lone event too large is rejected.
//
// A 401/403 (the write key refused: unknown, rotated, an origin missing from its list) keeps the
// events and retries at `maxRetryDelayMs` (counted in `stats().authFailures`): once the key works
// they land. Other 4xx (400, 415: a malformed request) reject the bundle.
//
// Page hide (`visibilitychange` to hidden, `pagehide`): what this tab holds goes out at once with
// `fetch(..., {keepalive: true})` within the 64 KiB keepalive budget, the rest with `sendBeacon`;
// what neither takes stays in the queue for the next page. A batch this tab is sending by plain
// fetch is not resent when the tab is merely hidden (that fetch goes on); on `pagehide` it is
// (the page's fetch may be cancelled with the page; the resend carries the same ids). Events that left by beacon (whose answer
// cannot be read) are marked in flight and resent by a later page only after `beaconGraceMs`: a
// resend of an event that did arrive is answered as accepted by the gateway's dedup window (and
// carries the same id for consumers past it).

import { IdbStore, MemoryStore } from "./store.js";
import { KEEPALIVE_BUDGET, backoff, bundle, byteLength, classify, post, url } from "./send.js";

export const VERSION = "0.1.0";

const DEFAULTS = {
  endpoint: "",
  writeKey: "",
  context: {},
  maxBatchEvents: 100,
  maxBatchBytes: 60 * 1024,
  flushIntervalMs: 1000,
  maxQueueEvents: 10000,
  maxQueueBytes: 5 * 1024 * 1024,
  baseRetryDelayMs: 500,
  maxRetryDelayMs: 60 * 1000,
  beaconGraceMs: 30 * 1000,
  storage: "indexeddb",
  name: "eventpipe",
  onRejected: null,
  onAttempt: null,
};

let cfg = null;
let store = null;
let ready = null;
let leader = false;
let channel = null;
let timer = null;
let pumping = null;
let retryAt = 0;
let failures = 0;
let seq = 0;
let keepaliveInFlight = 0;
// Ids of the batch this tab is sending by plain fetch (page hide skips them until `pagehide`).
const sending = new Set();
// This tab's view of the queue: events it tracked (until stored, or sent when it leads) and,
// when it leads, the records it last read. Page hide sends from here, synchronously.
const known = new Map();
const unstored = new Set();
// Tracked in this task, written together at its end (one transaction: see store.js).
let toStore = [];
const flushWaiters = new Map();
const counters = { queued: 0, sent: 0, accepted: 0, spooled: 0, rejected: 0, dropped: 0, retries: 0, authFailures: 0 };

function uuid() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  const b = new Uint8Array(16);
  if (c && typeof c.getRandomValues === "function") c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Starts the tracker. `endpoint` is the gateway's `/v1/events` URL. */
export function init(options) {
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
    // Tracked before the store was open (taken in the same turn as the assignment above: later
    // tracks store their own).
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

// One sender per queue: the tab holding the lock. Without Web Locks, or with a memory queue
// (not shared), this tab sends its own.
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
    // Held until the page goes away.
    return new Promise(() => {});
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

/** Queues an event; returns its id (a UUID, or `options.event_id`). */
export function track(schema, data, options = {}) {
  if (!cfg) throw new Error("eventpipe.track before eventpipe.init");
  const id = options.event_id || uuid();
  const event = { schema, event_id: id, ts: options.ts || new Date().toISOString(), data: data ?? {} };
  if (options.context) event.context = options.context;
  const rec = { id, seq: Date.now() * 1000 + (seq++ % 1000), bytes: byteLength(JSON.stringify(event)), event, beaconAt: 0 };
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
    // IndexedDB refused the write (quota, closed): this page keeps the events in memory only.
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
    /* keep the last count */
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
  timer = { at, id: setTimeout(() => ((timer = null), pump()), wait) };
}

/**
 * Sends what is queued now; resolves when the queue is empty or waits for a retry. In a tab that
 * does not send, asks the sending tab (BroadcastChannel) or, without one, waits until the events
 * queued before the call have left the shared queue; at most 30 s either way.
 */
export async function flush() {
  if (!cfg) return;
  await ready;
  if (leader) return pump(true);
  if (!channel) return waitQueued(Date.now() + 30000);
  const nonce = uuid();
  await new Promise((resolve) => {
    flushWaiters.set(nonce, resolve);
    channel.postMessage({ type: "flush", nonce });
    setTimeout(() => flushWaiters.delete(nonce) && resolve(), 30000);
  });
  await refreshCount();
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// A non-sending tab without BroadcastChannel: polls the shared queue until what it held at the
// call (this tab's tracks included, once stored) is gone, or until `deadline`.
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
      if (!(await sendBatch(batch))) break;
    }
  })();
  // Cleared after the run (which may finish before this assignment: a timer a tick early).
  pumping = run
    .catch(() => {})
    .then(async () => {
      pumping = null;
      await refreshCount();
      // Without BroadcastChannel other tabs cannot wake this one: look at the queue regularly.
      if (counters.queued > 0 || (!channel && store.kind !== "memory")) schedule(Date.now() >= retryAt ? cfg.flushIntervalMs : 0);
    });
  return pumping;
}

// Left by keepalive fetch or beacon within the grace period.
function inFlight(r, now) {
  return r.beaconAt > 0 && r.beaconAt >= now - cfg.beaconGraceMs;
}

// The oldest events that fit one bundle (at least one).
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

// Sends one batch (splitting on 413); false when the rest must wait for a retry.
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
      await settle({ kind: "done", remove: [recs[0].id], retry: [], accepted: 0, spooled: 0,
        rejected: [{ event_id: recs[0].id, reason: (res.body && res.body.error) || "too_large", message: res.body && res.body.message }] }, 0);
      return true;
    }
    const half = Math.ceil(recs.length / 2);
    return (await sendBatch(recs.slice(0, half))) && sendBatch(recs.slice(half));
  }
  return settle(verdict, dropped);
}

function report(res, recs) {
  if (typeof cfg.onAttempt === "function") {
    try {
      cfg.onAttempt({ started: res.started, ended: Date.now(), status: res.status, retryAfterMs: res.retryAfter, events: recs.length, error: res.error });
    } catch (_) {
      /* the page's callback */
    }
  }
}

// Applies a classified answer; true when nothing of it waits for a retry.
async function settle(v, dropped) {
  if (v.remove && v.remove.length) {
    await store.remove(v.remove);
    for (const id of v.remove) known.delete(id);
  }
  if (v.kind === "done" || v.kind === "partial") {
    counters.accepted += v.accepted;
    counters.spooled += v.spooled;
    counters.rejected += v.rejected.length;
    if (dropped > 0) await store.takeDropped(dropped).catch(() => {});
    if (v.rejected.length && typeof cfg.onRejected === "function") {
      try {
        cfg.onRejected(v.rejected);
      } catch (_) {
        /* the page's callback */
      }
    }
  }
  if (v.retry && v.retry.length) {
    failures += 1;
    counters.retries += 1;
    // A refused key waits the longest backoff: it takes a deployment change to work again.
    if (v.auth) counters.authFailures += 1;
    const wait = v.auth ? cfg.maxRetryDelayMs : backoff(failures, cfg.baseRetryDelayMs, cfg.maxRetryDelayMs, v.retryAfter);
    retryAt = Date.now() + wait;
    return false;
  }
  failures = 0;
  return true;
}

// Page hide: send what this tab holds with keepalive fetch, then sendBeacon; mark it in flight.
// A batch in flight by plain fetch is left to it when the tab is only hidden (`unload` false); on
// `pagehide` it goes too, since the page's own fetch may be cancelled with the page.
function onHide(unload) {
  if (!cfg || !store) return;
  const now = Date.now();
  const recs = [...known.values()]
    .filter((r) => (leader || unstored.has(r.id)) && !inFlight(r, now) && (unload || !sending.has(r.id)))
    .sort((a, b) => a.seq - b.seq);
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
        if (back && back.length) await store.mark(back, 0).catch(() => {});
      });
    } else if (beaconOk) {
      sent = navigator.sendBeacon(url(cfg.endpoint, cfg.writeKey), new Blob([body], { type: "text/plain" }));
      if (sent) counters.sent += batch.length;
      else beaconOk = false;
    }
    if (sent) {
      // Events not stored yet are stored marked (their pending add clones the record later).
      for (const r of batch) r.beaconAt = now;
      store.mark(batch.map((r) => r.id), now).catch(() => {});
    }
  }
}

/** Counters since `init` (`queued`: events in the shared queue at the last look). */
export function stats() {
  return { ...counters, storage: store ? store.kind : "pending", leader };
}

const eventpipe = { init, track, flush, stats, VERSION };
export default eventpipe;
