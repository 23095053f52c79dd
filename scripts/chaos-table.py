#!/usr/bin/env python3
"""Prints the chaos table (markdown) from target/chaos/results.jsonl, written by tests/chaos.rs."""

import datetime
import json
import os
import sys
from pathlib import Path

path = Path(sys.argv[1] if len(sys.argv) > 1 else "target/chaos/results.jsonl")
if not path.exists():
    sys.exit(f"{path} not found: run the chaos tests first (make chaos)")
rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
mem = int(next(l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")))
print(f"{datetime.date.today().isoformat()}, {os.cpu_count()} cores, {mem // 1024 // 1024} GiB, debug build, 20 orders/s streams (overload: 200/s)\n")
print("| scenario | sent | confirmed | cancelled | failed | stuck | not accepted | good orders not confirmed | invariant violations | recovery (s) | slowest notification (s) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    print(
        f"| {r['scenario']} | {r['sent']} | {r['confirmed']} | {r['cancelled']} | {r['failed']} | {r['stuck']} | "
        f"{r['not_accepted']} | {r['unconfirmed_normal']} | {r['violations']} | {r['recovery_s']:.1f} | {r.get('notification_delay_max_s', 0):.1f} |"
    )
