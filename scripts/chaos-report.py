#!/usr/bin/env python3
"""Writes docs/chaos.md from a `make chaos` run: what the suite does, then the table of the run in
target/chaos/results.jsonl (written by tests/e2e/chaos.rs) with its date, machine and commit.

    python3 scripts/chaos-report.py [results.jsonl] [--out docs/chaos.md]
"""

import argparse
import datetime
import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

INTRO = """# Chaos: real faults on real processes

The promise — every order ends CONFIRMED or cleanly compensated, nothing lost or doubled — is
tested with real faults on real processes. Each scenario in `tests/e2e/chaos.rs` runs a stream of
mixed orders (90 % in stock with a good card, 5 % out of stock, 5 % declined, each with a
request id the stream retries with while the order service is unreachable), injects its fault,
waits until every order is terminal and then runs `ordermesh check` against the test's services:
inventory conserved, no double charge, every cancelled-and-charged order refunded exactly once,
labels of cancelled orders cancelled, one notification per order, gap-free event streams. Late
is allowed, lost is not: the check is repeated for up to a minute (a notification whose delivery
a connection reset cut is redelivered after the consumer's 30 s ack wait), and whatever it still
finds then fails the scenario.

The harness (`testkit/src/chaos.rs`) owns what it breaks: a private nats-server (store kept
across restarts), a private PostgreSQL (initdb in a temp dir, crash-restarted), a private Redis,
and `FaultProxy`, a TCP proxy put in front of a service or of NATS that adds latency with jitter
(a delay line, so concurrent streams are not serialised), caps bandwidth, blackholes, or resets
connections (RST) at random. Processes are killed with SIGKILL or hung with SIGSTOP/SIGCONT.
Crashes at exact points of the saga (before a call, after its answer, after its checkpoint) are
tested apart, in `tests/e2e/saga_engine.rs`.

```sh
make chaos    # every scenario, then this page is written again from the run
```

`make test` runs the quick subset: kill -9 of payment, SIGSTOP of payment beyond its step
timeout, nats-server killed and restarted.
"""

NOTES = """
"Good orders not confirmed" counts orders in stock with a good card that were cancelled: only
the hang scenario may have them (payment's step timed out; their stock was released and any
charge refunded). Recovery is the time from the end of the fault until the last order created
before it was terminal and `ordermesh check` clean (under overload: until the queue had drained).
The slowest notification is the longest time from an order's end to its customer's
notification. The services run as debug builds, and the scenarios share the two cores, two at a
time.
"""


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith("model name")), "unknown CPU")
    mem = int(next(l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")))
    return f"{os.cpu_count()} cores ({model}), {mem // 1024 // 1024} GiB"


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return f"{head}{' + uncommitted changes' if dirty else ''}" if head else "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", type=Path, default=ROOT / "target/chaos/results.jsonl")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/chaos.md")
    args = parser.parse_args()
    if not args.results.exists():
        raise SystemExit(f"{args.results} not found: run the chaos tests first (make chaos)")
    rows = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    if not rows:
        raise SystemExit(f"{args.results} is empty: did every scenario fail before its verdict?")
    when = datetime.datetime.fromtimestamp(args.results.stat().st_mtime).date().isoformat()
    table = [
        f"## Last run\n\n{when}, commit {commit()}, {machine()}; debug build, 20 orders/s streams (overload: 200/s).\n",
        "| scenario | sent | confirmed | cancelled | failed | stuck | not accepted | good orders not confirmed | invariant violations | recovery (s) | slowest notification (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        table.append(
            f"| {r['scenario']} | {r['sent']} | {r['confirmed']} | {r['cancelled']} | {r['failed']} | {r['stuck']} | "
            f"{r['not_accepted']} | {r['unconfirmed_normal']} | {r['violations']} | {r['recovery_s']:.1f} | {r.get('notification_delay_max_s', 0):.1f} |"
        )
    args.out.write_text(INTRO + "\n" + "\n".join(table) + "\n" + NOTES)
    print(f"wrote {args.out} ({len(rows)} scenarios)")


if __name__ == "__main__":
    main()
