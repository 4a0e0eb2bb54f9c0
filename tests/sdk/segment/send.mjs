// Sends a fixed mix of Segment calls through @segment/analytics-node (tests/segment.rs).
//
// Usage: node send.mjs HOST WRITE_KEY. The SDK is pointed at the gateway by its documented `host`
// option. Prints {"statuses": [...], "errors": [...]} as JSON: every HTTP status the SDK received
// and every delivery error it reported.
let Analytics;
try {
  ({ Analytics } = await import('@segment/analytics-node'));
} catch (e) {
  console.error(`MISSING-SDK: ${e.message}; install with: (cd tests/sdk/segment && npm ci)`);
  process.exit(3);
}

const [host, writeKey] = process.argv.slice(2);
const statuses = [];
const errors = [];
const analytics = new Analytics({ writeKey, host, flushAt: 1, maxRetries: 3 });
analytics.on('http_response', (r) => statuses.push(r.status));
analytics.on('error', (e) => errors.push(String(e.reason ?? e.message ?? e)));

// Resolves once the SDK has settled the call (delivered or failed).
const call = (method, params) =>
  new Promise((resolve) => {
    analytics[method](params, (err) => {
      if (err) errors.push(`${method} ${params.messageId}: ${err.reason ?? err}`);
      resolve();
    });
  });

const userId = 'node-user';
// A retried message: delivered, then sent again with the same messageId in a new request.
const dup = { userId, event: 'Video Played', properties: { video_id: 'v-dup' }, messageId: 'node-dup' };
await call('track', dup);
await call('track', dup);
await Promise.all([
  // Mapped by the table, by the naming rule, the generic schema; every other call.
  call('track', {
    userId, event: 'Order Completed', messageId: 'node-1',
    properties: { order_id: 'node-o-1', currency: 'EUR', total_minor: 1999,
                  items: [{ sku: 'sku-1', quantity: 1, price_minor: 1999 }] },
  }),
  call('track', { userId, event: 'Page View', properties: { url: 'https://shop.example/node' }, messageId: 'node-2' }),
  call('track', { userId, event: 'Video Played', properties: { video_id: 'v-1', position_s: 12.5 }, messageId: 'node-3' }),
  call('identify', { userId, traits: { email: 'node@example.com', plan: 'pro' }, messageId: 'node-4' }),
  call('page', { userId, category: 'Docs', name: 'Pricing', properties: { url: 'https://shop.example/pricing' }, messageId: 'node-5' }),
  call('screen', { userId, name: 'Checkout', properties: { step: 2 }, messageId: 'node-6' }),
  call('group', { userId, groupId: 'node-group', traits: { name: 'Acme' }, messageId: 'node-7' }),
  call('alias', { userId, previousId: 'node-anon', messageId: 'node-8' }),
  // Invalid: the mapped purchase schema wants more; page_view wants an http(s) URL.
  call('track', { userId, event: 'Order Completed', properties: { order_id: 'node-o-2' }, messageId: 'node-bad-1' }),
  call('track', { userId, event: 'Page View', properties: { url: 'not-a-url' }, messageId: 'node-bad-2' }),
]);
await analytics.closeAndFlush({ timeout: 20000 });
console.log(JSON.stringify({ statuses, errors }));
