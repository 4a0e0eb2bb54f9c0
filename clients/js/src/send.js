// Talking to the gateway: one bundle per request, and what its answer means for each event.
//
// Requests are CORS-simple (`Content-Type: text/plain`, the write key as the `key` query
// parameter): no preflight, and `navigator.sendBeacon` sends the very same request. The gateway
// reads text/plain as JSON and exposes `Retry-After` to scripts.

/** The 64 KiB a page may have in flight in keepalive requests (fetch keepalive and sendBeacon). */
export const KEEPALIVE_BUDGET = 64 * 1024;

const encoder = new TextEncoder();

export function byteLength(s) {
  return encoder.encode(s).length;
}

/** The request URL: the endpoint, plus the write key as `key` when one is set. */
export function url(endpoint, writeKey) {
  if (!writeKey) return endpoint;
  const sep = endpoint.includes("?") ? "&" : "?";
  return `${endpoint}${sep}key=${encodeURIComponent(writeKey)}`;
}

/** The bundle's JSON: its events, the page's context and the drop count when there is one. */
export function bundle(recs, context, dropped) {
  const ctx = dropped > 0 ? { ...context, tracker: { ...(context.tracker || {}), dropped } } : context;
  return JSON.stringify({
    sent_at: new Date().toISOString(),
    context: ctx,
    events: recs.map((r) => r.event),
  });
}

/** `Retry-After` in milliseconds (delta-seconds or an HTTP date), or 0. */
export function retryAfterMs(headers, now) {
  const v = headers && headers.get("retry-after");
  if (!v) return 0;
  const secs = Number(v);
  if (Number.isFinite(secs)) return Math.max(0, secs * 1000);
  const at = Date.parse(v);
  return Number.isFinite(at) ? Math.max(0, at - now) : 0;
}

/**
 * What an answer means for the batch `recs`:
 * - `done`: ids to remove (accepted or rejected), `rejected` entries, counts;
 * - `retry`: ids to keep and resend later (the whole batch, or only `failed` ones on a 500
 *   `dead_letter_refused`), with `retryAfter` (ms) as the floor of the wait;
 * - `split`: 413, send the batch in halves (a lone event: rejected).
 * 401/403 are `retry` with `auth: true` (the caller waits its longest backoff).
 */
export function classify(status, body, recs, retryAfter) {
  const ids = recs.map((r) => r.id);
  const rejectedOf = (list) =>
    (Array.isArray(list) ? list : []).map((r) => ({
      event_id: r.event_id ?? (recs[r.index] && recs[r.index].id),
      reason: r.reason,
      path: r.path,
      message: r.message,
    }));
  if (status === 200 || status === 202) {
    return {
      kind: "done",
      remove: ids,
      retry: [],
      accepted: Number(body && body.accepted) || 0,
      spooled: Number(body && body.spooled) || 0,
      rejected: rejectedOf(body && body.rejected),
    };
  }
  if (status === 500 && body && body.error === "dead_letter_refused" && Array.isArray(body.failed)) {
    const failed = new Set(
      body.failed.map((f) => (recs[f.index] ? recs[f.index].id : f.event_id)).filter(Boolean),
    );
    return {
      kind: "partial",
      remove: ids.filter((id) => !failed.has(id)),
      retry: ids.filter((id) => failed.has(id)),
      accepted: Number(body.accepted) || 0,
      spooled: Number(body.spooled) || 0,
      rejected: rejectedOf(body.rejected),
      retryAfter,
    };
  }
  if (status === 413) return { kind: "split" };
  if (status === 0 || status === 408 || status === 429 || status >= 500) {
    return { kind: "retry", remove: [], retry: ids, retryAfter };
  }
  // 401/403: the write key is refused (unknown, rotated, a keys-file reload, an origin missing
  // from its list). A deployment fix makes the same bundle acceptable: keep it and retry at the
  // longest backoff (`auth` marks it for the caller).
  if (status === 401 || status === 403) {
    return { kind: "retry", remove: [], retry: ids, retryAfter, auth: true };
  }
  // Any other 4xx (400, 415, ...): the request is malformed (a client bug); resending the same
  // bundle would be refused again.
  const reason = (body && body.error) || `http_${status}`;
  return {
    kind: "done",
    remove: ids,
    retry: [],
    accepted: 0,
    spooled: 0,
    rejected: ids.map((id) => ({ event_id: id, reason, message: body && body.message })),
  };
}

/**
 * Full-jitter exponential backoff: uniform in [0, min(max, base * 2^failures)], then at least
 * `retryAfter` (the server's floor), and never more than `max`.
 */
export function backoff(failures, base, max, retryAfter, random = Math.random) {
  const cap = Math.min(max, base * 2 ** Math.min(failures, 30));
  const jitter = random() * cap;
  return Math.min(max, Math.max(jitter, retryAfter || 0));
}

/** POSTs a bundle; resolves to {status, body, retryAfter} (status 0: network error). */
export async function post(endpoint, writeKey, body, keepalive) {
  const started = Date.now();
  try {
    const res = await fetch(url(endpoint, writeKey), {
      method: "POST",
      headers: { "Content-Type": "text/plain" },
      body,
      keepalive,
      credentials: "omit",
      mode: "cors",
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
