// Snowplow's Node tracker (npm `@snowplow/node-tracker`) pointed at a gateway by its documented
// emitter options (endpoint, protocol, port, eventMethod), driven by tests/snowplow.rs.
//
// Prints one JSON line per tracked event: {"sdk", "kind", "method", "eid"}, then {"done": ...}.
// POST with encodeBase64 false (ue_pr/co as plain JSON): a page view, a structured event, a valid
// and an invalid self-describing event with a context, a page ping, a transaction and its item; GET (base64): a page view and a
// self-describing event; and one POST whose first answer is lost, so the tracker retries the
// same eid.
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
let sp;
try {
  sp = require('@snowplow/node-tracker');
} catch (e) {
  console.error(`MISSING-SDK: ${e.message}; install with: cd tests/sdk/snowplow && npm ci`);
  process.exit(3);
}
const {
  newTracker, buildPageView, buildPagePing, buildStructEvent, buildSelfDescribingEvent,
  buildEcommerceTransaction, buildEcommerceTransactionItem,
} = sp;

const [host, portText] = process.argv[2].split(':');
const port = Number(portText);
const CHECKOUT = 'iglu:com.acme/checkout/jsonschema/1-0-0';
const USER = 'iglu:com.acme/user/jsonschema/1-0-0';
// Text whose base64 holds the characters the URL-safe and standard alphabets differ in.
const NOTE = '~~~???~~>>>??~';
const failures = [];

const delivered = {};

// Resolves once `n` events of tracker `ns` were answered 2xx (or fails after 30 s).
async function settled(t, ns, n) {
  const deadline = Date.now() + 30000;
  while ((delivered[ns] ?? 0) < n) {
    if (Date.now() > deadline) {
      console.error(`${ns}: only ${delivered[ns] ?? 0} of ${n} events delivered; failures: ${JSON.stringify(failures)}`);
      process.exit(1);
    }
    await t.flush();
    await new Promise((r) => setTimeout(r, 50));
  }
}

function tracker(namespace, eventMethod, encodeBase64, extra = {}) {
  const t = newTracker(
    { namespace, appId: 'node-app', encodeBase64 },
    {
      endpoint: host,
      protocol: 'http',
      port,
      eventMethod,
      bufferSize: 1,
      onRequestFailure: (f) => failures.push(f.status ?? f.message),
      onRequestSuccess: (batch) => { delivered[namespace] = (delivered[namespace] ?? 0) + batch.length; },
      ...extra,
    },
  );
  t.setUserId('node-user-1');
  t.setDomainUserId('node-duid-1');
  t.setPlatform('srv');
  return t;
}

const emit = (kind, method, payload) =>
  console.log(JSON.stringify({ sdk: 'node', kind, method, eid: payload.eid }));

const post = tracker('nd', 'post', false);
const context = [{ schema: USER, data: { tier: 'free' } }];
emit('pv', 'post', post.track(buildPageView({ pageUrl: 'https://node.example/a', pageTitle: 'A', referrer: 'https://ref.example/' })));
emit('se', 'post', post.track(buildStructEvent({ category: 'shop', action: 'add', label: 'l', property: 'p', value: 3 })));
emit('ue_valid', 'post', post.track(buildSelfDescribingEvent({ event: { schema: CHECKOUT, data: { total: 12.5, currency: 'USD' } } }), context));
emit('ue_invalid', 'post', post.track(buildSelfDescribingEvent({ event: { schema: CHECKOUT, data: { total: -1 } } }), context));
emit('pp', 'post', post.track(buildPagePing({ pageUrl: 'https://node.example/a', minXOffset: 1, maxXOffset: 10, minYOffset: 5, maxYOffset: 900 })));
emit('tr', 'post', post.track(buildEcommerceTransaction({ orderId: 'o-1', total: 59.9, tax: 9.98, currency: 'EUR', city: 'Lyon' })));
emit('ti', 'post', post.track(buildEcommerceTransactionItem({ orderId: 'o-1', sku: 'sku-42', name: 'Red shoes', price: 29.95, quantity: 2 })));
await settled(post, 'nd', 7);

const get = tracker('ndget', 'get', true);
emit('pv', 'get', get.track(buildPageView({ pageUrl: 'https://node.example/get?x=1&y=é' })));
emit('ue_valid', 'get', get.track(buildSelfDescribingEvent({ event: { schema: CHECKOUT, data: { total: 7, note: NOTE } } }), context));
await settled(get, 'ndget', 2);

// The request reaches the gateway; its answer is lost once (a dropped connection).
let attempts = 0;
const retry = tracker('ndretry', 'post', true, {
  customFetch: async (request) => {
    attempts += 1;
    const response = await fetch(request);
    if (attempts === 1) throw new Error(`answer ${response.status} lost on purpose`);
    return response;
  },
});
emit('retried', 'post', retry.track(buildStructEvent({ category: 'retry', action: 'once' })));
await settled(retry, 'ndretry', 1);
console.log(JSON.stringify({ done: true, attempts, failures }));
