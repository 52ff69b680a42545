"""Fleet query benchmark: how fast and how completely K controllers answer "which of N hosts
run an affected version" (R5), with realistic inventories.

Usage::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/fleet_query.py [--agents 10000]
        [--controllers 2] [--queries 30] [--quick]
    # the 1,000-host figures: --agents 1000 --out benchmarks/results/fleet_query_1k.json

A local stack (`harness.stack`: nats-server with JetStream, one etcd member), K real
controller processes (`harness.controllers`: `python -m hidsd.controller.main`) and
`--workers` worker processes (`fleet_query_worker.py`) simulating the N hosts with the agent's
own code (`harness.agentreports`): each host's heartbeats from the agent's `HeartbeatService`
(every `--heartbeat-s`, 10 s as the agent) and its PACKAGES_STATE record from the inventory
plugin's `Inventory.report_state`, published by the agent's `LatestPublisher`. The package
sets (`fleet_query_data.py`): five OS groups (Debian 12/11, Ubuntu 22.04, RHEL 9, Alpine
3.18), 1,000-1,500 packages per host, 35 % of hosts lagging on a few to 150 source packages.
`--offline-frac` of the hosts stop after their record (a `bye` heartbeat, then silence): they
are answered from their last record.

Phases, timed on this process's clock:

1. index build (live): from the `inventories` operation until every controller's index holds
   all N hosts (`ctl.controllers`, polled every 0.5 s; the records' generation included);
2. settle: until three queries in a row account for all N hosts, the offline ones offline;
3. queries: Q queries through hidsctl's own query code (`hidsd.ctl.cmd_query.query`, ranges
   parsed by `parse_vers` / `parse_osv` as `hidsctl query package|advisory` parses them), one
   at a time over one open connection, cycling through a mix (`fleet_query_queries.py`);
   latency is the client's, request to typed reply. Complete: counts.answered == N and
   no_answer == 0. A round during which other processes used more than `--quiet-pct` of a
   core is run again (at most `--max-rounds`); the quietest is reported. Then five requests
   of the first query as one hidsctl run sends them (`query` without a bus: a new connection);
4. cold rebuild: one controller stopped and a new one started; until its index holds all N.

Phases that would overrun `--budget-s` are cut (listed in `cut`). Writes
`benchmarks/results/fleet_query.json` (or `--out`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from fleet_query_figures import print_summary, r2, summarize_queries
from fleet_query_queries import Query, queries
from harness.controllers import ControllerSet, quiet_options
from harness.fleet import tmpfs
from harness.heartbeats import HeartbeatLog
from harness.procs import CpuMeter, MachineShare, log_events, wait_for_quiet
from harness.report import (
    RESULTS,
    BenchError,
    Budget,
    Option,
    add_common_args,
    add_options,
    pack,
    percentile,
    quick_defaults,
    raise_nofile_limit,
    run_benchmark,
)
from harness.stack import Stack, local_stack
from harness.workers import WorkerPool, split

from hidsd.base.errors import HidsError
from hidsd.ctl.cmd_query import query
from hidsd.ctl.common import CtlSettings
from hidsd.wire.names import Subjects
from hidsd.wire.rpc import encode_reply
from hidsd.wire.verbs import PING

WORKER = Path(__file__).resolve().parent / "fleet_query_worker.py"
#: what hidsctl sends by default (`--max-age`)
MAX_AGE_S = 7800.0

NOTES = (
    "K real controller processes, one nats-server (JetStream, file storage in a temp dir) and "
    "one etcd on {cpus} CPU cores, over loopback. The N hosts are {workers} worker processes "
    "sending per host what an agent sends for a query, built by the agent's own code "
    "(harness.agentreports): heartbeats from HeartbeatService.run (every {hb_s:.0f} s "
    "jittered, {hb_bytes} bytes: this machine's local_facts with the host's name, OS and "
    "address, the inventory output's LatestPublisher report, a real Breaker's and "
    "StorageHealth's reports, procmon and inventory PluginReports with a real Pipeline's stats "
    "keys and plausible counts) and the PACKAGES_STATE record from the inventory plugin's "
    "Inventory.report_state, framed as the SDK frames it and published by LatestPublisher "
    "(the agent's headers and message id, JetStream, acked). Not N hosts: no plugin processes "
    "run, every host reports its worker's CPU/RSS and one data dir, a worker's hosts share one "
    "NATS connection and one event loop (the controllers see subjects and headers, not "
    "connections), the inventory goes out {inflight} records in flight per worker. Package "
    "sets are synthetic but shaped like a fleet's (fleet_query_data.py). Queries go through "
    "hidsd.ctl.cmd_query.query (hidsctl's code) over one open connection, one at a time; "
    "hidsctl_path adds a new connection per query, as one hidsctl run does. The controllers "
    "kept receiving ~{hb_rate:.0f} heartbeats/s during the queries. p50/p99 are nearest-rank "
    "over the {q} queries; a query without a reply within {timeout:.0f} s counts as failed. "
    "reply_bytes = the reply as the controller encodes it (zlib over 64 kB), "
    "reply_result_bytes = the answer's msgpack size."
)


class Bench:
    def __init__(self, args: argparse.Namespace, st: Stack, ctl: ControllerSet,
                 pool: WorkerPool, budget: Budget) -> None:  # fmt: skip
        self.args, self.st, self.ctl, self.pool, self.budget = args, st, ctl, pool, budget
        self.settings = CtlSettings(nats=(st.nats_url,), etcd=st.etcd_endpoints,
                                    key_file=Path("/nonexistent"), timeout_s=30.0)  # fmt: skip
        self.qs = queries()

    def meter(self) -> CpuMeter:
        pids = {"coordinator": os.getpid(), **self.ctl.pids(),
                "nats_server": self.st.nats.proc.pid if self.st.nats.proc else 0,
                **{f"etcd-{m.name}": m.proc.pid for m in self.st.etcd.members if m.proc},
                **{f"worker-{i}": p.pid for i, p in enumerate(self.pool.procs)}}  # fmt: skip
        return CpuMeter(pids)

    async def check(self) -> None:
        self.ctl.check_alive()
        self.pool.check_alive()

    async def one(self, q: Query, new_connection: bool = False) -> dict[str, Any]:
        """One query through hidsctl's code: client latency and the reply's accounting."""
        bus = None if new_connection else self.st.bus
        t0 = time.perf_counter()
        try:
            res = await query(self.settings, q.ranges(), MAX_AGE_S, self.args.timeout_s, bus)
        except HidsError as exc:
            return {"name": q.name, "ok": False, "error": str(exc)[:300],
                    "after_ms": round((time.perf_counter() - t0) * 1000, 2)}  # fmt: skip
        latency = time.perf_counter() - t0
        wire = res.to_wire()
        return {"name": q.name, "ok": True, "latency_ms": round(latency * 1000, 2),
                "controller_elapsed_ms": res.elapsed_ms, "ranges": len(q.ranges()),
                "reply_bytes": len(encode_reply(wire)), "reply_result_bytes": len(pack(wire)),
                "counts": wire["counts"], "complete": res.complete, "shards": wire["shards"],
                "counters": dict(res.counters)}  # fmt: skip

    async def settle(self, n: int, offline: int, timeout: float = 90.0) -> float:
        """Until three queries in a row account for N hosts with the offline ones offline."""
        t0 = time.perf_counter()
        good, last = 0, None
        while good < 3:
            await self.check()
            if time.perf_counter() - t0 > timeout:
                raise BenchError(f"presence did not settle within {timeout:.0f}s: {last}")
            res = await self.one(self.qs[0])
            c = res.get("counts", {})
            last = c or res.get("error")
            ok = res["ok"] and c["hosts"] == c["answered"] == n and c["offline_answered"] == offline
            good = good + 1 if ok else 0
            await asyncio.sleep(0.3)
        return round(time.perf_counter() - t0, 2)

    async def round(self) -> dict[str, Any]:
        """Q queries one at a time, with what the machine did meanwhile."""
        a, results = self.args, []
        cpu0 = {c.name: c.cpu_s() for c in self.ctl.running}
        share = MachineShare(self.meter()).start()
        wall0 = time.perf_counter()
        for i in range(a.queries):
            await self.check()
            results.append(await self.one(self.qs[i % len(self.qs)]))
            await asyncio.sleep(a.pause_s)
        lat = [r["latency_ms"] for r in results if r["ok"]]
        cpu1 = {c.name: c.cpu_s() for c in self.ctl.running}
        return {"results": results, "wall_s": round(time.perf_counter() - wall0, 2),
                "p50_ms": r2(percentile(lat, 50)), "p99_ms": r2(percentile(lat, 99)),
                "controllers_cpu_s": {k: r2((cpu1[k] or 0) - (v or 0)) for k, v in cpu0.items()},
                "machine": share.figures()}  # fmt: skip

    async def hidsctl_path(self, rounds: int = 5) -> dict[str, Any]:
        """The first query as one `hidsctl query` run sends it: a new connection each."""
        times = []
        for _ in range(rounds):
            r = await self.one(self.qs[0], new_connection=True)
            if r["ok"]:
                times.append(r["latency_ms"])
            await asyncio.sleep(0.2)
        return {"rounds": rounds, "ok": len(times), "p50_ms": r2(statistics.median(times))
                if times else None, "max_ms": r2(max(times, default=0.0)),
                "note": "hidsd.ctl.cmd_query.query without a bus: new NATS connection, request, "
                        "close (Python start-up and imports not included)"}  # fmt: skip

    async def rebuild(self, n: int, timeout: float) -> dict[str, Any]:
        victim = self.ctl.running[0]
        waited = await wait_for_quiet(self.meter(), self.args.quiet_pct, self.args.quiet_wait_s)
        self.ctl.stop(victim)
        fresh = self.ctl.start(f"fq-c{len(self.ctl.running) + len(self.ctl.stopped) + 1}")
        share = MachineShare(self.meter()).start()
        got = await self.ctl.wait_index(n, time.perf_counter(), timeout, {fresh.name})
        return {"controller": fresh.name, "replaced": victim.name,
                "index_complete_s": got[fresh.name], "waited_for_quiet_s": waited,
                "foreign_cpu_pct": share.figures()["foreign_cpu_pct"], "rss_mb": fresh.rss_mb(),
                "cpu_s": r2(fresh.cpu_s()),
                "note": "from process start (imports, connect, stream subscribe included) to "
                        "the index holding all N hosts, polled every 0.5 s, while the other "
                        "controllers and the heartbeats keep running"}  # fmt: skip


async def run(args: argparse.Namespace) -> dict[str, Any]:
    n = args.agents
    budget = Budget(args.budget_s)
    offline = 0 if args.offline_frac <= 0 else max(1, round(n * args.offline_frac))
    raise_nofile_limit()
    data_root = Path(tempfile.mkdtemp(prefix="hidsd-fleetquery-", dir=args.data_dir))
    try:
        async with local_stack("fleetquery") as st:
            ctl = ControllerSet(
                st,
                env={
                    "HIDSD_CONTROLLER_STREAM_MAX_BYTES": str(64 << 20),
                    "HIDSD_CONTROLLER_INVENTORY_MAX_BYTES": str(max(256 << 20, n * (64 << 10))),
                },
            )
            pool = WorkerPool(st.bus, st.workdir, WORKER)
            try:
                return await measure(args, st, ctl, pool, budget, offline, data_root)
            finally:
                await pool.stop()
                ctl.stop_all()
    finally:
        shutil.rmtree(data_root, ignore_errors=True)


async def measure(args: argparse.Namespace, st: Stack, ctl: ControllerSet, pool: WorkerPool,
                  budget: Budget, offline: int, data_root: Path) -> dict[str, Any]:  # fmt: skip
    n, k = args.agents, args.controllers
    for i in range(k):
        ctl.start(f"fq-c{i + 1}")
    await ctl.wait_members()
    sizes, offs = split(n, args.workers), split(offline, args.workers)
    configs = [{"nats_url": st.nats_url, "data_root": str(data_root), "first": sum(sizes[:i]),
                "count": c, "seed": args.seed, "heartbeat_s": args.heartbeat_s,
                "inflight": args.inflight, "js_timeout_s": args.js_timeout_s}
               for i, c in enumerate(sizes)]  # fmt: skip
    hb = HeartbeatLog()
    sub = await st.bus.subscribe(Subjects().heartbeat_all(), hb.on_msg)
    ready = await pool.start(configs, timeout=budget.share(0.3, 60.0))
    hosts = {f"fq-{i:06d}" for i in range(n)}
    if not await hb.wait_seen(hosts, 60.0):
        raise BenchError(f"only {len(hb.first_seen)} of {n} hosts heartbeating")
    await sub.unsubscribe()
    print(f"{k} controllers and {n} hosts in {len(sizes)} workers up; "
          f"{hb.received} heartbeats seen", flush=True)  # fmt: skip
    bench = Bench(args, st, ctl, pool, budget)
    waited0 = await wait_for_quiet(bench.meter(), args.quiet_pct, args.quiet_wait_s)
    share = MachineShare(bench.meter()).start()
    t_pub = time.perf_counter()
    names = {c.name for c in ctl.running}
    index = asyncio.ensure_future(ctl.wait_index(n, t_pub, budget.share(0.8), names))
    try:
        done = await pool.call("inventories", timeout=budget.share(0.8, 60.0))
        published_s = round(time.perf_counter() - t_pub, 2)
        stored = sum(d["published"] for d in done)
        print(f"{stored}/{n} inventories stored in {published_s}s", flush=True)
        if stored != n:
            raise BenchError(f"only {stored} of {n} inventories were stored: "
                             f"{[d['errors'] for d in done]}")  # fmt: skip
        per_controller = await index
    finally:
        index.cancel()
    live_build_s = max(per_controller.values())
    build_share = share.figures()
    print(f"every controller indexed {n} hosts {live_build_s}s after the first publish", flush=True)
    ping = await ctl.ask(PING)
    rss_index = {c.name: c.rss_mb() for c in ctl.running}
    cpu_index = {c.name: r2(c.cpu_s()) for c in ctl.running}
    byes = await pool.call("bye", per_worker=lambda i: {"offline": offs[i]})
    settle_s = await bench.settle(n, sum(len(b["offline"]) for b in byes))
    print(f"presence settled in {settle_s}s ({offline} offline)", flush=True)

    rounds: list[dict[str, Any]] = []
    for _ in range(args.max_rounds):
        est = args.queries * (args.pause_s + (live_build_s / 100 + 0.2)) + args.quiet_wait_s
        if rounds and not budget.fits("query round", est):
            break
        waited = await wait_for_quiet(bench.meter(), args.quiet_pct, args.quiet_wait_s)
        rounds.append({**await bench.round(), "waited_for_quiet_s": waited})
        foreign = rounds[-1]["machine"]["foreign_cpu_pct"]
        print(f"query round {len(rounds)}: p50 {rounds[-1]['p50_ms']} ms, other work "
              f"{foreign:.0f}% CPU", flush=True)  # fmt: skip
        if foreign <= args.quiet_pct:
            break
    best = min(rounds, key=lambda r: r["machine"]["foreign_cpu_pct"])
    results = best["results"]
    hidsctl = await bench.hidsctl_path()
    rss_queries = {c.name: c.rss_mb() for c in ctl.running}
    rebuild: dict[str, Any] = {}
    if not args.no_rebuild and budget.fits("cold rebuild", live_build_s + 30):
        rebuild = await bench.rebuild(n, budget.share(0.9))
        print(f"cold rebuild: {rebuild['controller']} indexed {n} hosts in "
              f"{rebuild['index_complete_s']}s", flush=True)  # fmt: skip
    stats = await pool.call("stats")

    ok = [r for r in results if r["ok"]]
    lat = [r["latency_ms"] for r in ok]
    first = results[0].get("counts", {})
    hb_bytes = ready[0]["heartbeat_bytes"]
    frame_total = sum(d["frame_bytes_total"] for d in done)
    groups: Counter[str] = Counter()
    lagging: Counter[str] = Counter()
    for d in done:
        groups.update(d["os_groups"])
        lagging.update(d["lagging"])
    return {
        "agents": n, "answered": first.get("answered", 0), "matched": first.get("matched", 0),
        "p50_ms": r2(percentile(lat, 50)), "p99_ms": r2(percentile(lat, 99)),
        "complete": all(r["ok"] and r["complete"] for r in results), "controllers": k,
        "queries": len(results),
        "failed_queries": [{"name": r["name"], "error": r["error"], "after_ms": r["after_ms"]}
                           for r in results if not r["ok"]],
        "incomplete_queries": [r["name"] for r in ok if not r["complete"]],
        "first_query": results[0]["name"], "offline_agents": offline,
        "offline_answered": first.get("offline_answered"), "no_answer": first.get("no_answer"),
        "latency_ms": {
            "min": r2(min(lat, default=None)), "p50": r2(percentile(lat, 50)),
            "p90": r2(percentile(lat, 90)), "p99": r2(percentile(lat, 99)),
            "max": r2(max(lat, default=None)), "mean": r2(statistics.fmean(lat)) if lat else None,
            "controller_elapsed_p50": r2(percentile([r["controller_elapsed_ms"] for r in ok], 50)),
        },
        "by_query": summarize_queries(results),
        "hidsctl_path": hidsctl,
        "index": {
            "live_build_s": live_build_s, "per_controller_s": per_controller,
            "waited_for_quiet_s": waited0, "foreign_cpu_pct": build_share["foreign_cpu_pct"],
            "inventories_published_s": published_s,
            "note": "live: controllers running while the N records are built and published "
                    f"({args.inflight} in flight per worker); from the `inventories` operation "
                    "until every controller's index holds N hosts",
            "inventory_frames_mb": round(frame_total / 1e6, 1),
            "inventory_frame_avg_bytes": round(frame_total / n),
            "inventory_frame_max_bytes": max(d["frame_bytes_max"] for d in done),
            "packages_per_host": {"avg": round(sum(d["packages_total"] for d in done) / n),
                                  "min": min(d["packages_min"] for d in done),
                                  "max": max(d["packages_max"] for d in done)},
            "os_groups": dict(groups), "hosts_lagging_sources": dict(lagging),
            "index_stats": ping.inventory.to_wire(), "cold_rebuild": rebuild,
        },
        "controllers_rss_mb": {"after_index": rss_index, "after_queries": rss_queries},
        "controllers_cpu_s": {"after_index": cpu_index, "during_queries":
                              best["controllers_cpu_s"], "query_phase_wall_s": best["wall_s"]},
        "machine_during_queries": best["machine"],
        "query_rounds": [{"p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                          "foreign_cpu_pct": r["machine"]["foreign_cpu_pct"],
                          "waited_for_quiet_s": r["waited_for_quiet_s"], "reported": r is best}
                         for r in rounds],
        "settle_s": settle_s,
        "heartbeat": {"bytes": hb_bytes, "interval_s": args.heartbeat_s,
                      "rate_per_s": round((n - offline) / args.heartbeat_s, 1)},
        "agent_workers": [{**d, **s} for d, s in zip(done, stats, strict=True)],
        "worker_log_events": log_events(pool.logs),
        "controller_logs": ctl.logs(), "per_query": results, "cut": budget.cut,
        "params": {k_: v for k_, v in vars(args).items() if k_ not in ("out", "data_dir")},
        "notes": NOTES.format(cpus=os.cpu_count(), workers=len(sizes), hb_s=args.heartbeat_s,
                              hb_bytes=hb_bytes, inflight=args.inflight,
                              hb_rate=(n - offline) / args.heartbeat_s, q=len(results),
                              timeout=args.timeout_s),
    }  # fmt: skip


OPTIONS: list[Option] = [
    ("--controllers", int, 2, "controllers K"),
    ("--workers", int, 2, "worker processes simulating the hosts"),
    ("--offline-frac", float, 0.1, "hosts that stop (a bye heartbeat) after their record"),
    ("--heartbeat-s", float, 10.0, "the hosts' heartbeat period (the agent's default)"),
    ("--inflight", int, 32, "inventory records in flight per worker"),
    ("--js-timeout-s", float, 10.0, "JetStream ack timeout of an inventory publish"),
    ("--timeout-s", float, 30.0, "seconds to wait for a query's reply (as hidsctl)"),
    ("--pause-s", float, 0.2, "pause between queries"),
    ("--seed", int, 7, "the fleet's package sets"),
    *quiet_options("query round"),
]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_common_args(p, RESULTS / "fleet_query.json")
    p.add_argument("--agents", type=int, help="fleet size N (default 10,000; 200 with --quick)")
    p.add_argument("--queries", type=int, help="queries Q per round (default 30; 14 --quick)")
    p.add_argument("--max-rounds", type=int, help="query rounds at most (default 3; 1 --quick)")
    p.add_argument("--quiet-wait-s", type=float,
                   help="before a phase, wait at most this long for other work to stop "
                   "(default 30; 0 with --quick)")  # fmt: skip
    add_options(p, OPTIONS)
    p.add_argument("--no-rebuild", action="store_true", help="skip the cold-rebuild phase")
    p.add_argument("--data-dir", type=Path, default=tmpfs(),
                   help="where the workers' data dirs go (default /dev/shm)")  # fmt: skip
    args = p.parse_args(argv)
    full = {"agents": 10_000, "queries": 30, "max_rounds": 3, "quiet_wait_s": 30.0}
    quick_defaults(args, full, {"agents": 200, "queries": 14, "max_rounds": 1, "quiet_wait_s": 0.0})
    if min(args.agents, args.controllers, args.queries, args.workers, args.max_rounds) < 1:
        p.error("--agents, --controllers, --queries, --workers, --max-rounds must be >= 1")
    args.workers = min(args.workers, args.agents)
    return args


if __name__ == "__main__":
    sys.exit(run_benchmark("fleet_query", parse_args(), run, print_summary))
