// Snowplow's browser tracker (npm `@snowplow/browser-tracker`, its UMD build) in headless
// Chromium, on a page served from another origin than the gateway (so every POST is a
// credentialed CORS request with a preflight: the tracker sends `credentials: "include"`).
// Driven by tests/snowplow.rs: `node browser_tracker.mjs <gateway host:port> [pixels JSON] [page port]`
// (the page port fixes the page's origin, which the test configures in snowplow.cors_origins).
//
// Prints one JSON line per tracked event {"sdk", "kind", "method", "eid"}, one per pixel
// {"pixel", "loaded", "width"}, then {"done": ...}.
import { createRequire } from 'node:module';
import { createServer } from 'node:http';
import { readFileSync, existsSync } from 'node:fs';

const require = createRequire(import.meta.url);
let chromium;
let umd;
try {
  ({ chromium } = require('playwright-core'));
  umd = readFileSync(require.resolve('@snowplow/browser-tracker/dist/index.umd.min.js'));
} catch (e) {
  console.error(`MISSING-SDK: ${e.message}; install with: cd tests/sdk/snowplow && npm ci`);
  process.exit(3);
}
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
if (!existsSync(CHROMIUM)) {
  console.error(`MISSING-SDK: no Chromium at ${CHROMIUM}; install with: apt-get install chromium`);
  process.exit(3);
}

const gateway = `http://${process.argv[2]}`;
// Native pixel events (base64url JSON), built by the Rust test.
const pixels = JSON.parse(process.argv[3] || '[]');

const page = `<!doctype html><html><head><title>Shop</title>
<script src="/sp.js"></script></head><body>
<script>
  window.sent = []; window.ok = 0; window.failed = []; window.label = null;
  const common = {
    appId: 'web-app', bufferSize: 1,
    plugins: [{ afterTrack: (p) => window.sent.push({ kind: window.label[0], method: window.label[1], eid: p.eid }) }],
    onRequestSuccess: (batch) => { window.ok += batch.length; },
    onRequestFailure: (f) => { window.failed.push(String(f.status || f.message)); },
  };
  snowplowBrowserTracking.newTracker('web', ${JSON.stringify(gateway)}, { ...common, eventMethod: 'post' });
  snowplowBrowserTracking.newTracker('webget', ${JSON.stringify(gateway)}, { ...common, eventMethod: 'get' });
  snowplowBrowserTracking.setUserId('web-user-1');
  const CHECKOUT = 'iglu:com.acme/checkout/jsonschema/1-0-0';
  // Text whose base64 holds the characters the URL-safe and standard alphabets differ in.
  const NOTE = '~~~???~~>>>??~';
  const user = [{ schema: 'iglu:com.acme/user/jsonschema/1-0-0', data: { tier: 'pro' } }];
  const as = (kind, method, f) => { window.label = [kind, method]; f(); };
  as('pv', 'post', () => snowplowBrowserTracking.trackPageView({ context: user }, ['web']));
  as('se', 'post', () => snowplowBrowserTracking.trackStructEvent({ category: 'shop', action: 'add', value: 4 }, ['web']));
  as('ue_valid', 'post', () => snowplowBrowserTracking.trackSelfDescribingEvent({ event: { schema: CHECKOUT, data: { total: 99, currency: 'GBP' } }, context: user }, ['web']));
  as('ue_invalid', 'post', () => snowplowBrowserTracking.trackSelfDescribingEvent({ event: { schema: CHECKOUT, data: { total: 1, coupon: 'X' } } }, ['web']));
  as('pv', 'get', () => snowplowBrowserTracking.trackPageView({}, ['webget']));
  as('ue_valid', 'get', () => snowplowBrowserTracking.trackSelfDescribingEvent({ event: { schema: CHECKOUT, data: { total: 5, note: NOTE } }, context: user }, ['webget']));
</script></body></html>`;

const server = createServer((req, res) => {
  if (req.url === '/sp.js') {
    res.writeHead(200, { 'content-type': 'text/javascript' });
    res.end(umd);
  } else {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(page);
  }
});
// The page's port: argv[4] when the test configured its origin for CORS, else any.
await new Promise((r) => server.listen(Number(process.argv[4] || 0), '127.0.0.1', r));
const origin = `http://127.0.0.1:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  // Playwright adds a fresh temporary --user-data-dir of its own.
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let code = 0;
try {
  const tab = await browser.newPage();
  await tab.goto(`${origin}/`);
  try {
    await tab.waitForFunction(() => window.ok >= 6, null, { timeout: 30000 });
  } catch (e) {
    const state = await tab.evaluate(() => ({ ok: window.ok, failed: window.failed }));
    throw new Error(`the browser tracker delivered ${state.ok} of 6 events; failures: ${JSON.stringify(state.failed)}`);
  }
  for (const s of await tab.evaluate(() => window.sent)) {
    console.log(JSON.stringify({ sdk: 'browser', ...s }));
  }
  // The native pixel, loaded as an image would be from an email.
  for (const e of pixels) {
    const r = await tab.evaluate(async (src) => new Promise((resolve) => {
      const img = new Image();
      img.onload = () => resolve({ loaded: true, width: img.naturalWidth });
      img.onerror = () => resolve({ loaded: false, width: 0 });
      img.src = src;
    }), `${gateway}/v1/pixel.gif?e=${e}`);
    console.log(JSON.stringify({ pixel: e, ...r }));
  }
  console.log(JSON.stringify({ done: true, origin }));
} catch (e) {
  console.error(String(e));
  code = 1;
} finally {
  await browser.close();
  server.close();
}
process.exit(code);
