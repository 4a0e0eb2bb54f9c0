// The tracker's queue: IndexedDB (shared by the origin's tabs, survives reloads and browser
// restarts) or memory (when IndexedDB is unavailable: blocked, private modes that refuse it, or
// `storage: "memory"`).
//
// A record is {id, seq, bytes, event, beaconAt}: `id` is the event id (the key), `seq` the order
// of tracking, `bytes` the event's JSON size, `beaconAt` the time it left by keepalive fetch or
// sendBeacon on page hide (0 when not in flight that way: see `list`).
//
// In IndexedDB, writes made while the page goes away are blind single writes (no read, no await
// before them), because a transaction that needs the page's JavaScript to continue is aborted
// when the page is gone: `add` puts the event alone, and the queue's totals (`meta`) are brought
// up to date afterwards (or by the next page: `reconcile`); page-hide marks go to their own
// store (`beacons`, id -> time).
//
// Bounds (drop policy: drop oldest): an add that would take the queue past `maxEvents` events or
// `maxBytes` bytes first deletes the oldest records until the new one fits; an event larger than
// `maxBytes` on its own is dropped. Each drop is counted in the queue's meta (`dropped`), shared
// by the tabs, and reported to the gateway with the next bundle (then subtracted: `takeDropped`).

const DB_VERSION = 1;
const BEACONS = "beacons";
const EVENTS = "events";
const META = "meta";
const META_KEY = "m";

function emptyMeta() {
  return { count: 0, bytes: 0, dropped: 0 };
}

/** A queue kept in this page's memory only. */
export class MemoryStore {
  constructor(maxEvents, maxBytes) {
    this.kind = "memory";
    this.maxEvents = maxEvents;
    this.maxBytes = maxBytes;
    this.recs = new Map();
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
      put: (r) => this.recs.set(r.id, r),
    });
  }

  async addMany(recs) {
    let dropped = 0;
    for (const r of recs) dropped += await this.add(r);
    return dropped;
  }

  async list(beaconBefore, limit) {
    return [...this.recs.values()]
      .filter((r) => !r.beaconAt || r.beaconAt < beaconBefore)
      .sort((a, b) => a.seq - b.seq)
      .slice(0, limit);
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
}

// Shared by both stores: make room for `rec` (dropping oldest), then put it. Returns the number
// of events dropped (the new one included when it can never fit).
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

// Commit at once (no wait for the end of the task): the page may be going away.
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

/** A queue in IndexedDB, shared by every tab of the origin using the same `name`. */
export class IdbStore {
  static async open(name, maxEvents, maxBytes) {
    const req = indexedDB.open(name, DB_VERSION);
    req.onupgradeneeded = () => {
      const db = req.result;
      const events = db.createObjectStore(EVENTS, { keyPath: "id" });
      events.createIndex("seq", "seq");
      db.createObjectStore(META);
      db.createObjectStore(BEACONS);
    };
    const db = await new Promise((resolve, reject) => {
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
      req.onblocked = () => reject(new Error("IndexedDB open blocked"));
    });
    const store = new IdbStore(db, maxEvents, maxBytes);
    await store.reconcile();
    return store;
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
    const meta = (await promisify(metaStore.get(META_KEY))) || emptyMeta();
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
    return (await this.reconcile(keep.map((r) => r.id), tooBig)) + tooBig;
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
    const beacons = new Map();
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
    const meta = (await promisify(tx.objectStore(META).get(META_KEY))) || emptyMeta();
    return meta.dropped;
  }

  async takeDropped(n) {
    return this._rw(async (_events, meta) => {
      meta.dropped = Math.max(0, meta.dropped - n);
    });
  }

  async count() {
    const tx = this.db.transaction(META, "readonly");
    const meta = (await promisify(tx.objectStore(META).get(META_KEY))) || emptyMeta();
    return meta.count;
  }
}

// The oldest records whose removal makes room for an event of `bytes` bytes.
function oldest(events, meta, bytes, maxEvents, maxBytes) {
  return new Promise((resolve, reject) => {
    const out = [];
    let count = meta.count;
    let total = meta.bytes;
    const req = events.index("seq").openCursor();
    req.onerror = () => reject(req.error);
    req.onsuccess = () => {
      const cursor = req.result;
      if (!cursor || (count + 1 <= maxEvents && total + bytes <= maxBytes)) return resolve(out);
      out.push(cursor.value);
      count -= 1;
      total -= cursor.value.bytes;
      cursor.continue();
    };
  });
}
