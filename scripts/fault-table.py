#!/usr/bin/env python3
"""Turns target/fault-audit.jsonl (written by tests/fault.rs) into the Markdown table of RELIABILITY.md."""
import json
import sys

path = sys.argv[1] if len(sys.argv) > 1 else "target/fault-audit.jsonl"
rows = [json.loads(line) for line in open(path) if line.strip()]
print("| scenario | faults | events sent | acked (2xx) | acked-but-missing | duplicates | unacked-but-present | responses |")
print("|---|---:|---:|---:|---:|---:|---:|---|")
for r in rows:
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
    repairs = f" (+{r['broker_repairs']} broker repairs)" if r.get("broker_repairs") else ""
    if r.get("gateway_restarts"):
        repairs += f" (+{r['gateway_restarts']} gateway restarts)"
    print(f"| {r['scenario']}{repairs} | {r['faults']} | {r['sent']} | {r['acked']} | **{r['acked_but_missing']}** | "
          f"{r['duplicates']} | {r['unacked_but_present']} | {statuses} |")
tot = {k: sum(r[k] for r in rows) for k in ("faults", "sent", "acked", "acked_but_missing", "duplicates", "unacked_but_present")}
print(f"| **total** | {tot['faults']} | {tot['sent']} | {tot['acked']} | **{tot['acked_but_missing']}** | {tot['duplicates']} | {tot['unacked_but_present']} | |")
