#!/usr/bin/env python3
"""Snowplow's Python tracker (PyPI `snowplow-tracker`) pointed at a gateway by its documented
Emitter options (endpoint, protocol, port, method), driven by tests/snowplow.rs.

Prints one JSON line per tracked event: {"sdk", "kind", "method", "eid"}, then {"done": ...}.
Events: over POST a page view, a structured event, a valid and an invalid self-describing event
(com.acme/checkout/jsonschema/1-0-0, with a com.acme/user context), a page view with
an invalid context; over GET a page view and a
structured event; and one POST whose first answer is lost (the request reached the gateway, the
tracker saw a connection error) so the tracker retries the same eid.
"""
import json
import sys
import threading

try:
    import requests
    from snowplow_tracker import (Emitter, PageView, SelfDescribing, SelfDescribingJson,
                                  StructuredEvent, Subject, Tracker)
except ImportError as e:
    print(f"MISSING-SDK: {e}; install with: pip install snowplow-tracker==1.1.0", file=sys.stderr)
    sys.exit(3)

host, port = sys.argv[1].rsplit(":", 1)
port = int(port)
CHECKOUT = "iglu:com.acme/checkout/jsonschema/1-0-0"
USER = "iglu:com.acme/user/jsonschema/1-0-0"
# Text whose base64 holds the characters the URL-safe and standard alphabets differ in.
NOTE = "~~~???~~>>>??~"
failures = []


def emitter(method, session=None, done=None):
    def on_success(events):
        if done is not None:
            done.set()

    def on_failure(ok, events):
        failures.append(len(events))

    return Emitter(host, protocol="http", port=port, method=method, batch_size=1,
                   on_success=on_success, on_failure=on_failure, session=session,
                   max_retry_delay_seconds=2)


def emit(kind, method, eid):
    print(json.dumps({"sdk": "python", "kind": kind, "method": method, "eid": eid}), flush=True)


subject = Subject().set_user_id("py-user-1").set_platform("srv").set_lang("de-DE")
context = [SelfDescribingJson(USER, {"tier": "pro"})]

post = Tracker("py", emitter("post"), subject=subject, app_id="py-app")
emit("pv", "post", post.track(PageView(page_url="https://py.example/home", page_title="Home",
                                       referrer="https://ref.example/")))
emit("se", "post", post.track(StructuredEvent(category="shop", action="add", label="red shoes",
                                              property_="sku-42", value=2.5)))
emit("ue_valid", "post", post.track(SelfDescribing(
    SelfDescribingJson(CHECKOUT, {"total": 59.9, "currency": "EUR", "note": NOTE}), context=context)))
emit("ue_invalid", "post", post.track(SelfDescribing(
    SelfDescribingJson(CHECKOUT, {"total": "a lot"}))))
emit("ctx_invalid", "post", post.track(PageView(
    page_url="https://py.example/ctx", context=[SelfDescribingJson(USER, {"tier": "gold"})])))
post.flush()

get = Tracker("pyget", emitter("get"), subject=subject, app_id="py-app")
emit("pv", "get", get.track(PageView(page_url="https://py.example/get", page_title="Über")))
emit("se", "get", get.track(StructuredEvent(category="mail", action="open", value=1)))
get.flush()


class LoseFirstAnswer(requests.Session):
    """The request reaches the gateway; its answer is lost once (a dropped connection)."""
    attempts = 0

    def post(self, *args, **kwargs):
        LoseFirstAnswer.attempts += 1
        response = super().post(*args, **kwargs)
        if LoseFirstAnswer.attempts == 1:
            raise requests.ConnectionError(f"answer {response.status_code} lost on purpose")
        return response


delivered = threading.Event()
retried = Tracker("pyretry", emitter("post", LoseFirstAnswer(), delivered), subject=subject,
                  app_id="py-app")
emit("retried", "post", retried.track(StructuredEvent(category="retry", action="once")))
retried.flush()
if not delivered.wait(30):
    print("the retried event was never delivered", file=sys.stderr)
    sys.exit(1)
print(json.dumps({"done": True, "attempts": LoseFirstAnswer.attempts,
                  "failed_batches": len(failures)}), flush=True)
