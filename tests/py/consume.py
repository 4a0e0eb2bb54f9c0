#!/usr/bin/env python3
"""Independent consumer for end-to-end tests.

Reads topics with confluent-kafka (librdkafka's Python binding, not our Rust client) and decodes
every message with thriftpy2 from thrift/eventpipe.thrift alone (not our generated code), then
prints one JSON object per line: {"topic", "partition", "offset", "key", "headers", "value"}.

Tansu's memory engine reports a stale high watermark, so this reads until it has seen --expect
messages (if given) and then until the topics are idle for --idle seconds, or until --timeout.
"""
import argparse
import json
import os
import sys
import time

try:
    from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING
    import thriftpy2
    from thriftpy2.protocol import TCompactProtocolFactory
    from thriftpy2.utils import deserialize
except ImportError as e:  # the Rust test turns this into a failure with instructions
    print(f"MISSING-PYTHON-DEPS: {e}; install with: pip install confluent-kafka thriftpy2", file=sys.stderr)
    sys.exit(3)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IDL = thriftpy2.load(os.path.join(ROOT, "thrift", "eventpipe.thrift"), module_name="eventpipe_thrift")
K = IDL.TokenKind


def tokens_to_json(tokens):
    """Rebuild JSON from the pre-order token list (see the IDL comment)."""
    pos = 0

    def value():
        nonlocal pos
        t = tokens[pos]
        pos += 1
        if t.kind == K.NULL_VALUE:
            return None
        if t.kind == K.FALSE_VALUE:
            return False
        if t.kind == K.TRUE_VALUE:
            return True
        if t.kind == K.INT:
            return t.int_value
        if t.kind == K.UINT:
            return t.int_value & 0xFFFFFFFFFFFFFFFF
        if t.kind == K.DOUBLE:
            return float(t.double_value)
        if t.kind == K.STRING:
            return t.string_value
        if t.kind == K.ARRAY:
            return [value() for _ in range(t.length)]
        if t.kind == K.OBJECT:
            out = {}
            for _ in range(t.length):
                key = tokens[pos].key
                out[key] = value()
            return out
        raise ValueError(f"unknown token kind {t.kind}")

    v = value()
    if pos != len(tokens):
        raise ValueError(f"{len(tokens) - pos} trailing tokens")
    return v


def enrichment(e):
    return {k: getattr(e, k) for k in
            ("received_at_ms", "client_ip", "user_agent", "collector_host", "collector_version", "sent_at", "origin")}


AUDIT_FIELDS = ("collector_host", "boot_id", "seq", "window_start_ms", "window_ms", "topic",
                "events_kafka", "events_replayed", "events_pending", "bytes", "dead_letters",
                "requests_refused", "published_at_ms", "collector_version")


def decode(payload, dead_letter, audit=False):
    if audit:
        a = deserialize(IDL.AuditRecord(), payload, TCompactProtocolFactory())
        return {k: getattr(a, k) for k in AUDIT_FIELDS}
    if dead_letter:
        d = deserialize(IDL.DeadLetter(), payload, TCompactProtocolFactory())
        return {
            "reason": d.reason, "path": d.path, "message": d.message,
            "original": d.original.decode("utf-8", "replace") if isinstance(d.original, bytes) else d.original,
            "truncated": d.truncated, "event_id": d.event_id, "schema": d.schema, "index": d.index,
            "http_status": d.http_status, "request_id": d.request_id,
            "enrichment": enrichment(d.enrichment),
        }
    e = deserialize(IDL.Event(), payload, TCompactProtocolFactory())
    return {
        "event_id": e.event_id, "schema": f"{e.schema_name}/{e.schema_major}", "ts": e.ts,
        "context": tokens_to_json(e.context.tokens), "data": tokens_to_json(e.data.tokens),
        "enrichment": enrichment(e.enrichment),
    }


def schema_matches(header, wanted):
    """The record's `schema` header (name/major) is `wanted`, or of name `wanted`."""
    if header is None:
        return False
    return header == wanted or ("/" not in wanted and header.split("/")[0] == wanted)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", action="append", required=True)
    ap.add_argument("--dead-letter-topic", default="")
    ap.add_argument("--audit-topic", default="", help="messages of this topic are AuditRecords")
    ap.add_argument("--expect", type=int, default=0)
    ap.add_argument("--idle", type=float, default=2.0)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--ids-only", action="store_true", help="print only topic and event_id header")
    ap.add_argument("--want", action="append", default=[], help="keep reading until this event_id is seen")
    ap.add_argument("--want-file", help="file of event_ids (one per line) to wait for")
    ap.add_argument("--schema", default="",
                    help="only records whose schema header is NAME/MAJOR, or of NAME (a topic "
                         "shared by several schemas)")
    args = ap.parse_args()

    # Tansu's SQLite engine can take over a minute to answer a fetch on a large topic: a slow
    # answer must not be abandoned and re-sent.
    c = Consumer({"bootstrap.servers": args.brokers, "group.id": f"e2e-{os.getpid()}",
                  "enable.auto.commit": False, "enable.partition.eof": False,
                  "socket.timeout.ms": 300000})
    md = c.list_topics(timeout=10)
    parts = []
    for t in args.topic:
        if t not in md.topics or md.topics[t].error is not None:
            print(f"topic {t} missing", file=sys.stderr)
            sys.exit(2)
        parts += [TopicPartition(t, p, OFFSET_BEGINNING) for p in md.topics[t].partitions]
    c.assign(parts)
    want = set(args.want)
    if args.want_file:
        with open(args.want_file) as f:
            want |= {line.strip() for line in f if line.strip()}
    seen = 0
    start = last = time.time()
    while time.time() - start < args.timeout:
        # Duplicates make a message count unreliable: with --want, wait for the ids themselves.
        if seen >= args.expect and not want and time.time() - last >= args.idle:
            break
        if want and time.time() - start >= args.timeout:
            break
        m = c.poll(0.2)
        if m is None:
            continue
        if m.error():
            print(f"consume error: {m.error()}", file=sys.stderr)
            continue
        last = time.time()
        headers = {k: (v.decode() if v is not None else None) for k, v in (m.headers() or [])}
        if args.schema and not schema_matches(headers.get("schema"), args.schema):
            continue
        seen += 1
        want.discard(headers.get("event_id"))
        if args.ids_only:
            print(m.topic(), headers.get("event_id", ""), flush=False)
            continue
        print(json.dumps({
            "topic": m.topic(), "partition": m.partition(), "offset": m.offset(),
            "key": m.key().decode() if m.key() is not None else None,
            "headers": headers,
            "value": decode(m.value(), m.topic() == args.dead_letter_topic,
                            m.topic() == args.audit_topic),
        }), flush=True)
    sys.stdout.flush()
    c.close()


if __name__ == "__main__":
    main()
