// The tracker's queue: IndexedDB (shared by the origin's tabs, survives reloads and browser
// restarts) or memory (when IndexedDB is unavailable: blocked, private modes that refuse it, or
// `storage: "memory"`).
//
// A record is {id, seq, bytes, event, beaconAt}: `id` is the event id (the key), `seq` the order
// of tracking, `bytes` the event's JSON size, `beaconAt` the time it left by keepalive fetch or
// sendBeacon on page hide (0 when not in flight that way: see `list`).
//
// Bounds (drop policy: drop oldest): an add that would take the queue past `maxEvents` events or
// `maxBytes` bytes first deletes the oldest records until the new one fits; an event larger than
// `maxBytes` on its own is dropped. Each drop is counted in the queue's meta (`dropped`), shared
// by the tabs, and reported to the gateway with the next bundle (then subtracted: `takeDropped`).

const DB_VERSION = 1;
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
    };
    const db = await new Promise((resolve, reject) => {
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
      req.onblocked = () => reject(new Error("IndexedDB open blocked"));
    });
    return new IdbStore(db, maxEvents, maxBytes);
  }

  constructor(db, maxEvents, maxBytes) {
    this.kind = "indexeddb";
    this.db = db;
    this.maxEvents = maxEvents;
    this.maxBytes = maxBytes;
  }

  // One read-write transaction over both stores: tabs never interleave inside it.
  async _rw(body) {
    const tx = this.db.transaction([EVENTS, META], "readwrite");
    const events = tx.objectStore(EVENTS);
    const metaStore = tx.objectStore(META);
    const meta = (await promisify(metaStore.get(META_KEY))) || emptyMeta();
    const result = await body(events, meta);
    metaStore.put(meta, META_KEY);
    await done(tx);
    return result;
  }

  async add(rec) {
    return this._rw(async (events, meta) => {
      if (await promisify(events.getKey(rec.id))) {
        events.put(rec);
        return 0;
      }
      // The oldest records that must go, read before the synchronous accounting below.
      const need = Math.max(0, meta.count + 1 - this.maxEvents);
      let victims = [];
      if (rec.bytes <= this.maxBytes && (need > 0 || meta.bytes + rec.bytes > this.maxBytes)) {
        victims = await oldest(events, meta, rec.bytes, this.maxEvents, this.maxBytes);
      }
      let i = 0;
      return addTo(meta, rec, this.maxEvents, this.maxBytes, {
        oldest: () => victims[i++] || null,
        remove: (r) => events.delete(r.id),
        put: (r) => events.put(r),
      });
    });
  }

  async list(beaconBefore, limit) {
    const tx = this.db.transaction(EVENTS, "readonly");
    const index = tx.objectStore(EVENTS).index("seq");
    const out = [];
    await new Promise((resolve, reject) => {
      const req = index.openCursor();
      req.onerror = () => reject(req.error);
      req.onsuccess = () => {
        const cursor = req.result;
        if (!cursor || out.length >= limit) return resolve();
        const r = cursor.value;
        if (!r.beaconAt || r.beaconAt < beaconBefore) out.push(r);
        cursor.continue();
      };
    });
    return out;
  }

  async remove(ids) {
    return this._rw(async (events, meta) => {
      for (const id of ids) {
        const r = await promisify(events.get(id));
        if (r) {
          events.delete(id);
          meta.count -= 1;
          meta.bytes -= r.bytes;
        }
      }
    });
  }

  async mark(ids, at) {
    const tx = this.db.transaction(EVENTS, "readwrite");
    const events = tx.objectStore(EVENTS);
    for (const id of ids) {
      const req = events.get(id);
      req.onsuccess = () => {
        if (req.result) events.put({ ...req.result, beaconAt: at });
      };
    }
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
