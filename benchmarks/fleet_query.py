"""Fleet query benchmark: how fast and how completely K controllers answer "which of N hosts
run an affected version" (R5), with realistic inventories.

Usage::

    .venv/bin/python benchmarks/fleet_query.py [--agents 10000] [--controllers 2]
        [--queries 30] [--out PATH] [--workers 2] [--offline-frac 0.1]

The script starts its own stack (`hidsd.dev.devstack`: nats-server with JetStream, one etcd
member) in a temp dir and K real controller processes (`python -m hidsd.controller.main`, as
`tests/support.py` starts them). The N simulated agents are `--workers` processes
(`benchmarks/_fleet_query_agents.py`) sending what an agent sends for a query to be answered:
each host's PACKAGES_STATE record on `<prefix>.inv.<host>` through JetStream (frame, headers
and record as the inventory plugin and `LatestPublisher` make them), and its heartbeats every
`--heartbeat-s` (10 s, the agent's default). The package sets (`_fleet_query_data.py`): five
OS groups (Debian 12/11, Ubuntu 22.04, RHEL 9, Alpine 3.18), 1,000-1,500 packages per host,
mostly identical per group, 35 % of hosts lagging on a few to 150 source packages.
`--offline-frac` of the hosts send a `bye` heartbeat after their inventory and fall silent:
they are answered from their last inventory.

Phases, timed on this process's clock:

1. index build (live): from the first inventory published until every controller's index
   holds all N hosts (polled through `ctl.controllers`, 0.5 s apart);
2. settle: until a query accounts for all N hosts with the offline ones offline;
3. queries: Q requests on `<prefix>.ctl.query`, as hidsctl sends them (`{"ranges": [wire],
   "max_age_s": 7800}`, ranges parsed by `parse_vers`/`parse_osv`), one at a time, over one
   connection, cycling through a mix (deb, rpm and apk ranges, OSV advisories with 3-8
   ranges); latency is the client's, request to decoded reply. A query is complete when
   counts.answered == N and counts.no_answer == 0. On a shared machine a round during which
   other processes used more than `--quiet-pct` of a core is run again (at most
   `--max-rounds`, each after waiting up to `--quiet-wait-s` for a quiet machine); the
   quietest round is reported, every round is in `query_rounds`. Five
   more requests of the first query go through `hidsd.ctl.common._ask` (a new connection
   each, as one hidsctl run does);
4. cold rebuild: one controller is stopped and a new one started; time until its index holds
   all N hosts again (what a controller restart costs before it can answer).

Writes JSON to `benchmarks/results/fleet_query.json` (or `--out`): agents, answered and matched
(of the first query: a patched fleet's laggards), p50_ms and p99_ms (all queries), and the
extras (per query, index, RSS, CPU, shards). Ctrl-C or SIGTERM stops every process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import psutil
import uvloop
from _common import BenchError, fmt, warn
from _fleet_query_agents import DONE_SUBJECT, WorkerConfig
from _fleet_query_data import Query, agent_heartbeat, code_state, queries
from nats.aio.msg import Msg

from hidsd.base import logging as hidsd_logging
from hidsd.base.errors import HidsError
from hidsd.base.proc import with_pdeathsig
from hidsd.bus.transport import Bus, BusOptions
from hidsd.dev.devstack import EtcdCluster, NatsServer, find_binary, stop_process
from hidsd.wire.heartbeat import encode_heartbeat
from hidsd.wire.names import Subjects
from hidsd.wire.rpc import decode_reply, encode_request

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKER_PY = HERE / "_fleet_query_agents.py"
DEFAULT_OUT = HERE / "results" / "fleet_query.json"
PREFIX = "hidsd"
#: what hidsctl sends by default (`--max-age`)
MAX_AGE_S = 7800.0

NOTES = (
    "K real controller processes and one nats-server (JetStream, file storage in a temp dir) "
    "and one etcd on {cpus} CPU cores, over loopback. The N agents are simulated by "
    "{workers} worker processes that send, per host, exactly what the agent sends for a "
    "query: its PACKAGES_STATE frame into the inventory stream (JetStream publish, acked) and "
    "its heartbeats (every {hb_s:.0f} s, {hb_bytes} bytes each, with the maps a real agent "
    "fills); they share a few NATS connections, which the controllers cannot tell from N. "
    "Package sets are synthetic but shaped like a fleet's (see _fleet_query_data.py): "
    "1,000-1,500 packages per host, five OS groups, identical versions within a group except "
    "for laggards. Latency is measured by the client from request to decoded reply, one "
    "query at a time over one open connection (hidsctl also connects first: hidsctl_path "
    "has five requests through hidsd.ctl.common._ask, a new connection each). The controllers "
    "kept receiving ~{hb_rate:.0f} heartbeats/s during the queries. p50/p99 are nearest-rank "
    "over the {q} queries; a query without a reply within {timeout:.0f} s counts as failed "
    "and is left out of the percentiles (failed_queries lists them). Replies over 64 kB travel "
    "zlib-compressed (reply_bytes; reply_result_bytes is the decoded answer's msgpack size)."
)


# --------------------------------------------------------------------------- helpers


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def r2(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        out = subprocess.run([find_binary("nats-server", "HIDSD_NATS_SERVER_BIN"), "--version"],
                             capture_output=True, text=True, timeout=10, check=False)  # fmt: skip
        nats_version = (out.stdout or out.stderr).strip()
    except (OSError, HidsError, subprocess.SubprocessError):
        nats_version = "?"
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "nats_server": nats_version,
    }


def log_summary(path: Path) -> dict[str, Any]:
    """Warnings and errors a controller logged (JSON lines), by event; other lines counted."""
    events: Counter[str] = Counter()
    other: list[str] = []
    with contextlib.suppress(OSError), open(path, errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                if line.strip():
                    other.append(line.rstrip()[:300])
                continue
            if isinstance(rec, dict) and rec.get("level") in ("warning", "error", "critical"):
                events[f"{rec.get('level')}:{rec.get('event')}"] += 1
    return {"events": dict(events), "other_lines": len(other), "other_head": other[:12]}


# --------------------------------------------------------------------------- processes


@dataclass
class ControllerProc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    started: float
    ps: psutil.Process = field(init=False)

    def __post_init__(self) -> None:
        self.ps = psutil.Process(self.popen.pid)

    def rss_mb(self) -> float | None:
        try:
            return round(self.ps.memory_info().rss / (1 << 20), 1)
        except psutil.Error:
            return None

    def cpu_s(self) -> float | None:
        try:
            t = self.ps.cpu_times()
            return round(t.user + t.system, 2)
        except psutil.Error:
            return None


class Stack:
    """nats-server, etcd, K controllers, the agent workers and one client connection."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.nats = NatsServer(workdir / "stack")
        self.etcd = EtcdCluster(workdir / "stack")
        self.subjects = Subjects(PREFIX)
        self.controllers: list[ControllerProc] = []
        self.stopped: list[ControllerProc] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        self.worker_logs: list[Path] = []
        self.bus: Bus | None = None

    def start_servers(self) -> None:
        self.nats.start()
        self.etcd.start()

    def start_controller(self, name: str) -> ControllerProc:
        n = self.args.agents
        env = {
            **os.environ,
            "HIDSD_CONTROLLER_STREAM_MAX_BYTES": str(64 << 20),
            "HIDSD_CONTROLLER_INVENTORY_MAX_BYTES": str(max(256 << 20, n * (64 << 10))),
        }
        log = self.workdir / f"controller-{name}.log"
        cmd = [sys.executable, "-m", "hidsd.controller.main", "--nats", self.nats.url,
               "--etcd", ",".join(self.etcd.endpoints), "--name", name,
               "--subject-prefix", PREFIX, "--key-prefix", f"/{PREFIX}/",
               "--log-format", "json"]  # fmt: skip
        with open(log, "ab") as out:
            p = subprocess.Popen(with_pdeathsig(cmd, os.getpid()), stdout=out,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                 cwd=ROOT)  # fmt: skip
        c = ControllerProc(name, p, log, time.perf_counter())
        self.controllers.append(c)
        return c

    def stop_controller(self, c: ControllerProc) -> None:
        stop_process(c.popen, timeout=10)
        self.controllers.remove(c)
        self.stopped.append(c)

    def spawn_workers(self, configs: list[WorkerConfig]) -> None:
        for cfg in configs:
            log = self.workdir / f"worker-{cfg.index}.log"
            with open(log, "ab") as out:
                p = subprocess.Popen(with_pdeathsig([sys.executable, str(WORKER_PY),
                                                     cfg.to_json()], os.getpid()),
                                     stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)  # fmt: skip
            self.workers.append(p)
            self.worker_logs.append(log)

    def check_alive(self) -> None:
        for c in self.controllers:
            if c.popen.poll() is not None:
                tail = c.log.read_text(errors="replace")[-3000:]
                raise BenchError(f"controller {c.name} exited with {c.popen.returncode}:\n{tail}")
        for i, p in enumerate(self.workers):
            if p.poll() is not None:
                tail = self.worker_logs[i].read_text(errors="replace")[-3000:]
                raise BenchError(f"agent worker {i} exited with {p.returncode}:\n{tail}")

    def own_cpu_s(self) -> float:
        """CPU seconds of every process this benchmark runs (servers, controllers, workers,
        itself), to tell other work on the machine apart."""
        pids = [os.getpid(), *(p.pid for p in self.workers),
                *(c.popen.pid for c in self.controllers)]  # fmt: skip
        if self.nats.proc is not None:
            pids.append(self.nats.proc.pid)
        pids += [m.proc.pid for m in self.etcd.members if m.proc is not None]
        total = 0.0
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
        return total

    async def ask(self, verb: str, params: dict[str, Any], timeout: float = 5.0) -> Any:
        assert self.bus is not None
        data = await self.bus.request(self.subjects.ctl(verb), encode_request(params), timeout)
        return decode_reply(data)

    async def stop(self) -> None:
        """Every step on its own: one failing must not leave the others undone."""
        for p in self.workers:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p in self.workers:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for c in list(self.controllers):
            try:
                stop_process(c.popen, timeout=10)
            except Exception as exc:
                warn(f"stopping controller {c.name}: {exc!r}")
        if self.bus is not None:
            try:
                await self.bus.close(timeout=2.0)
            except Exception as exc:
                warn(f"closing the client's NATS connection: {exc!r}")
        for server in (self.nats, self.etcd):
            try:
                server.stop()
            except Exception as exc:
                warn(f"stopping {type(server).__name__}: {exc!r}")


# --------------------------------------------------------------------------- phases


async def wait_members(stack: Stack, k: int, timeout: float = 60.0) -> None:
    """Until every controller answers `ctl.controllers` and they know each other."""
    deadline = time.monotonic() + timeout
    good = 0
    while good < 3:
        stack.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"the {k} controllers did not see each other within {timeout:.0f}s")
        try:
            rows = (await stack.ask("controllers", {}, 3.0))["controllers"]
            ok = len(rows) == k and not any(r.get("error") for r in rows)
        except HidsError:
            ok = False
        good = good + 1 if ok else 0
        await asyncio.sleep(0.3)


async def wait_index(stack: Stack, n: int, t0: float, timeout: float,
                     names: set[str]) -> dict[str, float]:  # fmt: skip
    """Seconds from `t0` until each named controller's index holds `n` hosts."""
    done: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    last = ""
    while set(done) != names:
        stack.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"index not complete within {timeout:.0f}s: {last}")
        try:
            rows = (await stack.ask("controllers", {}, 5.0))["controllers"]
        except HidsError as exc:
            last = str(exc)
            await asyncio.sleep(0.5)
            continue
        now = time.perf_counter()
        last = ", ".join(f"{r.get('name')}={r.get('inventory_hosts')}" for r in rows)
        for r in rows:
            if r.get("name") in names and r.get("inventory_hosts", 0) >= n:
                done.setdefault(r["name"], round(now - t0, 2))
        await asyncio.sleep(0.5)
    return done


def wire(rng: Any) -> dict[str, Any]:
    """As `hidsd.ctl.cmd_query._wire`."""
    d = asdict(rng)
    return {k: d[k] for k in ("ecosystem", "package", "spec", "distro", "release", "source")}


async def run_query(stack: Stack, q: Query, timeout: float) -> dict[str, Any]:
    """One query as hidsctl sends it; client-side latency and the reply's accounting."""
    assert stack.bus is not None
    params = {"ranges": [wire(r) for r in q.ranges()], "max_age_s": MAX_AGE_S}
    body = encode_request(params)
    t0 = time.perf_counter()
    try:
        data = await stack.bus.request(stack.subjects.ctl("query"), body, timeout)
        res = decode_reply(data)
    except HidsError as exc:
        return {"name": q.name, "ok": False, "error": str(exc)[:300],
                "after_ms": round((time.perf_counter() - t0) * 1000, 2)}  # fmt: skip
    latency = time.perf_counter() - t0
    raw = len(msgpack.packb(res, use_bin_type=True))  # what it is before zlib (if it was)
    return {
        "name": q.name,
        "ok": True,
        "latency_ms": round(latency * 1000, 2),
        "controller_elapsed_ms": res.get("elapsed_ms"),
        "request_bytes": len(body),
        "reply_bytes": len(data),
        "reply_result_bytes": raw,
        "ranges": len(params["ranges"]),
        "counts": res["counts"],
        "complete": res["complete"],
        "shards": res["shards"],
        "counters": res.get("counters", {}),
    }


async def settle(stack: Stack, n: int, offline: int, timeout: float = 90.0) -> float:
    """Until three queries in a row account for N hosts with the offline ones offline."""
    t0 = time.perf_counter()
    first = queries()[0]
    good = 0
    last: Any = None
    while good < 3:
        stack.check_alive()
        if time.perf_counter() - t0 > timeout:
            raise BenchError(f"presence did not settle within {timeout:.0f}s: {last}")
        res = await run_query(stack, first, 30.0)
        last = res.get("counts", res.get("error"))
        ok = (res["ok"] and res["counts"]["hosts"] == n and res["counts"]["answered"] == n
              and res["counts"]["offline_answered"] == offline)  # fmt: skip
        good = good + 1 if ok else 0
        await asyncio.sleep(0.3)
    return round(time.perf_counter() - t0, 2)


async def hidsctl_path(stack: Stack, q: Query, rounds: int = 5) -> dict[str, Any]:
    """The first query through `_ask`, as one `hidsctl query package` run sends it."""
    from hidsd.ctl.common import CtlSettings, _ask

    s = CtlSettings(nats=(stack.nats.url,), etcd=tuple(stack.etcd.endpoints),
                    key_file=Path("/nonexistent"), subject_prefix=PREFIX,
                    key_prefix=f"/{PREFIX}/", timeout_s=30.0)  # fmt: skip
    params = {"ranges": [wire(r) for r in q.ranges()], "max_age_s": MAX_AGE_S}
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        await _ask(s, "query", params, timeout_s=30.0, attempts=1)
        times.append((time.perf_counter() - t0) * 1000)
        await asyncio.sleep(0.2)
    return {"rounds": rounds, "p50_ms": r2(statistics.median(times)), "max_ms": r2(max(times)),
            "note": "new NATS connection, request, close: what one hidsctl run adds to the "
                    "query (Python start-up and imports not included)"}  # fmt: skip


def summarize_queries(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by.setdefault(r["name"], []).append(r)
    out = []
    for name, rs in by.items():
        ok = [r for r in rs if r["ok"]]
        lat = [r["latency_ms"] for r in ok]
        last = ok[-1] if ok else rs[-1]
        out.append({
            "name": name,
            "runs": len(rs),
            "failed": len(rs) - len(ok),
            "ranges": last.get("ranges"),
            "p50_ms": r2(statistics.median(lat)) if lat else None,
            "max_ms": r2(max(lat)) if lat else None,
            "controller_elapsed_ms_p50": r2(statistics.median(
                [r["controller_elapsed_ms"] for r in ok])) if ok else None,
            "reply_bytes": last.get("reply_bytes"),
            "reply_result_bytes": last.get("reply_result_bytes"),
            "counts": last.get("counts"),
            "complete": all(r.get("complete") for r in ok) and len(ok) == len(rs),
            "counters": last.get("counters"),
            "shards": last.get("shards"),
            "error": None if ok else last.get("error"),
        })  # fmt: skip
    return out


def foreign_pct(mine_s: float, sys0: Any, wall_s: float) -> float:
    """CPU % (100 = one core) used since `sys0` by processes this benchmark did not start."""
    sys1 = psutil.cpu_times()
    busy = 1 - (sys1.idle - sys0.idle) / max(1e-9, sum(sys1) - sum(sys0))
    return round(max(0.0, busy * 100 * (os.cpu_count() or 1) - mine_s / wall_s * 100), 1)


async def wait_quiet(own_cpu_s: Callable[[], float], quiet_pct: float, limit_s: float) -> float:
    """Wait (at most `limit_s`) until other processes use under `quiet_pct` of a core, over
    2 s; returns the seconds waited. Other people's work on a 2-core machine would be
    measured as our latency."""
    t0 = time.perf_counter()
    while True:
        mine0, sys0 = own_cpu_s(), psutil.cpu_times()
        await asyncio.sleep(2.0)
        mine1, sys1 = own_cpu_s(), psutil.cpu_times()
        busy = 1 - (sys1.idle - sys0.idle) / max(1e-9, sum(sys1) - sum(sys0))
        foreign = busy * 100 * (os.cpu_count() or 1) - (mine1 - mine0) / 2.0 * 100
        waited = time.perf_counter() - t0
        if foreign <= quiet_pct or waited >= limit_s:
            return round(waited, 1)
        await asyncio.sleep(3.0)


async def query_round(stack: Stack, qs: list[Query], args: argparse.Namespace) -> dict[str, Any]:
    """Q queries one at a time, with what the machine did meanwhile: another process busy on
    a 2-core machine shows in the latencies, so a round with other work is run again."""
    results = []
    cpu0 = {c.name: c.cpu_s() for c in stack.controllers}
    mine0, sys0 = stack.own_cpu_s(), psutil.cpu_times()
    wall0 = time.perf_counter()
    for i in range(args.queries):
        stack.check_alive()
        results.append(await run_query(stack, qs[i % len(qs)], args.timeout_s))
        await asyncio.sleep(args.pause_s)
    wall = time.perf_counter() - wall0
    cpu1 = {c.name: c.cpu_s() for c in stack.controllers}
    mine1, sys1 = stack.own_cpu_s(), psutil.cpu_times()
    busy = 1 - (sys1.idle - sys0.idle) / max(1e-9, sum(sys1) - sum(sys0))
    mine = (mine1 - mine0) / wall * 100
    lat = [r["latency_ms"] for r in results if r["ok"]]
    return {
        "results": results,
        "cpu0": cpu0,
        "cpu1": cpu1,
        "wall_s": wall,
        "p50_ms": r2(percentile(lat, 50)),
        "p99_ms": r2(percentile(lat, 99)),
        "machine": {
            "busy_pct": round(busy * 100, 1),
            "benchmark_cpu_pct": round(mine, 1),
            "foreign_cpu_pct": round(max(0.0, busy * 100 * (os.cpu_count() or 1) - mine), 1),
            "note": "during the query round; 100 = one core; foreign = processes this benchmark "
                    "did not start (other work on the machine)",
        },
    }  # fmt: skip


# --------------------------------------------------------------------------- the run


async def run(args: argparse.Namespace) -> dict[str, Any]:
    n, k = args.agents, args.controllers
    offline = 0 if args.offline_frac <= 0 else max(1, round(n * args.offline_frac))
    load_before = os.getloadavg()
    if load_before[0] > 1.0:
        warn(f"load average is {load_before[0]:.1f} before starting: other work shares the CPUs")
    workdir = Path(tempfile.mkdtemp(prefix="hidsd-fleetquery-"))
    stack = Stack(args, workdir)
    task = asyncio.current_task()
    if task is not None:  # SIGTERM cleans up like Ctrl-C does
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    say = print
    try:
        t0 = time.perf_counter()
        stack.start_servers()
        code = code_state(ROOT)
        for i in range(k):
            stack.start_controller(f"fq-c{i + 1}")
        stack.bus = Bus(BusOptions(servers=(stack.nats.url,), name="bench-fleet-query"))
        await stack.bus.connect(attempts=3)
        await wait_members(stack, k)
        say(
            f"stack and {k} controllers up in {time.perf_counter() - t0:.1f}s; workdir {workdir}",
            flush=True,
        )

        done: list[dict[str, Any]] = []
        all_done = asyncio.Event()

        async def on_done(msg: Msg) -> None:
            done.append(msgpack.unpackb(msg.data, raw=False))
            if len(done) == args.workers:
                all_done.set()

        await stack.bus.subscribe(DONE_SUBJECT, on_done)
        sizes, offs = split(n, args.workers), split(offline, args.workers)
        configs = [WorkerConfig(index=i, nats_url=stack.nats.url, prefix=PREFIX,
                                first=sum(sizes[:i]), count=sizes[i], offline=offs[i],
                                seed=args.seed, interval_s=args.heartbeat_s,
                                inflight=args.inflight)
                   for i in range(args.workers)]  # fmt: skip
        waited0 = await wait_quiet(stack.own_cpu_s, args.quiet_pct, args.quiet_wait_s)
        mine_b0, sys_b0 = stack.own_cpu_s(), psutil.cpu_times()
        t_pub = time.perf_counter()
        stack.spawn_workers(configs)
        names = {c.name for c in stack.controllers}
        index_task = asyncio.ensure_future(wait_index(stack, n, t_pub, args.index_timeout, names))
        while not all_done.is_set():
            stack.check_alive()
            if index_task.done() and index_task.exception():
                raise index_task.exception()  # type: ignore[misc]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_done.wait(), 1.0)
        published_s = round(time.perf_counter() - t_pub, 2)
        inv_total = sum(d["published"] for d in done)
        errors = Counter()
        for d in done:
            errors.update(d["errors"])
        say(f"{inv_total}/{n} inventories stored in {published_s}s "
            f"({sum(d['frame_bytes_total'] for d in done) / 1e6:.0f} MB); errors {dict(errors)}",
            flush=True)  # fmt: skip
        if inv_total != n:
            raise BenchError(f"only {inv_total} of {n} inventories were stored: {dict(errors)}")
        per_controller = await index_task
        live_build_s = max(per_controller.values())
        build_foreign = foreign_pct(stack.own_cpu_s() - mine_b0, sys_b0,
                                    time.perf_counter() - t_pub)  # fmt: skip
        say(
            f"every controller indexed {n} hosts {live_build_s}s after the first publish "
            f"({per_controller})",
            flush=True,
        )
        ping = await stack.ask("ping", {})
        rss_index = {c.name: c.rss_mb() for c in stack.controllers}
        cpu_index = {c.name: c.cpu_s() for c in stack.controllers}

        settle_s = await settle(stack, n, offline)
        say(f"presence settled in {settle_s}s ({offline} offline)", flush=True)

        qs = queries()
        rounds: list[dict[str, Any]] = []
        for _ in range(args.max_rounds):
            waited = await wait_quiet(stack.own_cpu_s, args.quiet_pct, args.quiet_wait_s)
            rounds.append({**await query_round(stack, qs, args), "waited_for_quiet_s": waited})
            foreign = rounds[-1]["machine"]["foreign_cpu_pct"]
            say(f"query round {len(rounds)}: p50 {rounds[-1]['p50_ms']} ms, other work on the "
                f"machine {foreign:.0f}% CPU", flush=True)  # fmt: skip
            if foreign <= args.quiet_pct:
                break
        best = min(rounds, key=lambda r: r["machine"]["foreign_cpu_pct"])
        results, machine_q = best["results"], best["machine"]
        cpu0, cpu1, query_wall = best["cpu0"], best["cpu1"], best["wall_s"]
        hidsctl = await hidsctl_path(stack, qs[0])
        rss_queries = {c.name: c.rss_mb() for c in stack.controllers}

        rebuild: dict[str, Any] = {}
        if not args.no_rebuild and k >= 1:
            waited_r = await wait_quiet(stack.own_cpu_s, args.quiet_pct, args.quiet_wait_s)
            victim = stack.controllers[0]
            stack.stop_controller(victim)
            mine_r0, sys_r0 = stack.own_cpu_s(), psutil.cpu_times()
            fresh = stack.start_controller(f"fq-c{k + 1}")
            t_r = time.perf_counter()
            got = await wait_index(stack, n, t_r, args.index_timeout, {fresh.name})
            rebuild_foreign = foreign_pct(stack.own_cpu_s() - mine_r0, sys_r0,
                                          time.perf_counter() - t_r)  # fmt: skip
            rebuild = {
                "controller": fresh.name,
                "replaced": victim.name,
                "index_complete_s": got[fresh.name],
                "waited_for_quiet_s": waited_r,
                "foreign_cpu_pct": rebuild_foreign,
                "rss_mb": fresh.rss_mb(),
                "cpu_s": fresh.cpu_s(),
                "note": "from process start (imports, connect, stream subscribe "
                "included) to the index holding all N hosts, polled every 0.5 s, "
                "while the other controllers and the heartbeats keep running",
            }
            say(f"cold rebuild: {fresh.name} indexed {n} hosts in {got[fresh.name]}s", flush=True)

        ok = [r for r in results if r["ok"]]
        lat = [r["latency_ms"] for r in ok]
        first = results[0]
        hb_bytes = len(encode_heartbeat(agent_heartbeat("bench-000000", 1, args.heartbeat_s)))
        frame_total = sum(d["frame_bytes_total"] for d in done)
        pk_total = sum(d["packages_total"] for d in done)
        groups: Counter[str] = Counter()
        lagging: Counter[str] = Counter()
        for d in done:
            groups.update(d["os_groups"])
            lagging.update(d["lagging"])
        logs = {c.name: log_summary(c.log) for c in stack.controllers + stack.stopped}
        out = {
            "agents": n,
            "answered": first.get("counts", {}).get("answered", 0),
            "matched": first.get("counts", {}).get("matched", 0),
            "p50_ms": r2(percentile(lat, 50)),
            "p99_ms": r2(percentile(lat, 99)),
            "complete": all(r["ok"] and r["complete"] for r in results),
            "controllers": k,
            "queries": len(results),
            "failed_queries": [{"name": r["name"], "error": r["error"], "after_ms": r["after_ms"]}
                               for r in results if not r["ok"]],
            "incomplete_queries": [r["name"] for r in ok if not r["complete"]],
            "first_query": first.get("name"),
            "offline_agents": offline,
            "offline_answered": first.get("counts", {}).get("offline_answered"),
            "no_answer": first.get("counts", {}).get("no_answer"),
            "latency_ms": {
                "min": r2(min(lat, default=None)), "p50": r2(percentile(lat, 50)),
                "p90": r2(percentile(lat, 90)), "p99": r2(percentile(lat, 99)),
                "max": r2(max(lat, default=None)),
                "mean": r2(statistics.fmean(lat)) if lat else None,
                "controller_elapsed_p50": r2(percentile(
                    [r["controller_elapsed_ms"] for r in ok], 50)),
            },
            "by_query": summarize_queries(results),
            "hidsctl_path": hidsctl,
            "index": {
                "live_build_s": live_build_s,
                "per_controller_s": per_controller,
                "waited_for_quiet_s": waited0,
                "foreign_cpu_pct": build_foreign,
                "inventories_published_s": published_s,
                "note": "live: controllers running while the N inventories are published "
                        "(inflight JetStream publishes per worker); from the first publish "
                        "until every controller's index holds N hosts",
                "inventory_frames_mb": round(frame_total / 1e6, 1),
                "inventory_frame_avg_bytes": round(frame_total / n),
                "inventory_frame_max_bytes": max(d["frame_bytes_max"] for d in done),
                "packages_per_host": {"avg": round(pk_total / n), "min": min(
                    d["packages_min"] for d in done), "max": max(d["packages_max"] for d in done)},
                "os_groups": dict(groups),
                "hosts_lagging_sources": dict(lagging),
                "index_stats": ping.get("inventory"),
                "cold_rebuild": rebuild,
            },
            "controllers_rss_mb": {"after_index": rss_index, "after_queries": rss_queries},
            "controllers_cpu_s": {"after_index": cpu_index,
                                  "during_queries": {k_: r2((cpu1[k_] or 0) - (cpu0[k_] or 0))
                                                     for k_ in cpu0},
                                  "query_phase_wall_s": round(query_wall, 2)},
            "code": code,
            "machine_during_queries": machine_q,
            "query_rounds": [{"p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                              "foreign_cpu_pct": r["machine"]["foreign_cpu_pct"],
                "waited_for_quiet_s": r["waited_for_quiet_s"],
                              "reported": r is best} for r in rounds],
            "settle_s": settle_s,
            "heartbeat": {"bytes": hb_bytes, "interval_s": args.heartbeat_s,
                          "rate_per_s": round((n - offline) / args.heartbeat_s, 1)},
            "agent_workers": [{k_: v for k_, v in d.items() if k_ != "offline"} for d in done],
            "controller_logs": logs,
            "per_query": results,
            "params": {"agents": n, "controllers": k, "queries": args.queries,
                       "workers": args.workers, "offline_frac": args.offline_frac,
                       "seed": args.seed, "heartbeat_s": args.heartbeat_s,
                       "timeout_s": args.timeout_s, "pause_s": args.pause_s,
                       "inflight": args.inflight, "max_age_s": MAX_AGE_S},
            "notes": NOTES.format(cpus=os.cpu_count(), workers=args.workers,
                                  hb_s=args.heartbeat_s, hb_bytes=hb_bytes,
                                  hb_rate=(n - offline) / args.heartbeat_s, q=len(results),
                                  timeout=args.timeout_s),
            "machine": {**machine_info(), "loadavg_before": [round(x, 2) for x in load_before],
                        "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }  # fmt: skip
        return out
    finally:
        await stack.stop()
        if args.keep_workdir:
            print(f"workdir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------- output


def print_summary(r: dict[str, Any]) -> None:
    idx = r["index"]
    rows = [
        ("agents (N)", fmt(r["agents"], "")),
        ("controllers (K)", fmt(r["controllers"], "")),
        (f"answered ({r['first_query']})", fmt(r["answered"], "")),
        (f"  of which offline ({r['offline_agents']} offline)", fmt(r["offline_answered"], "")),
        ("matched", fmt(r["matched"], "")),
        ("all queries complete", "yes" if r["complete"] else "NO"),
        (f"p50 latency ({r['queries']} queries)", fmt(r["p50_ms"])),
        ("p99 latency", fmt(r["p99_ms"])),
        ("controller-side p50", fmt(r["latency_ms"]["controller_elapsed_p50"])),
        ("hidsctl path p50 (connect + query)", fmt(r["hidsctl_path"]["p50_ms"])),
        ("index build, live (all controllers)", fmt(idx["live_build_s"], "s")),
        ("index rebuild, one new controller", fmt(idx["cold_rebuild"].get("index_complete_s"),
                                                   "s")),
        ("machine during queries: busy / other work",
         f"{r['machine_during_queries']['busy_pct']:.0f}% / "
         f"{r['machine_during_queries']['foreign_cpu_pct']:.0f}% CPU"),
        ("controller RSS after queries", ", ".join(f"{v:.0f} MiB" for v in
                                                   r["controllers_rss_mb"]["after_queries"]
                                                   .values() if v)),
    ]  # fmt: skip
    width = max(len(a) for a, _ in rows)
    print()
    print(f"hidsd fleet query, N={r['agents']}, K={r['controllers']}")
    print("-" * (width + 24))
    for a, b in rows:
        print(f"{a:<{width}}  {b:>20}")
    print("-" * (width + 24))
    print(f"{'query':<32} {'ranges':>6} {'p50 ms':>9} {'max ms':>9} {'matched':>8} "
          f"{'answered':>8} {'reply kB':>9}")  # fmt: skip
    for q in r["by_query"]:
        c = q["counts"] or {}
        print(f"{q['name']:<32} {q['ranges'] or '-':>6} {fmt(q['p50_ms'], ''):>9} "
              f"{fmt(q['max_ms'], ''):>9} {c.get('matched', '-'):>8} {c.get('answered', '-'):>8} "
              f"{(q['reply_bytes'] or 0) / 1000:>9.0f}"
              + (f"  FAILED: {q['error']}" if q["error"] else ""))  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--agents", type=int, default=10_000, help="fleet size N (default 10,000)")
    p.add_argument("--controllers", type=int, default=2, help="controllers K (default 2)")
    p.add_argument("--queries", type=int, default=30, help="queries Q (default 30)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    p.add_argument("--workers", type=int, default=2, help="agent worker processes (default 2)")
    p.add_argument(
        "--offline-frac",
        type=float,
        default=0.1,
        help="hosts that say bye after their inventory (default 0.1)",
    )
    p.add_argument(
        "--heartbeat-s",
        type=float,
        default=10.0,
        help="heartbeat interval of the simulated agents (default 10, as the agent)",
    )
    p.add_argument(
        "--inflight",
        type=int,
        default=32,
        help="JetStream publishes in flight per worker (default 32)",
    )
    p.add_argument(
        "--timeout-s",
        type=float,
        default=30.0,
        help="seconds to wait for a query's reply (default 30, as hidsctl)",
    )
    p.add_argument("--pause-s", type=float, default=0.2, help="pause between queries")
    p.add_argument(
        "--index-timeout",
        type=float,
        default=900.0,
        help="seconds to wait for the controllers' indexes",
    )
    p.add_argument("--seed", type=int, default=7, help="the fleet's package sets")
    p.add_argument(
        "--quiet-pct",
        type=float,
        default=25.0,
        help="a query round during which other processes used more CPU than this "
        "(%% of one core) is run again (default 25)",
    )
    p.add_argument(
        "--quiet-wait-s",
        type=float,
        default=300.0,
        help="before a round, wait at most this long for other work to stop (default 300)",
    )
    p.add_argument(
        "--max-rounds",
        type=int,
        default=4,
        help="query rounds at most; the quietest is reported (default 4)",
    )
    p.add_argument("--no-rebuild", action="store_true", help="skip the cold-rebuild phase")
    p.add_argument("--keep-workdir", action="store_true", help="keep logs and the stream")
    args = p.parse_args(argv)  # fmt: skip
    if args.agents < 1 or args.controllers < 1 or args.queries < 1 or args.workers < 1:
        p.error("--agents, --controllers, --queries and --workers must be at least 1")
    args.workers = min(args.workers, args.agents)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    hidsd_logging.configure("warning")
    try:
        result = uvloop.run(run(args))
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; stack, controllers and workers stopped", file=sys.stderr)
        return 130
    print_summary(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
