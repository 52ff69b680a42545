"""Config rollout benchmark: time from `hidsctl config set` to N agents reporting the version.

Usage::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/config_rollout.py [--agents 1000] [--quick]

A local stack (`harness.stack`: nats-server, one etcd member) and `--workers` worker processes
(`config_rollout_worker.py`), each running its slice of N real agents (`harness.fleet`).
Each round, timed on CLOCK_MONOTONIC (system-wide, so the workers' stamps compare with the
coordinator's): t0 just before the real `hidsd.ctl.configplane.set_config` (what `hidsctl
config set` runs) or `configplane.rollback`; per agent, the arrival at the coordinator's
subscription on the heartbeat subjects of its first heartbeat (decoded with
`hidsd.wire.heartbeat.decode_heartbeat`) that reports the new version(s) with status "ok".
Rounds:

0. warmup: fleet v1 (the first config the fleet sees: also warms etcd and the gRPC channels);
1. fleet: a new fleet version (the headline figures);
2. group: a new `group:bench` version (every agent is in group `bench`);
3. rollback: `configplane.rollback` of the fleet scope to v1 (a new version, v1's content);
4. same-effective probe: a fleet version whose settings equal the current ones (a comment
   differs): the agents take it but their effective config does not change;
5. concurrent probe: a fleet and a group version written at the same time.

Writes `benchmarks/results/config_rollout.json` (or `--out`) and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config_rollout_worker import GROUP, SHARDS
from harness.fleet import tmpfs
from harness.heartbeats import HeartbeatLog
from harness.procs import CpuMeter, log_events
from harness.report import (
    RESULTS,
    BenchError,
    add_common_args,
    etcd_watchers,
    fmt,
    ms,
    percentile,
    raise_nofile_limit,
    run_benchmark,
    wait_etcd_watchers,
    warn,
)
from harness.stack import Stack, local_stack
from harness.workers import WorkerPool, split

from hidsd.base.errors import HidsError
from hidsd.bus.store import Store
from hidsd.ctl import configplane
from hidsd.wire.configstore import ConfigVersion
from hidsd.wire.heartbeat import Heartbeat
from hidsd.wire.names import FLEET_TARGET, KeyLayout, Scope, Subjects

WORKER = Path(__file__).resolve().parent / "config_rollout_worker.py"
AUTHOR = "benchmarks/config_rollout.py"
#: descriptors a worker keeps besides one NATS connection per agent (etcd, files, slack)
FD_SLACK = 256
#: a round's etcd write; returns the versions it created
Write = Callable[[], Awaitable[list[ConfigVersion]]]
#: the per-phase breakdown: the workers' stamps, then the heartbeat's own `sent_at`
STEPS = ("watch_event", "applied", "last_good_saved")

# Every version keeps log_level = "warning": `Agent._apply_config` calls `set_level`, which is
# process-wide, so one level holds for every agent of a worker.
LEVEL = 'log_level = "warning"\n'
CONTENT_A = LEVEL + "[telemetry]\nrate_per_s = 1500\n"
CONTENT_B = LEVEL + "[telemetry]\nrate_per_s = 2000\n"
CONTENT_C = LEVEL + "[telemetry]\nrate_per_s = 2500\n"
CONTENT_A_COMMENTED = "# same settings as v1, new version\n" + CONTENT_A
CONTENT_GROUP = LEVEL + "[telemetry]\nburst = 4000\n"
CONTENT_GROUP_2 = LEVEL + "[telemetry]\nburst = 5000\n"

NOTES = (
    "Top-level figures are the 'fleet' round (a new fleet-scope version after a warmup round), "
    "not a median of rounds; every round is under 'rounds'. Latency per agent = arrival at "
    "the coordinator of its first heartbeat reporting the new version(s) with status ok, minus "
    "t0 taken just before configplane.set_config (what `hidsctl config set` runs: validate, "
    "read the pointer, one etcd transaction) or configplane.rollback. "
    "Local stack: one nats-server (JetStream on) and one etcd member on loopback, no TLS and no "
    "etcd auth (a real agent authenticates as its own etcd user; these do not). "
    "Every simulated host is a real hidsd.agent.app.Agent (harness SimFleet): its own "
    "ConfigService (start read, one etcd watch per scope pointer: fleet, group bench, group "
    "shard<i%{shards}>, host), hot reload (Agent._apply_config, set_level and "
    "Supervisor.configure included), HeartbeatService (poked by ConfigService.on_status after "
    "every apply), and also the command path, convergence, plugin state, breaker (cgroups off, "
    "no plugins) and storage services, with its own NATS connection; no trusted keys (no "
    "commands are sent). Not N hosts: {workers} worker processes each run about {per_worker} "
    "agents on one uvloop event loop, sharing {cpus} CPU cores with nats-server, etcd and the "
    "coordinator; the agents of a worker share one etcd gRPC channel (every watch is still its "
    "own stream; etcd counted {watchers} watchers for {agents} agents, {config_watch_keys} of "
    "them on config pointers) and one log level (warning; every config version keeps "
    'log_level = "warning" since set_level is process-wide). Queueing: a worker\'s agents '
    "handle the watch events of one change one after another on one loop, so p50/p99 include "
    "waiting behind up to {per_worker} other agents, which N real hosts would not; "
    "all_converged_ms is close to the fleet's total CPU work divided by the cores. "
    "Agents' data dirs, last-good files included, go to {data_dir} (a tmpfs where available: "
    "N agents' files would be on N disks). gc_freeze={gc_freeze}: after start the workers move "
    "the long-lived agents out of the cyclic GC's reach. phases_ms, without any change to the "
    "agent: watch_event = when the resync that applied the version began its pointer read (a "
    "delegating wrapper on ConfigService.store; the resync directly follows the watch event), "
    "applied = when ConfigService called on_status after the apply (a delegating wrapper), "
    "last_good_saved = the last-good file's ctime (kernel coarse clock, about 1 ms; in a "
    "round with two applies, the last save), heartbeat_sent = the counted heartbeat's own "
    "sent_at (wall clock, when it was built), heartbeat_received = the latency itself. "
    "Changes from the lite-agent version: real Agents instead of lite agents (so more work "
    "per agent and more watches), the old ConfigService subclass is gone, no --profile, "
    "heartbeats.config_status_counts became config_status_at_end (the latest heartbeat per "
    "host), 'when' became started_at. Probe rounds: same_effective shows how long a version "
    "whose effective config equals the running one takes to be reported (on_apply is not "
    "called, on_status still pokes the heartbeat); concurrent writes a fleet and a group "
    "version at once and counts agents that reported both and later ran an older one "
    "('regressed')."
)


def spread(values_s: list[float]) -> dict[str, Any]:
    """n and percentiles (ms) of latencies in seconds."""
    return {"n": len(values_s), **{f"p{p}_ms": ms(percentile(values_s, p)) for p in (50, 90, 99)},
            "max_ms": ms(max(values_s)) if values_s else None}  # fmt: skip


def reports(wanted: dict[str, int]) -> Callable[[Heartbeat], bool]:
    def want(hb: Heartbeat) -> bool:
        cfg = hb.config
        return cfg.status == "ok" and all(cfg.versions.get(k) == v for k, v in wanted.items())

    return want


@dataclass
class Bench:
    """The coordinator's state across rounds."""

    args: argparse.Namespace
    stack: Stack
    store: Store
    pool: WorkerPool
    hb: HeartbeatLog
    hosts: set[str]
    worker_of: dict[str, int]
    cpu: CpuMeter
    deadline: float
    keys: KeyLayout = field(default_factory=KeyLayout)

    def etcd_alive(self) -> bool:
        proc = self.stack.etcd.members[0].proc
        return proc is not None and proc.poll() is None

    async def measure(self, name: str, write: Write, wait_s: float, note: str) -> dict[str, Any]:
        """Arm the workers, write, wait for every agent's heartbeat with the new versions."""
        await self.pool.call("arm")
        self.hb.begin()
        received0, cpu0 = self.hb.received, self.cpu.sample()
        t0, t0_wall = time.monotonic(), time.time()
        written = await write()
        t_written = time.monotonic()
        wanted = {cv.scope: cv.version for cv in written}
        exp = self.hb.expect(reports(wanted), self.hosts)
        await exp.wait(wait_s)
        t_end = time.monotonic()
        cpu_ms = self.cpu.since(cpu0)
        self.hb.end()
        state: dict[str, dict[str, Any]] = {}
        for r in await self.pool.call("report", t0=t0, t0_wall=t0_wall):
            state.update(r["agents"])
        got = exp.arrivals
        runs = {h: state.get(h, {}).get("versions", {}) for h in self.hosts}
        now_other = {h for h, v in runs.items() if any(v.get(k) != n for k, n in wanted.items())}
        # an agent that reported the versions once and no longer runs them went backwards
        regressed, never = sorted(now_other & got.keys()), sorted(now_other - got.keys())
        marks = [s["marks"] for h, s in state.items() if h in self.hosts]
        phases = {step: spread([m[i] / 1000 for m in marks if m[i] is not None])
                  for i, step in enumerate(STEPS)}  # fmt: skip
        phases["heartbeat_sent"] = spread([a.heartbeat.sent_at - t0_wall for a in got.values()])
        phases["heartbeat_received"] = spread([a.at - t0 for a in got.values()])
        summary = exp.summary(t0, self.worker_of)
        result = {
            "round": name, "wanted": wanted, "note": note, **summary,
            "write_ms": ms(t_written - t0), "waited_ms": ms(t_end - t0),
            "missing_state": {h: state.get(h) for h in exp.missing[:5]},
            "regressed": len(regressed), "regressed_hosts": regressed[:20],
            "regressed_state": {h: state.get(h) for h in regressed[:5]},
            "never_applied": len(never),
            "heartbeats_received": self.hb.received - received0,
            "cpu_ms": cpu_ms,
            "cpu_note": "CPU time per process from just before the write to the last arrival",
            "phases_ms": phases,
        }  # fmt: skip
        print(f"{name:>16}: {len(got)}/{len(self.hosts)} converged; write "
              f"{result['write_ms']} ms, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
              f"all {result['all_converged_ms']} ms"
              + (f"; {len(regressed)} went back to older versions" if regressed else "")
              + (f"; {len(never)} never applied it" if never else ""), flush=True)  # fmt: skip
        return result

    def writer(self, scope: Scope, target: str, content: str, message: str) -> Write:
        """A round's write: `configplane.set_config`, what `hidsctl config set` runs."""

        async def write() -> list[ConfigVersion]:
            return [await configplane.set_config(self.store, self.keys, scope, target, content,
                                                 message, AUTHOR)]  # fmt: skip

        return write

    async def rollback(self) -> list[ConfigVersion]:
        """`configplane.rollback` of the fleet scope to v1 (what `hidsctl config rollback` runs)."""
        return [await configplane.rollback(self.store, self.keys, Scope.FLEET, FLEET_TARGET, 1,
                                           "bench rollback", AUTHOR)]  # fmt: skip

    def concurrent(self, fleet_content: str, group_content: str) -> Write:
        """Two writers at once: a fleet version and a group version."""

        async def write() -> list[ConfigVersion]:
            fleet, group = await asyncio.gather(
                self.writer(Scope.FLEET, FLEET_TARGET, fleet_content, "bench concurrent")(),
                self.writer(Scope.GROUP, GROUP, group_content, "bench concurrent")(),
            )
            return fleet + group

        return write

    def plan(self) -> list[tuple[str, Write, float, str]]:
        """The rounds: (name, write, how long to wait, note)."""
        a, wait_s = self.args, self.args.wait_s
        fleet = Scope.FLEET, FLEET_TARGET
        rounds = [("warmup", self.writer(*fleet, CONTENT_A, "bench warmup"), wait_s,
                   "fleet v1: the first config the fleet sees")]  # fmt: skip
        for k in range(a.fleet_rounds):  # never A: the rollback goes back to A
            content = (CONTENT_B, CONTENT_C)[k % 2]
            rounds.append(("fleet", self.writer(*fleet, content, "bench fleet"), wait_s,
                           "a new fleet version (the first is the headline round)"))  # fmt: skip
        rounds += [
            ("group", self.writer(Scope.GROUP, GROUP, CONTENT_GROUP, "bench group"), wait_s,
             f"a new group:{GROUP} version"),
            ("rollback", self.rollback, wait_s, "configplane.rollback of the fleet scope to v1"),
        ]  # fmt: skip
        if a.skip_probes:
            return rounds
        rounds.append(
            ("same_effective", self.writer(*fleet, CONTENT_A_COMMENTED, "bench: comment only"),
             a.heartbeat_s * 1.1 + 5.0,
             "a fleet version with the same settings (a comment differs): the effective config "
             "does not change, so ConfigService does not call on_apply; its on_status still "
             "pokes the heartbeat, which reports the new version at once")
        )  # fmt: skip
        for k in range(a.concurrent_rounds):  # the fleet runs A before the first of these
            both = self.concurrent((CONTENT_B, CONTENT_C)[k % 2],
                                   (CONTENT_GROUP_2, CONTENT_GROUP)[k % 2])  # fmt: skip
            rounds.append(("concurrent", both, wait_s, f"a fleet and a group:{GROUP} version "
                           "written at the same time (two writers)"))  # fmt: skip
        return rounds

    async def rounds(self) -> list[dict[str, Any]]:
        """Run the planned rounds; cut the rest if etcd exits or the time budget would run out."""
        out: list[dict[str, Any]] = []
        for i, (name, write, wait_s, note) in enumerate(self.plan()):
            if time.monotonic() + self.args.pause_s + wait_s > self.deadline:
                warn(f"the {name!r} round could overrun the time budget: rounds cut from here")
                out.append({"round": name, "error": "cut: over the time budget"})
                break
            if i:
                await asyncio.sleep(self.args.pause_s)
            try:
                out.append(await self.measure(name, write, wait_s, note))
            except HidsError as exc:
                if self.etcd_alive():
                    raise
                out.append({"round": name, "error": f"etcd exited: {exc}"})
            if not self.etcd_alive():
                warn(f"etcd exited during the {name!r} round; no further rounds")
                break
        return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the stack and the fleet, run the rounds, stop everything (also on Ctrl-C)."""
    deadline = time.monotonic() + args.budget_s
    agents = args.agents
    workers = max(1, min(args.workers, agents))
    sizes = split(agents, workers)
    nofile = raise_nofile_limit()
    if max(sizes) + FD_SLACK > nofile:
        raise BenchError(f"{max(sizes)} connections per worker exceed the open-files limit "
                         f"{nofile}: use more --workers")  # fmt: skip
    load_before = os.getloadavg()
    if load_before[0] > 1.0:
        warn(f"load average is {load_before[0]:.1f} before starting: other work shares the CPUs")
    data_root = Path(tempfile.mkdtemp(prefix="hidsd-cfgrollout-data-", dir=args.data_dir))
    try:
        async with local_stack("cfgrollout") as st:
            return await fleet_run(args, st, sizes, data_root, deadline) | {
                "params": {**vars(args), "out": str(args.out), "data_dir": str(data_root.parent),
                           "workers": workers, "nofile": nofile, "etcd_auth": False},
                "machine": {"loadavg_before": [round(x, 2) for x in load_before],
                            "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
            }  # fmt: skip
    finally:
        shutil.rmtree(data_root, ignore_errors=True)


async def fleet_run(args: argparse.Namespace, st: Stack, sizes: list[int], data_root: Path,
                    deadline: float) -> dict[str, Any]:  # fmt: skip
    hb = HeartbeatLog()
    await st.bus.subscribe(Subjects().heartbeat_all(), hb.on_msg)
    endpoint = st.etcd_endpoints[0]
    baseline = await asyncio.to_thread(etcd_watchers, endpoint)
    pool = WorkerPool(st.bus, st.workdir, WORKER)
    firsts = [sum(sizes[:i]) for i in range(len(sizes))]
    configs = [{"nats_url": st.nats_url, "etcd_endpoints": list(st.etcd_endpoints),
                "data_root": str(data_root), "first": f, "count": n,
                "connect_batch": args.connect_batch, "gc_freeze": args.gc_freeze,
                "heartbeat_s": args.heartbeat_s, "resync_s": args.resync_s,
                "start_timeout_s": 60.0 + n / 10}
               for f, n in zip(firsts, sizes, strict=True)]  # fmt: skip
    try:
        # spawned before this process opens a gRPC channel: grpc does not like fork()
        t0 = time.perf_counter()
        ready = await pool.start(configs, timeout=120.0 + args.agents / 10)
        worker_of = {h: int(r["worker"]) for r in ready for h in r.pop("hosts")}
        hosts = set(worker_of)
        started = sum(int(r["started"]) for r in ready)
        watch_keys = sum(int(r["watch_keys"]) for r in ready)
        seen_all = await hb.wait_seen(hosts, 30.0)
        watchers, watch_wait_s = await wait_etcd_watchers(endpoint, baseline + watch_keys,
                                                     60.0 + watch_keys / 100)  # fmt: skip
        fleet_s = round(time.perf_counter() - t0, 2)
        print(f"fleet up in {fleet_s}s: {started}/{args.agents} agents started, "
              f"{len(hb.first_seen)} heartbeating, etcd watchers {watchers - baseline}/"
              f"{watch_keys} (rss {sum(r['rss_mb'] for r in ready):.0f} MiB)",
              flush=True)  # fmt: skip
        if started < args.agents or not seen_all:
            raise BenchError(f"only {started} of {args.agents} agents started and "
                             f"{len(hb.first_seen)} heartbeating")  # fmt: skip
        if watchers - baseline < watch_keys:
            warn(f"etcd counts {watchers - baseline} watchers, expected {watch_keys}")
        await asyncio.sleep(args.pause_s)
        pids = {"coordinator": os.getpid(),
                "nats_server": st.nats.proc.pid if st.nats.proc else 0,
                "etcd": st.etcd.members[0].proc.pid if st.etcd.members[0].proc else 0,
                **{f"worker-{i}": p.pid for i, p in enumerate(pool.procs)}}  # fmt: skip
        async with Store(st.etcd_endpoints) as store:
            bench = Bench(args, st, store, pool, hb, hosts, worker_of, CpuMeter(pids), deadline)
            rounds = await bench.rounds()
            stats = await pool.call("stats")
        watchers_end = (
            await asyncio.to_thread(etcd_watchers, endpoint) if bench.etcd_alive() else None
        )
    finally:
        await pool.stop()
        events = log_events(pool.logs)
        if events:
            print(f"worker log events: {events}", file=sys.stderr, flush=True)
    fleet_rounds = [r for r in rounds if r["round"] == "fleet" and "error" not in r]
    head: dict[str, Any] = fleet_rounds[0] if fleet_rounds else {}
    config_watch_keys = sum(int(r["config_watch_keys"]) for r in ready)
    return {
        "agents": args.agents, "expected": len(hosts),
        **{k: head.get(k) for k in ("converged", "first_ms", "p50_ms", "p99_ms",
                                    "all_converged_ms", "write_ms")},
        "headline_round": "fleet (the first 'fleet' round, after the warmup)",
        "fleet_rounds_all_converged_ms": [r["all_converged_ms"] for r in fleet_rounds],
        "phases_ms": head.get("phases_ms", {}),
        "etcd_watchers": watchers - baseline,
        "notes": NOTES.format(
            workers=len(sizes), per_worker=max(sizes), cpus=os.cpu_count(), shards=SHARDS,
            watchers=watchers - baseline, agents=args.agents,
            config_watch_keys=config_watch_keys, data_dir=data_root.parent,
            gc_freeze=args.gc_freeze),
        "rounds": rounds,
        "setup": {
            "workers": len(sizes), "per_worker": ready, "fleet_up_s": fleet_s,
            "started": started, "watch_keys": watch_keys, "config_watch_keys": config_watch_keys,
            "etcd_watchers_at_start": watchers - baseline,
            "etcd_watchers_at_end": None if watchers_end is None else watchers_end - baseline,
            "etcd_exited": not bench.etcd_alive(), "watchers_wait_s": watch_wait_s,
            "worker_log_events": events,
        },
        "worker_stats": stats,
        "heartbeats": {
            "received": hb.received, "undecodable": hb.bad, "byes": hb.byes,
            "config_status_at_end": dict(Counter(h.config.status for h in hb.latest.values())),
        },
    }  # fmt: skip


def print_summary(r: dict[str, Any]) -> None:
    ph = {step: r["phases_ms"].get(step, {}) for step in (*STEPS, "heartbeat_sent")}
    rows = [
        ("agents (N)", fmt(r["agents"], "")),
        ("converged (fleet round)", fmt(r["converged"], "")),
        ("config set (etcd write)", fmt(r["write_ms"])),
        ("first agent reported", fmt(r["first_ms"])),
        ("p50", fmt(r["p50_ms"])),
        ("p99", fmt(r["p99_ms"])),
        ("all converged", fmt(r["all_converged_ms"])),
        *((f"  p50 {step.replace('_', ' ')}", fmt(ph[step].get("p50_ms"))) for step in ph),
        ("etcd watchers", fmt(r["etcd_watchers"], "")),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"\nhidsd config rollout, N={r['agents']} ({r['setup']['workers']} workers)"
          f"{' (quick)' if r['quick'] else ''}")  # fmt: skip
    print("-" * (width + 16))
    for k, v in rows:
        print(f"{k:<{width}}  {v:>12}")
    print("-" * (width + 16))
    print(f"{'round':<16} {'converged':>11} {'p50':>10} {'p99':>10} {'all':>10}  at end")
    for rnd in r["rounds"]:
        if "error" in rnd:
            print(f"{rnd['round']:<16} {rnd['error']}")
            continue
        conv = f"{rnd['converged']}/{rnd['expected']}"
        print(f"{rnd['round']:<16} {conv:>11} {fmt(rnd['p50_ms']):>10} {fmt(rnd['p99_ms']):>10} "
              f"{fmt(rnd['all_converged_ms']):>10}  "
              f"{rnd['regressed']} regressed, {rnd['never_applied']} never applied")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_common_args(p, RESULTS / "config_rollout.json")
    p.add_argument(
        "--agents", type=int, default=None, help="fleet size N (default 1000; 100 with --quick)"
    )
    p.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    p.add_argument(
        "--wait-s",
        type=float,
        default=30.0,
        help="how long a round waits for every agent (default 30)",
    )
    p.add_argument("--pause-s", type=float, default=1.5, help="quiet time between rounds")
    p.add_argument(
        "--fleet-rounds",
        type=int,
        default=1,
        help="fleet-scope rounds after the warmup (default 1; the first is headline)",
    )
    p.add_argument(
        "--concurrent-rounds",
        type=int,
        default=1,
        help="rounds that write a fleet and a group version at once (default 1)",
    )
    p.add_argument(
        "--skip-probes", action="store_true", help="skip the same-effective and concurrent probes"
    )
    p.add_argument(
        "--heartbeat-s",
        type=float,
        default=10.0,
        help="the agents' bootstrap heartbeat period (default 10, as the agent's)",
    )
    p.add_argument(
        "--resync-s",
        type=float,
        default=60.0,
        help="the agents' bootstrap resync period (default 60, as the agent's)",
    )
    p.add_argument(
        "--connect-batch",
        type=int,
        default=100,
        help="agents a worker starts at once (default 100)",
    )
    p.add_argument(
        "--no-gc-freeze",
        dest="gc_freeze",
        action="store_false",
        help="do not gc.freeze() the fleet in the workers after start",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=tmpfs(),
        help="where the agents' data dirs (last-good files) go (default /dev/shm)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=540.0,
        help="cut the rounds that would end later than this after the start "
        "(default 540: the whole run stays under 10 minutes)",
    )
    args = p.parse_args(argv)  # fmt: skip
    if args.agents is None:
        args.agents = 100 if args.quick else 1000
    if args.agents < 1:
        p.error("--agents must be at least 1")
    if args.fleet_rounds < 1:
        p.error("--fleet-rounds must be at least 1")
    return args


if __name__ == "__main__":
    sys.exit(run_benchmark("config_rollout", parse_args(), run, print_summary))
