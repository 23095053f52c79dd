#!/usr/bin/env python3
"""`make bench`: the highest sustained order rate of the local mesh, and what it costs.

Starts a fresh mesh (release binaries, a namespace of its own, so fresh databases and streams),
then:
  1. measures the machine's raw durable-write bound with pgbench running a saga-step-like
     transaction (update the saga row, append a step record and an outbox row, commit with
     fsync), so the result can be read as a ratio; once before the search and once after it,
     so a machine that changed speed meanwhile shows;
  2. searches for the highest offered rate at which `ordermesh load` (open loop) keeps p99
     end-to-end latency under --p99-ms and the success ratio at or above --success for
     --step-seconds: it raises the rate by --growth until a step fails (or, if the first step
     fails, lowers it until one passes), then bisects;
  3. for every step, reads from /proc the CPU time of every process of the system (services,
     PostgreSQL, nats-server, Redis), the peak RSS of each service, and the machine's busy and
     iowait shares and disk writes per order.
Orders are followed by their outcome events on NATS (`--follow events`, so the figures are the
saga's own cost); `--follow watch` opens a WatchOrder stream per order instead.
Writes bench/results/<date>.json and bench/results/<date>.png (latency percentiles against the
offered rate; <date>-watch.* for a watch run) and prints a table. Needs `make infra` and `cargo build --release` (the Makefile
target does both).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release"
SERVICES = ["order", "inventory", "payment", "shipping", "notification"]
# Ports well away from `make up` (50051...) so both can run at once.
GRPC_BASE = 17100
ADMIN_BASE = 17200
# The lowest rate the search steps down to when even its start fails.
MIN_RATE = 5
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
INFRA = {"postgres": "postgresql", "nats-server": "nats-server", "redis-server": "redis"}


def log(msg: str) -> None:
    print(f"==> {msg}", file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--step-seconds", type=int, default=60, help="measured seconds per rate (default 60)")
    p.add_argument("--warmup-seconds", type=int, default=10, help="unmeasured seconds before each step")
    p.add_argument("--start-rate", type=float, default=100.0, help="first offered rate, orders/s")
    p.add_argument("--growth", type=float, default=1.5, help="rate multiplier while steps pass")
    p.add_argument("--max-rate", type=float, default=5000.0, help="never offer more than this")
    p.add_argument("--bisect", type=int, default=2, help="bisection steps after the first failure")
    p.add_argument("--p99-ms", type=float, default=1000.0, help="end-to-end p99 a step must stay under")
    p.add_argument("--success", type=float, default=0.999, help="success ratio a step must reach")
    p.add_argument("--follow", choices=["events", "watch"], default="events",
                   help="how the generator sees an order finish: its outcome event on NATS (default; the saga's own cost) "
                        "or a WatchOrder stream per order (adds the order service's watch work)")
    p.add_argument("--worker-threads", type=int, default=None,
                   help="runtime threads per service (ordermesh up --worker-threads); default: what "
                        "ordermesh up picks, a quarter of the cores, at least 1 (1: current-thread)")
    p.add_argument("--pgbench-seconds", type=int, default=20, help="length of the raw-bound run")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results directory")
    args = p.parse_args()
    for name in ("step_seconds", "pgbench_seconds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.worker_threads is not None and not 1 <= args.worker_threads <= 256:
        p.error("--worker-threads must be 1-256 (1: the current-thread runtime)")
    if not 1.0 < args.growth <= 4.0:
        p.error("--growth must be above 1 and at most 4")
    if not 0.0 < args.success <= 1.0:
        p.error("--success must be in (0, 1]")
    if args.start_rate <= 0 or args.max_rate < args.start_rate:
        p.error("--start-rate must be positive and at most --max-rate")
    return args


# --- /proc -------------------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(comm, parent pid, CPU ticks incl. reaped children) of a process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is state (field 3); utime, stime, cutime, cstime are fields 14-17.
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    return comm, int(fields[1]), ticks


def processes() -> dict[int, tuple[str, int, int]]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (s := proc_stat(int(entry))):
            out[int(entry)] = s
    return out


def group_of(pid: int, comm: str, ppid: int, mesh_pid: int) -> str | None:
    if ppid == mesh_pid and comm.startswith("ordermesh-"):
        # comm is cut at 15 characters: "ordermesh-inven".
        short = comm.removeprefix("ordermesh-")
        return next((s for s in SERVICES if s.startswith(short)), short)
    for name, group in INFRA.items():
        if comm.startswith(name):
            return group
    return None


def cpu_by_group(mesh_pid: int) -> dict[str, float]:
    """CPU seconds so far of each service and of PostgreSQL, nats-server and Redis (all processes)."""
    totals: dict[str, float] = {}
    for pid, (comm, ppid, ticks) in processes().items():
        group = group_of(pid, comm, ppid, mesh_pid)
        if group:
            totals[group] = totals.get(group, 0.0) + ticks / CLK_TCK
    return totals


def machine_ticks() -> tuple[int, int, int]:
    """(busy, iowait, total) CPU ticks of the whole machine so far, from /proc/stat."""
    user, nice, system, idle, iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    busy = user + nice + system + irq + softirq + steal
    return busy, iowait, busy + idle + iowait


def disk_sectors_written() -> int:
    """512-byte sectors written so far to the machine's whole disks (not their partitions)."""
    total = 0
    for line in Path("/proc/diskstats").read_text().splitlines():
        f = line.split()
        if len(f) > 9 and Path(f"/sys/block/{f[2]}/device").exists():
            total += int(f[9])
    return total


def postgres_cpu_by_database(namespace: str) -> dict[str, float]:
    """CPU seconds so far of the PostgreSQL backends serving each of the mesh's databases (the
    pools keep their connections, so a difference between two readings is that database's
    share; background processes such as autovacuum are not in it)."""
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-tAc",
         f"SELECT pid, datname FROM pg_stat_activity WHERE datname LIKE '{namespace}\\_%'"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    totals: dict[str, float] = {}
    for line in out.splitlines():
        pid, _, datname = line.partition("|")
        if pid.isdigit() and (stat := proc_stat(int(pid))):
            service = datname.removeprefix(f"{namespace}_")
            totals[service] = totals.get(service, 0.0) + stat[2] / CLK_TCK
    return totals


def peak_rss_mib(mesh_pid: int) -> dict[str, float]:
    """VmHWM (peak resident set) of each service process, MiB."""
    out = {}
    for pid, (comm, ppid, _) in processes().items():
        group = group_of(pid, comm, ppid, mesh_pid)
        if group in SERVICES:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            if m := re.search(r"^VmHWM:\s+(\d+) kB", status, re.M):
                out[group] = round(int(m.group(1)) / 1024, 1)
    return out


# --- the mesh ----------------------------------------------------------------------------------


def service_env(namespace: str) -> dict[str, str]:
    env = dict(os.environ)
    env["ORDERMESH_NAMESPACE"] = namespace
    env["ORDERMESH_LOG__FORMAT"] = "json"
    env.setdefault("RUST_LOG", "warn")
    for i, svc in enumerate(SERVICES):
        env[f"ORDERMESH_ENDPOINTS__{svc.upper()}"] = f"http://127.0.0.1:{GRPC_BASE + i}"
    return env


def drop_databases(namespace: str) -> None:
    for svc in SERVICES:
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f'DROP DATABASE IF EXISTS "{namespace}_{svc}" WITH (FORCE)'],
            check=True,
            stdout=subprocess.DEVNULL,
        )


class JetStream:
    """Requests to JetStream's JSON API over the raw NATS protocol (no client library needed)."""

    def __init__(self) -> None:
        import socket
        from urllib.parse import urlparse

        url = urlparse(os.environ.get("ORDERMESH_NATS__URL", "nats://127.0.0.1:4222").split(",")[0].strip())
        self.conn = socket.create_connection((url.hostname or "127.0.0.1", url.port or 4222), timeout=5)
        self.buffer = b""
        self._line()  # INFO
        self.conn.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB _INBOX.bench 1\r\n')

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.conn.recv(65536)
            if not chunk:
                raise OSError("nats-server closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def request(self, subject: str, body: dict | None = None) -> dict:
        payload = json.dumps(body).encode() if body is not None else b""
        self.conn.sendall(f"PUB {subject} _INBOX.bench {len(payload)}\r\n".encode() + payload + b"\r\n")
        while True:
            line = self._line()
            if line.startswith(b"PING"):
                self.conn.sendall(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                raise OSError(line.decode())
            elif line.startswith(b"MSG"):
                size = int(line.split()[-1])
                while len(self.buffer) < size + 2:
                    self.buffer += self.conn.recv(65536)
                data, self.buffer = self.buffer[:size], self.buffer[size + 2:]
                return json.loads(data)

    def streams(self, namespace: str) -> list[str]:
        names = self.request("$JS.API.STREAM.NAMES", {"offset": 0}).get("streams") or []
        return sorted(n for n in names if n.startswith(f"{namespace.upper()}_"))

    def close(self) -> None:
        self.conn.close()


def delete_streams(namespace: str) -> None:
    """Deletes the mesh's JetStream streams."""
    try:
        js = JetStream()
        for stream in js.streams(namespace):
            js.request(f"$JS.API.STREAM.DELETE.{stream}")
        js.close()
    except OSError as e:
        log(f"could not delete the bench's streams: {e}")


def stream_sequences(namespace: str) -> dict[str, int]:
    """Messages ever stored per stream of the mesh (the last sequence), by name without the
    namespace: the difference over a step is what the step published into each stream."""
    try:
        js = JetStream()
        seqs = {}
        for stream in js.streams(namespace):
            info = js.request(f"$JS.API.STREAM.INFO.{stream}")
            seqs[stream.removeprefix(f"{namespace.upper()}_")] = int(info.get("state", {}).get("last_seq", 0))
        js.close()
        return seqs
    except OSError as e:
        log(f"could not read the streams: {e}")
        return {}


def wal_bytes() -> int | None:
    """WAL the whole cluster has written (pg_stat_wal, PostgreSQL 14+); None where unreadable."""
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-tAc", "SELECT wal_bytes FROM pg_stat_wal"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return int(out) if out.isdigit() else None


def worker_threads(args) -> int:
    """The runtime threads each service ran with: --worker-threads, or what `ordermesh up` picks."""
    if args.worker_threads is not None:
        return args.worker_threads
    return int(os.environ.get("ORDERMESH_WORKER_THREADS") or max(1, (os.cpu_count() or 1) // 4))


def start_mesh(namespace: str, logfile, threads: int) -> subprocess.Popen:
    mesh = subprocess.Popen(
        [str(BIN / "ordermesh"), "up", "--bin-dir", str(BIN), "--grpc-base-port", str(GRPC_BASE), "--admin-base-port", str(ADMIN_BASE),
         "--worker-threads", str(threads)],
        env=service_env(namespace),
        stdout=subprocess.PIPE,
        stderr=logfile,
        text=True,
    )
    assert mesh.stdout is not None
    for line in mesh.stdout:
        logfile.write(line)
        if "processes SERVING" in line:
            return mesh
    raise SystemExit(f"the mesh did not come up; see {logfile.name}")


def stop_mesh(mesh: subprocess.Popen) -> None:
    mesh.send_signal(signal.SIGINT)
    try:
        mesh.wait(timeout=60)
    except subprocess.TimeoutExpired:
        mesh.kill()


# --- pgbench -----------------------------------------------------------------------------------

PGBENCH_SCHEMA = """
DROP TABLE IF EXISTS saga, saga_step, outbox;
CREATE TABLE saga (order_id bigint PRIMARY KEY, step text NOT NULL, version int NOT NULL, updated_at timestamptz NOT NULL);
CREATE TABLE saga_step (id bigserial PRIMARY KEY, order_id bigint NOT NULL, step text NOT NULL, outcome text NOT NULL, at timestamptz NOT NULL);
CREATE TABLE outbox (id bigserial PRIMARY KEY, msg_id uuid NOT NULL, subject text NOT NULL, payload bytea NOT NULL, headers jsonb NOT NULL);
INSERT INTO saga SELECT g, 'reserve-inventory', 0, now() FROM generate_series(1, 100000) g;
"""

# One saga step's durable write: move the saga on, record the step, queue the next message.
PGBENCH_STEP = """\\set id random(1, 100000)
BEGIN;
UPDATE saga SET step = 'charge-payment', version = version + 1, updated_at = now() WHERE order_id = :id;
INSERT INTO saga_step (order_id, step, outcome, at) VALUES (:id, 'reserve-inventory', 'done', now());
INSERT INTO outbox (msg_id, subject, payload, headers) VALUES (gen_random_uuid(), 'saga.step.charge-payment', '\\x7b7d', '{}');
COMMIT;
"""


def pgbench_bound(seconds: int) -> dict:
    pgbench = shutil.which("pgbench") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"))), None)
    if not pgbench:
        return {"error": "pgbench not found (apt-get install postgresql-contrib)"}
    db = "ordermesh_bench_pgbench"
    psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-q"]
    subprocess.run(psql + ["-c", f"DROP DATABASE IF EXISTS {db}", "-c", f"CREATE DATABASE {db}"], check=True, stdout=subprocess.DEVNULL)
    try:
        subprocess.run(psql + ["-d", db], input=PGBENCH_SCHEMA, text=True, check=True, stdout=subprocess.DEVNULL)
        with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
            script.write(PGBENCH_STEP)
            script.flush()
            clients = 16
            run = subprocess.run(
                [str(pgbench), "-h", "127.0.0.1", "-U", "postgres", "-n", "-c", str(clients), "-j", "2", "-T", str(seconds), "-f", script.name, db],
                capture_output=True,
                text=True,
                check=True,
            )
        tps = float(re.search(r"tps = ([\d.]+)", run.stdout).group(1))
        return {"transactions_per_s": round(tps, 1), "clients": clients, "seconds": seconds, "transaction": "UPDATE saga + INSERT step + INSERT outbox, one commit"}
    finally:
        subprocess.run(psql + ["-c", f"DROP DATABASE IF EXISTS {db}"], check=False, stdout=subprocess.DEVNULL)


def commits_per_order(namespace: str) -> tuple[float | None, dict]:
    """Transactions committed per order placed (from pg_stat_database's xact_commit, which counts
    read-only transactions too): the mesh's total, and per service database."""
    names = ",".join(f"'{namespace}_{s}'" for s in SERVICES)
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-tAF", ",", "-c", f"SELECT datname, xact_commit FROM pg_stat_database WHERE datname IN ({names})"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    orders = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", f"{namespace}_order", "-tAc", "SELECT count(*) FROM sagas"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if not out or not orders.isdigit() or int(orders) == 0:
        return None, {}
    per_db = {}
    for row in out:
        name, commits = row.split(",")
        per_db[name.removeprefix(f"{namespace}_")] = round(int(commits) / int(orders), 2)
    return round(sum(per_db.values()), 1), dict(sorted(per_db.items()))


# --- the search --------------------------------------------------------------------------------


def step_orders(result: dict, warmup_seconds: int) -> float | None:
    """Completed orders a step's /proc readings cover: they were taken around the whole run,
    warm-up included, so the orders of the warm-up (sent at the same rate, left out of the
    latency figures) count too. None when nothing completed."""
    finished = result["confirmed"] + result["cancelled"] + result["failed"]
    return finished + result["offered_rate"] * warmup_seconds if finished else None


def cpu_per_order(result: dict, warmup_seconds: int) -> float | None:
    """CPU ms per completed order, all processes of the system."""
    orders = step_orders(result, warmup_seconds)
    return round(1000 * sum(result["cpu_seconds"].values()) / orders, 2) if orders else None


def run_step(rate: float, args: argparse.Namespace, namespace: str, mesh_pid: int, seed: bool) -> dict:
    cpu_before = cpu_by_group(mesh_pid)
    db_before = postgres_cpu_by_database(namespace)
    ticks_before, sectors_before = machine_ticks(), disk_sectors_written()
    wal_before, seqs_before = wal_bytes(), stream_sequences(namespace)
    load = [
        str(BIN / "ordermesh"), "load", "--json",
        "--rate", f"{rate:g}",
        "--duration", f"{args.step_seconds}s",
        "--warmup", f"{args.warmup_seconds}s",
        "--skus", "1000", "--customers", "10000",
        "--max-in-flight", "20000",
        "--follow", args.follow,
    ]
    if not seed:
        load.append("--no-seed")
    done = subprocess.run(load, env=service_env(namespace), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"ordermesh load failed at {rate:g}/s:\n{done.stderr}")
    result = json.loads(done.stdout)
    cpu_after = cpu_by_group(mesh_pid)
    cpu = {g: round(cpu_after.get(g, 0.0) - cpu_before.get(g, 0.0), 2) for g in cpu_after}
    result["cpu_seconds"] = cpu
    db_after = postgres_cpu_by_database(namespace)
    result["postgres_cpu_seconds_by_database"] = {
        d: round(db_after[d] - db_before.get(d, 0.0), 2) for d in sorted(db_after)
    }
    result["cpu_ms_per_order"] = cpu_per_order(result, args.warmup_seconds)
    # The whole machine over the step: how full the cores were, and how long they sat waiting
    # on the disk (fsync stalls are what break the tail first on a small VM).
    busy, iowait, total = (a - b for a, b in zip(machine_ticks(), ticks_before))
    result["machine_busy_pct"] = round(100 * busy / total, 1) if total else None
    result["machine_iowait_pct"] = round(100 * iowait / total, 1) if total else None
    orders = step_orders(result, args.warmup_seconds)
    written = (disk_sectors_written() - sectors_before) * 512 / 1024
    result["disk_kib_written_per_order"] = round(written / orders, 1) if orders else None
    # WAL is the cluster's (every service database shares this PostgreSQL): what the mesh's
    # commits cost the log; the split per database is not measurable from pg_stat_wal.
    wal_after = wal_bytes()
    result["wal_kib_per_order"] = (
        round((wal_after - wal_before) / 1024 / orders, 1) if orders and wal_before is not None and wal_after is not None else None
    )
    seqs_after = stream_sequences(namespace)
    result["jetstream_messages_per_order"] = (
        {name: round((seq - seqs_before.get(name, 0)) / orders, 2) for name, seq in sorted(seqs_after.items())} if orders else {}
    )
    e2e = result["end_to_end_latency"]
    result["passed"] = e2e["p99_ms"] < args.p99_ms and result["success_ratio"] >= args.success and result["unfinished"] == 0
    return result


def search(args: argparse.Namespace, namespace: str, mesh_pid: int) -> list[dict]:
    steps: list[dict] = []

    def step(rate: float) -> bool:
        log(f"offering {rate:g} orders/s for {args.warmup_seconds}+{args.step_seconds} s")
        r = run_step(rate, args, namespace, mesh_pid, seed=not steps)
        steps.append(r)
        e2e = r["end_to_end_latency"]
        log(f"  {'pass' if r['passed'] else 'FAIL'}: {r['throughput_per_s']:.1f}/s done, p99 {e2e['p99_ms']:.0f} ms, success {r['success_ratio']:.4f}, {r['cpu_ms_per_order']} ms CPU/order")
        log(f"  PostgreSQL CPU by database: {r['postgres_cpu_seconds_by_database']}")
        log(f"  machine: {r['machine_busy_pct']} % busy, {r['machine_iowait_pct']} % iowait, {r['disk_kib_written_per_order']} KiB written to disk per order")
        return r["passed"]

    # Rates are whole numbers and always move by at least 1, so a --growth close to 1 cannot
    # offer the same rate forever.
    rate, good, bad = args.start_rate, None, None
    while rate <= args.max_rate:
        if step(rate):
            good = rate
            rate = max(round(rate * args.growth), rate + 1)
        else:
            bad = rate
            break
    if good is None and bad is not None:
        # A start above what the machine sustains still finds a rate: step down until one passes.
        rate = min(round(bad / args.growth), bad - 1)
        while rate >= MIN_RATE:
            if step(rate):
                good = rate
                break
            bad, rate = rate, min(round(rate / args.growth), rate - 1)
    if good is None or bad is None:
        return steps
    for _ in range(args.bisect):
        mid = round((good + bad) / 2)
        if mid in (good, bad):
            break
        if step(mid):
            good = mid
        else:
            bad = mid
    return steps


# --- output ------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), "unknown")
    mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) // 1024 // 1024
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "memory_gib": mem, "kernel": platform.release()}


def plot(report: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no plot (pip install matplotlib)")
        return False
    steps = sorted(report["steps"], key=lambda s: s["offered_rate"])
    rates = [s["offered_rate"] for s in steps]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for key, label in (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
        ax.plot(rates, [s["end_to_end_latency"][key] for s in steps], marker="o", label=f"end to end {label}")
    ax.plot(rates, [s["create_latency"]["p99_ms"] for s in steps], marker="x", linestyle="--", label="CreateOrder p99")
    ax.axhline(report["criteria"]["p99_ms"], color="grey", linestyle=":", label="p99 limit")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (orders/s, open loop)")
    ax.set_ylabel("latency (ms, log scale)")
    m = report["machine"]
    ax.set_title(f"ordermesh {report['date']}: {m['cpus']} cores, {m['memory_gib']} GiB; best {report['best_rate']} orders/s (followed by {report['criteria']['follow']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return True


def table(report: dict) -> str:
    lines = [
        "| offered /s | done /s | success | e2e p50 ms | e2e p99 ms | e2e p99.9 ms | create p99 ms | CPU ms/order | busy % | iowait % | result |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in sorted(report["steps"], key=lambda s: s["offered_rate"]):
        e, c = s["end_to_end_latency"], s["create_latency"]
        lines.append(
            f"| {s['offered_rate']:g} | {s['throughput_per_s']:.1f} | {s['success_ratio']:.4f} | {e['p50_ms']:.0f} | {e['p99_ms']:.0f} | {e['p999_ms']:.0f} | {c['p99_ms']:.0f} | {s['cpu_ms_per_order']} | {s['machine_busy_pct']} | {s['machine_iowait_pct']} | {'pass' if s['passed'] else 'fail'} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    os.environ["PGOPTIONS"] = "-c client_min_messages=warning"  # no NOTICEs from DROP IF EXISTS
    if not (BIN / "ordermesh").exists():
        raise SystemExit("no release build: run `make bench` (or cargo build --release --workspace --bins)")
    today = dt.date.today().isoformat()
    namespace = "bench" + dt.datetime.now().strftime("%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    logpath = args.out / f"{today}.mesh.log"

    log(f"pgbench: saga-step-like transactions for {args.pgbench_seconds} s")
    bound = pgbench_bound(args.pgbench_seconds)
    log(f"  raw bound: {bound}")

    drop_databases(namespace)
    with open(logpath, "w") as logfile:
        log(f"starting the mesh (namespace {namespace}, logs in {logpath})")
        mesh = start_mesh(namespace, logfile, worker_threads(args))
        try:
            steps = search(args, namespace, mesh.pid)
            rss = peak_rss_mib(mesh.pid)
            commits, commits_by_database = commits_per_order(namespace)
        finally:
            stop_mesh(mesh)
    drop_databases(namespace)
    delete_streams(namespace)
    logpath.unlink(missing_ok=True)
    # Again afterwards: this VM's disk and CPU speed drift within minutes, and a search is only
    # comparable with another one when the machine held still while it ran.
    log(f"pgbench again, after the search, for {args.pgbench_seconds} s")
    bound_after = pgbench_bound(args.pgbench_seconds)
    log(f"  raw bound after: {bound_after}")
    tps = [b["transactions_per_s"] for b in (bound, bound_after) if "transactions_per_s" in b]

    passed = [s for s in steps if s["passed"]]
    best = max(passed, key=lambda s: s["offered_rate"]) if passed else None
    report = {
        "date": today,
        # Orders same-day runs: scripts/capacity.py derives docs/capacity.md from the newest.
        "finished_at": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        # 1: tokio's current-thread runtime per service (what `ordermesh up` runs on a small
        # machine); more: the multi-thread runtime the Kubernetes manifests run (one per core).
        "runtime": {"worker_threads": worker_threads(args), "flavor": "current_thread" if worker_threads(args) == 1 else "multi_thread"},
        "criteria": {"p99_ms": args.p99_ms, "success": args.success, "step_seconds": args.step_seconds, "warmup_seconds": args.warmup_seconds, "follow": args.follow},
        "best_rate": best["offered_rate"] if best else None,
        "best": best,
        "peak_rss_mib": rss,
        "commits_per_order": commits,
        "commits_per_order_by_database": commits_by_database,
        "pgbench": bound,
        "pgbench_after": bound_after,
        # After over before: far from 1, the machine changed speed during the search.
        "machine_drift": round(tps[1] / tps[0], 2) if len(tps) == 2 else None,
        "steps": steps,
    }
    if best and commits and tps:
        # The most orders/s this machine could commit if the mesh did nothing but its commits
        # (pgbench's mean of before and after).
        report["raw_bound_orders_per_s"] = round(sum(tps) / len(tps) / commits, 1)
        report["ratio_to_raw_bound"] = round(best["offered_rate"] / report["raw_bound_orders_per_s"], 3)
    # A watch-mode run is kept beside the day's default one.
    stem = today if args.follow == "events" else f"{today}-watch"
    # A second run the same day is kept beside the first, never over it.
    suffix = iter("bcdefghijklmnopqrstuvwxyz")
    base = stem
    while (args.out / f"{stem}.json").exists():
        stem = f"{base}-{next(suffix)}"
    out = args.out / f"{stem}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    png = args.out / f"{stem}.png"
    plotted = plot(report, png)
    print(table(report))
    print()
    print(f"best sustained rate: {report['best_rate']} orders/s (p99 < {args.p99_ms:g} ms, success >= {args.success})")
    if best:
        print(f"CPU per completed order at that rate: {best['cpu_ms_per_order']} ms ({best['cpu_seconds']})")
    print(f"peak RSS per service (MiB): {rss}")
    if report["machine_drift"] and not 0.85 <= report["machine_drift"] <= 1.15:
        print(f"note: pgbench moved from {tps[0]} to {tps[1]} tx/s during the search; the machine changed speed, compare with care")
    print(f"commits per order by database: {commits_by_database}")
    print(f"pgbench saga-step bound: {' then '.join(str(t) for t in tps)} tx/s; {commits} commits per order -> {report.get('raw_bound_orders_per_s')} orders/s; ratio {report.get('ratio_to_raw_bound')}")
    print(f"wrote {out}" + (f" and {png}" if plotted else ""))


if __name__ == "__main__":
    main()
