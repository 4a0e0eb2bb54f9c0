// Drives the tracker in real headless Chromium for tests/tracker.rs.
//
//   node test/run.mjs '<json>'   with {scenario, endpoint, port, userDataDir, ...}
//
// Serves the test pages itself on 127.0.0.1:`port` (another origin than the gateway, so every
// request is cross-origin and CORS is exercised), runs the scenario, prints ONE line of JSON (what
// the page saw: event ids, stats, attempts), then keeps the browser open until stdin closes, so
// requests still in flight after a navigation (keepalive, beacons) are not cut by closing it.
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.join(here, "..", "dist", "eventpipe.min.js");
let chromium;
try {
  ({ chromium } = await import("playwright-core"));
} catch (e) {
  console.error("playwright-core is missing: run: cd clients/js && npm ci");
  process.exit(2);
}

const args = JSON.parse(process.argv[2]);
const DEADLINE_MS = args.deadlineMs || 60000;

// --- the test site -------------------------------------------------------------------------
function page(q) {
  const src = q.get("src") || "/eventpipe.min.js";
  const opts = q.get("opts") || "{}";
  // `nobc`: a browser without BroadcastChannel.
  const nobc = q.get("nobc") ? "<script>delete window.BroadcastChannel;</script>" : "";
  return `<!doctype html><html><head><meta charset="utf-8"><title>tracker test</title>${nobc}
<script src="${src}"></script>
<script>
  window.attempts = []; window.rejections = [];
  window.ready = eventpipe.init(Object.assign(${opts}, {
    endpoint: ${JSON.stringify(q.get("endpoint"))},
    onAttempt: (a) => window.attempts.push(a),
    onRejected: (r) => window.rejections.push(...r),
  }));
</script></head><body>test page</body></html>`;
}

const server = http.createServer((req, res) => {
  const u = new URL(req.url, "http://127.0.0.1");
  if (u.pathname === "/page.html") {
    res.writeHead(200, { "content-type": "text/html" });
    res.end(page(u.searchParams));
  } else if (u.pathname === "/blank.html") {
    res.writeHead(200, { "content-type": "text/html" });
    res.end("<!doctype html><title>elsewhere</title>no tracker here");
  } else if (u.pathname === "/eventpipe.min.js") {
    res.writeHead(200, { "content-type": "application/javascript" });
    res.end(fs.readFileSync(dist));
  } else {
    res.writeHead(404);
    res.end();
  }
});
await new Promise((r) => server.listen(args.port, "127.0.0.1", r));
const site = `http://127.0.0.1:${args.port}`;

function pageUrl(opts, src, nobc) {
  const q = new URLSearchParams({ endpoint: args.endpoint, opts: JSON.stringify(opts || {}) });
  if (src) q.set("src", src);
  if (nobc) q.set("nobc", "1");
  return `${site}/page.html?${q}`;
}

// --- the browser ---------------------------------------------------------------------------
const context = await chromium.launchPersistentContext(args.userDataDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});

// Every event id put on the wire to the gateway, by any tab, any way (fetch, keepalive, beacon).
const wire = new Map();
context.on("request", (req) => {
  if (req.method() !== "POST" || !req.url().startsWith(args.endpoint)) return;
  try {
    for (const e of JSON.parse(req.postData() || "{}").events || []) {
      wire.set(e.event_id, (wire.get(e.event_id) || 0) + 1);
    }
  } catch (_) {
    /* not a bundle */
  }
});

async function open(opts, src, nobc) {
  const p = await context.newPage();
  p.on("pageerror", (e) => console.error("page error:", e.message));
  await p.goto(pageUrl(opts, src, nobc));
  await p.evaluate(() => window.ready);
  return p;
}

// Polls `fn` in the page until it returns a truthy value (deadline: DEADLINE_MS).
async function until(p, fn, arg, what) {
  const deadline = Date.now() + DEADLINE_MS;
  for (;;) {
    const v = await p.evaluate(fn, arg);
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(await state(p))}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const state = (p) => p.evaluate(() => ({ stats: eventpipe.stats(), attempts: window.attempts, rejections: window.rejections }));

function trackIn(p, n, extra) {
  return p.evaluate(
    ({ n, extra }) => {
      const ids = [];
      for (let i = 0; i < n; i++) {
        ids.push(eventpipe.track("page_view/1", { url: `https://shop.example/p/${i}`, ...extra }));
      }
      return ids;
    },
    { n, extra: extra || {} },
  );
}

const drained = (p, n) =>
  until(p, (n) => { const s = eventpipe.stats(); return s.queued === 0 && s.accepted + s.rejected >= n && s; }, n, `${n} events settled`);

// Events in the origin's IndexedDB queue, read directly (not through the tracker).
const idbCount = (p) =>
  p.evaluate(
    () =>
      new Promise((resolve, reject) => {
        const o = indexedDB.open("eventpipe");
        o.onerror = () => reject(o.error);
        o.onsuccess = () => {
          const db = o.result;
          const c = db.transaction("events").objectStore("events").count();
          c.onerror = () => reject(c.error);
          c.onsuccess = () => (db.close(), resolve(c.result));
        };
      }),
  );

// Every request the page made (counted in `sent`, by plain fetch or on hide) has been answered.
const allAnswered = () => {
  const s = eventpipe.stats();
  const answered = window.attempts.reduce((n, a) => n + a.events, 0);
  return s.queued === 0 && answered >= s.sent && s;
};

// --- scenarios -----------------------------------------------------------------------------
const scenarios = {
  // Every tracked event is sent; a schema violation is rejected, reported and not retried.
  async basic() {
    const p = await open({ flushIntervalMs: 200, maxBatchEvents: 20 }, args.trackerSrc);
    const ids = await trackIn(p, args.n);
    const invalid = await p.evaluate(() => eventpipe.track("page_view/1", { title: "no url" }));
    await p.evaluate(() => eventpipe.flush());
    await drained(p, args.n + 1);
    return { ids, invalid, ...(await state(p)) };
  },

  // Track, then leave at once: the page-hide path (keepalive fetch, beacon) must carry them; the
  // normal sender would wait a minute.
  async navigate() {
    const p = await open({ flushIntervalMs: 60000, maxBatchEvents: 1000, storage: args.storage || "indexeddb" });
    const ids = await p.evaluate((n) => {
      const ids = [];
      for (let i = 0; i < n; i++) ids.push(eventpipe.track("page_view/1", { url: `https://shop.example/leave/${i}` }));
      location.href = "/blank.html";
      return ids;
    }, args.n);
    await p.waitForURL(/blank\.html/);
    if (!args.comeBack) return { ids };
    // Past the keepalive budget, the rest waited in IndexedDB: the next page with the tracker
    // sends it, and not what left on page hide (marked in flight; a long grace here, so a resend
    // after it cannot blur the count).
    await p.goto(pageUrl({ flushIntervalMs: 100, beaconGraceMs: 600000 }));
    await p.evaluate(() => window.ready);
    const next = await until(
      p,
      (n) => { const s = eventpipe.stats(); return s.accepted > 0 && s.accepted === s.sent && s.queued + s.accepted === n && s; },
      args.n,
      "the next page's send",
    );
    return { ids, next };
  },

  // A queue bounded at `max` events: tracking more in one go drops the oldest (counted); the
  // count travels in the next bundle's context.
  async bounded() {
    const p = await open({ flushIntervalMs: 60000, maxQueueEvents: args.max });
    const ids = await trackIn(p, args.n);
    await until(p, (max) => eventpipe.stats().queued === max, args.max, "the bounded queue");
    await p.evaluate(() => eventpipe.flush());
    await drained(p, args.max);
    return { ids, ...(await state(p)) };
  },

  // Gateway down: the events are tried, kept, and still queued after a reload.
  async down1() {
    const opts = { flushIntervalMs: 100, beaconGraceMs: 1000, baseRetryDelayMs: 100, maxRetryDelayMs: 500 };
    const p = await open(opts);
    const ids = await trackIn(p, args.n);
    await until(p, () => eventpipe.stats().retries >= 2, null, "two failed attempts");
    await p.reload();
    await p.evaluate(() => window.ready);
    const after = await until(p, (n) => { const s = eventpipe.stats(); return s.queued === n && s; }, args.n, "queue after reload");
    return { ids, queuedAfterReload: after.queued, attempts: await p.evaluate(() => window.attempts) };
  },

  // Gateway back: a new browser on the same profile sends what the last one left.
  async down2() {
    const p = await open({ flushIntervalMs: 100, beaconGraceMs: 1000, baseRetryDelayMs: 100, maxRetryDelayMs: 1000 });
    const s = await drained(p, args.n);
    return { stats: s };
  },

  // Two tabs of one origin share the queue; one sends at a time; no id twice on the wire.
  async tabs() {
    const opts = { flushIntervalMs: 50, maxBatchEvents: 10 };
    const a = await open(opts);
    const b = await open(opts);
    const ids = [];
    for (let round = 0; round < args.rounds; round++) {
      const [x, y] = await Promise.all([trackIn(a, args.n), trackIn(b, args.n)]);
      ids.push(...x, ...y);
      await Promise.all([a.evaluate(() => eventpipe.flush()), b.evaluate(() => eventpipe.flush())]);
    }
    const total = ids.length;
    const settled = async () => {
      const [sa, sb] = await Promise.all([a.evaluate(() => eventpipe.stats()), b.evaluate(() => eventpipe.stats())]);
      return sa.queued === 0 && sb.queued === 0 && sa.accepted + sb.accepted >= total ? [sa, sb] : null;
    };
    const deadline = Date.now() + DEADLINE_MS;
    let both;
    while (!(both = await settled())) {
      if (Date.now() > deadline) throw new Error("tabs did not drain");
      await new Promise((r) => setTimeout(r, 100));
    }
    const dups = [...wire.entries()].filter(([, c]) => c > 1).map(([id, c]) => ({ id, c }));
    return { ids, stats: both, wireDuplicates: dups, wireIds: wire.size };
  },

  // The gateway answers 503 (Retry-After: 2), then 429 (Retry-After: 1), then for real.
  async retryAfter() {
    const answers = [
      { status: 503, retryAfter: "2", error: "unavailable" },
      { status: 429, retryAfter: "1", error: "rate_limited" },
    ];
    await context.route(`${args.endpoint}*`, async (route) => {
      if (route.request().method() !== "POST" || !answers.length) return route.continue();
      const a = answers.shift();
      await route.fulfill({
        status: a.status,
        headers: {
          "content-type": "application/json",
          "retry-after": a.retryAfter,
          "access-control-allow-origin": "*",
          "access-control-expose-headers": "retry-after",
        },
        body: JSON.stringify({ error: a.error, message: "injected by the test" }),
      });
    });
    const p = await open({ flushIntervalMs: 50, baseRetryDelayMs: 10, maxRetryDelayMs: 10000 });
    const ids = await trackIn(p, args.n);
    await drained(p, args.n);
    return { ids, ...(await state(p)) };
  },

  // The gateway refuses the write key (not in its keys file): the events stay queued and are
  // retried; then the keys file gains the key (the gateway re-reads it) and each lands.
  async authRefused() {
    const p = await open({ writeKey: args.key, flushIntervalMs: 50, baseRetryDelayMs: 50, maxRetryDelayMs: 300 });
    const ids = await trackIn(p, args.n);
    const refused = await until(p, () => { const s = eventpipe.stats(); return s.authFailures >= 3 && s; }, null, "three refusals");
    const queuedWhileRefused = await idbCount(p);
    fs.writeFileSync(args.keysFile, args.keysFixed);
    const s = await until(p, (n) => { const s = eventpipe.stats(); return s.queued === 0 && s.accepted >= n && s; }, args.n, "events landed");
    return { ids, refused, queuedWhileRefused, stats: s, attempts: await p.evaluate(() => window.attempts) };
  },

  // The tab is hidden (visibilitychange) while its batch is in flight by plain fetch (the
  // request held by interception until then): that fetch goes on; nothing is resent.
  async hideInFlight() {
    let routed = 0;
    let release;
    const held = new Promise((r) => (release = r));
    await context.route(`${args.endpoint}*`, async (route) => {
      if (route.request().method() !== "POST") return route.continue();
      routed += 1;
      if (routed === 1) await held;
      return route.continue();
    });
    const p = await open({ flushIntervalMs: 50, maxBatchEvents: 1000 });
    const ids = await trackIn(p, args.n);
    const deadline = Date.now() + DEADLINE_MS;
    while (routed < 1) {
      if (Date.now() > deadline) throw new Error("no request sent");
      await new Promise((r) => setTimeout(r, 50));
    }
    await p.evaluate(() => {
      Object.defineProperty(document, "visibilityState", { get: () => "hidden", configurable: true });
      document.dispatchEvent(new Event("visibilitychange", { bubbles: true }));
    });
    release();
    const s = await until(p, allAnswered, null, "every request answered");
    const dups = [...wire.entries()].filter(([, c]) => c > 1).map(([id, c]) => ({ id, c }));
    return { ids, stats: s, routed, wireDuplicates: dups, attempts: await p.evaluate(() => window.attempts) };
  },

  // Without BroadcastChannel, a tab that does not send: its flush() resolves once its events
  // have left the shared queue (sent by the other tab).
  async flushNoBroadcast() {
    const opts = { flushIntervalMs: 100 };
    const a = await open(opts, null, true);
    await until(a, () => eventpipe.stats().leader, null, "tab A sending");
    const b = await open(opts, null, true);
    const bStats = await b.evaluate(() => eventpipe.stats());
    const ids = await b.evaluate((n) => {
      const ids = [];
      for (let i = 0; i < n; i++) ids.push(eventpipe.track("page_view/1", { url: `https://shop.example/b/${i}` }));
      return eventpipe.flush().then(() => ids);
    }, args.n);
    const queuedAfterFlush = await idbCount(b);
    const sa = await until(a, (n) => { const s = eventpipe.stats(); return s.accepted >= n && s; }, args.n, "tab A sent B's events");
    return { ids, bLeader: bStats.leader, queuedAfterFlush, a: sa };
  },

  // A gateway with a small max_body_bytes: 413s split the batch; a lone event too big is rejected.
  async split() {
    const p = await open({ flushIntervalMs: 100, maxBatchEvents: 100 });
    const pad = "x".repeat(args.pad);
    const ids = await trackIn(p, args.n, { title: pad });
    const huge = await p.evaluate((len) => eventpipe.track("page_view/1", { url: "https://shop.example/huge", title: "y".repeat(len) }), args.hugePad);
    await p.evaluate(() => eventpipe.flush());
    await drained(p, args.n + 1);
    return { ids, huge, ...(await state(p)) };
  },
};

let code = 0;
try {
  const result = await scenarios[args.scenario]();
  process.stdout.write(JSON.stringify(result) + "\n");
  // Hold the browser until the caller has read what it needs (stdin closed).
  if (args.hold) {
    process.stdin.resume();
    await new Promise((r) => process.stdin.on("end", r).on("close", r));
  }
} catch (e) {
  console.error(e && e.stack ? e.stack : String(e));
  code = 1;
}
await context.close().catch(() => {});
server.close();
process.exit(code);
