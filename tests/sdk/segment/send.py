#!/usr/bin/env python3
"""Sends a fixed mix of Segment calls through segment-analytics-python (tests/segment.rs).

Usage: send.py HOST WRITE_KEY. The SDK is pointed at the gateway by its documented `host` option
and gzips its batches. Prints {"statuses": [...], "errors": [...]} as JSON: every HTTP status the
SDK received and every error it reported through on_error.
"""
import json
import sys

try:
    from segment.analytics import Client
    from segment.analytics import request as seg_request
except ImportError as e:
    print(f"MISSING-SDK: {e}; install with: pip install segment-analytics-python==2.4.0", file=sys.stderr)
    sys.exit(3)

host, write_key = sys.argv[1], sys.argv[2]
statuses, errors = [], []
# What the SDK's own HTTP session received (its module-level requests.Session).
seg_request._session.hooks["response"].append(lambda r, *a, **k: statuses.append(r.status_code))
client = Client(write_key, host=host, gzip=True, max_retries=3,
                on_error=lambda e, batch: errors.append(f"{e} ({len(batch)} messages)"))

user = "py-user"
# A retried message: sent, delivered, then sent again with the same messageId in a new batch.
client.track(user, "Video Played", {"video_id": "v-dup"}, message_id="py-dup")
client.flush()
client.track(user, "Video Played", {"video_id": "v-dup"}, message_id="py-dup")
# Mapped by the table, by the naming rule, the generic schema; every other call.
client.track(user, "Order Completed", {"order_id": "py-o-1", "currency": "EUR", "total_minor": 1999,
             "items": [{"sku": "sku-1", "quantity": 1, "price_minor": 1999}]}, message_id="py-1")
client.track(user, "Page View", {"url": "https://shop.example/py"}, message_id="py-2")
client.track(user, "Video Played", {"video_id": "v-1", "position_s": 12.5}, message_id="py-3")
client.identify(user, {"email": "py@example.com", "plan": "pro"}, message_id="py-4")
client.page(user, "Docs", "Pricing", {"url": "https://shop.example/pricing"}, message_id="py-5")
client.screen(user, "App", "Checkout", {"step": 2}, message_id="py-6")
client.group(user, "py-group", {"name": "Acme"}, message_id="py-7")
client.alias("py-anon", user, message_id="py-8")
# Invalid: the mapped purchase schema wants more; page_view wants an http(s) URL.
client.track(user, "Order Completed", {"order_id": "py-o-2"}, message_id="py-bad-1")
client.track(user, "Page View", {"url": "not-a-url"}, message_id="py-bad-2")
client.flush()
client.shutdown()
print(json.dumps({"statuses": statuses, "errors": errors}))
