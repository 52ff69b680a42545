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
    Option,
    add_common_args,
    add_options,
    etcd_watchers,
    fmt,
    ms,
    percentile,
    print_rows,
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
    "Top-level figures are the first 'fleet' round (a new fleet version after a warmup round), "
    "not a median; every round is under 'rounds'. Latency per agent = arrival at the "
    "coordinator of its first heartbeat reporting the new version(s) with status ok, minus t0 "
    "taken just before configplane.set_config (what `hidsctl config set` runs: validate, read "
    "the pointer, one etcd transaction) or configplane.rollback. Local stack: one nats-server "
    "(JetStream on) and one etcd member on loopback, no TLS, no etcd auth (a real agent is its "
    "own etcd user). Every simulated host is a real hidsd.agent.app.Agent (harness SimFleet): "
    "its own ConfigService (one etcd watch per scope pointer: fleet, group bench, group "
    "shard<i%{shards}>, host), hot reload (Agent._apply_config, set_level and "
    "Supervisor.configure included), HeartbeatService (poked by ConfigService.on_status after "
    "every apply) and every other service (commands, convergence, plugin state, breaker with "
    "cgroups off and no plugins, storage), its own NATS connection, no trusted keys (no "
    "commands are sent). Not N hosts: {workers} worker processes of about {per_worker} agents, "
    "each on one uvloop loop, share {cpus} cores with nats-server, etcd and the coordinator; a "
    "worker's agents share one etcd gRPC channel (each watch is its own stream: etcd counted "
    "{watchers} watchers for {agents} agents, {config_watch_keys} on config pointers) and one "
    'log level (every version keeps log_level = "warning": set_level is process-wide). A '
    "worker's agents handle the watch events of one change one after another, so p50/p99 "
    "include waiting behind up to {per_worker} others, which N hosts would not; "
    "all_converged_ms is close to the fleet's total CPU work divided by the cores. Data dirs, "
    "last-good files included, are under {data_dir} (tmpfs: N hosts have N disks). "
    "gc_freeze={gc_freeze}: the workers move the started agents out of the cyclic GC's reach. "
    "phases_ms, with the agent unchanged: watch_event = start of the pointer read of the resync "
    "that applied the version (a delegating wrapper on ConfigService.store; that resync starts "
    "on the watch event), applied = ConfigService's on_status call after the apply (a "
    "delegating wrapper), last_good_saved = the last-good file's ctime (coarse kernel clock, "
    "~1 ms; the round's last save), heartbeat_sent = the counted heartbeat's own sent_at (wall "
    "clock, when built). Against the lite-agent version: real Agents (more work and watches "
    "per agent), no ConfigService subclass, no --profile, heartbeats.config_status_counts "
    "became config_status_at_end (latest heartbeat per host), 'when' became started_at. "
    "same_effective: a version whose effective config equals the running one (no on_apply; "
    "on_status still pokes the heartbeat); concurrent: a fleet and a group version written at "
    "once, 'regressed' = agents that reported both and later ran an older one."
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
    sizes = split(args.agents, max(1, min(args.workers, args.agents)))
    nofile = raise_nofile_limit()
    if max(sizes) + FD_SLACK > nofile:
        raise BenchError(f"{max(sizes)} connections per worker exceed the open-files limit "
                         f"{nofile}: use more --workers")  # fmt: skip
    load = [round(x, 2) for x in os.getloadavg()]
    if load[0] > 1.0:
        warn(f"load average is {load[0]:.1f} before starting: other work shares the CPUs")
    data_root = Path(tempfile.mkdtemp(prefix="hidsd-cfgrollout-data-", dir=args.data_dir))
    params = {**vars(args), "out": str(args.out), "data_dir": str(data_root.parent),
              "workers": len(sizes), "nofile": nofile, "etcd_auth": False}  # fmt: skip
    try:
        async with local_stack("cfgrollout") as st:
            result = await fleet_run(args, st, sizes, data_root, deadline)
    finally:
        shutil.rmtree(data_root, ignore_errors=True)
    after = [round(x, 2) for x in os.getloadavg()]
    return result | {"params": params, "machine": {"loadavg_before": load, "loadavg_after": after}}


async def fleet_run(args: argparse.Namespace, st: Stack, sizes: list[int], data_root: Path,
                    deadline: float) -> dict[str, Any]:  # fmt: skip
    hb = HeartbeatLog()
    await st.bus.subscribe(Subjects().heartbeat_all(), hb.on_msg)
    endpoint = st.etcd_endpoints[0]
    baseline = await asyncio.to_thread(etcd_watchers, endpoint)
    pool = WorkerPool(st.bus, st.workdir, WORKER)
    configs = [{"nats_url": st.nats_url, "etcd_endpoints": list(st.etcd_endpoints),
                "data_root": str(data_root), "first": sum(sizes[:i]), "count": n,
                "connect_batch": args.connect_batch, "gc_freeze": args.gc_freeze,
                "heartbeat_s": args.heartbeat_s, "resync_s": args.resync_s,
                "start_timeout_s": 60.0 + n / 10} for i, n in enumerate(sizes)]  # fmt: skip
    try:
        # spawned before this process opens a gRPC channel: grpc does not like fork()
        t0 = time.perf_counter()
        ready = await pool.start(configs, timeout=min(120.0 + args.agents / 10, args.budget_s / 2))
        worker_of = {h: int(r["worker"]) for r in ready for h in r.pop("hosts")}
        hosts = set(worker_of)
        keys = {k: sum(int(r[k]) for r in ready) for k in ("watch_keys", "config_watch_keys")}
        seen_all = await hb.wait_seen(hosts, 30.0)
        watchers, watch_wait_s = await wait_etcd_watchers(
            endpoint, baseline + keys["watch_keys"], 60.0 + keys["watch_keys"] / 100
        )
        watchers -= baseline
        fleet_s = round(time.perf_counter() - t0, 2)
        print(f"fleet up in {fleet_s}s: {len(hosts)}/{args.agents} agents started, "
              f"{len(hb.first_seen)} heartbeating, etcd watchers {watchers}/{keys['watch_keys']} "
              f"(rss {sum(r['rss_mb'] for r in ready):.0f} MiB)", flush=True)  # fmt: skip
        if len(hosts) < args.agents or not seen_all:
            raise BenchError(f"only {len(hosts)} of {args.agents} agents started and "
                             f"{len(hb.first_seen)} heartbeating")  # fmt: skip
        if watchers < keys["watch_keys"]:
            warn(f"etcd counts {watchers} watchers, expected {keys['watch_keys']}")
        await asyncio.sleep(args.pause_s)
        pids = {"coordinator": os.getpid(), "nats_server": st.nats.proc.pid if st.nats.proc else 0,
                "etcd": st.etcd.members[0].proc.pid if st.etcd.members[0].proc else 0,
                **{f"worker-{i}": p.pid for i, p in enumerate(pool.procs)}}  # fmt: skip
        async with Store(st.etcd_endpoints) as store:
            bench = Bench(args, st, store, pool, hb, hosts, worker_of, CpuMeter(pids), deadline)
            rounds = await bench.rounds()
            stats = await pool.call("stats")
        alive = bench.etcd_alive()
        watchers_end = await asyncio.to_thread(etcd_watchers, endpoint) if alive else None
    finally:
        await pool.stop()
        events = log_events(pool.logs)
        if events:
            print(f"worker log events: {events}", file=sys.stderr, flush=True)
    fleet_rounds = [r for r in rounds if r["round"] == "fleet" and "error" not in r]
    head: dict[str, Any] = fleet_rounds[0] if fleet_rounds else {}
    return {
        "agents": args.agents, "expected": len(hosts),
        **{k: head.get(k) for k in ("converged", "first_ms", "p50_ms", "p99_ms",
                                    "all_converged_ms", "write_ms")},
        "headline_round": "fleet (the first 'fleet' round, after the warmup)",
        "fleet_rounds_all_converged_ms": [r["all_converged_ms"] for r in fleet_rounds],
        "phases_ms": head.get("phases_ms", {}),
        "etcd_watchers": watchers,
        "notes": NOTES.format(
            workers=len(sizes), per_worker=max(sizes), cpus=os.cpu_count(), shards=SHARDS,
            watchers=watchers, agents=args.agents, config_watch_keys=keys["config_watch_keys"],
            data_dir=data_root.parent, gc_freeze=args.gc_freeze),
        "rounds": rounds,
        "setup": {
            "workers": len(sizes), "per_worker": ready, "fleet_up_s": fleet_s, **keys,
            "etcd_watchers_at_start": watchers,
            "etcd_watchers_at_end": None if watchers_end is None else watchers_end - baseline,
            "etcd_exited": not alive, "watchers_wait_s": watch_wait_s,
            "worker_log_events": events,
        },
        "worker_stats": stats,
        "heartbeats": {
            "received": hb.received, "undecodable": hb.bad, "byes": hb.byes,
            "config_status_at_end": dict(Counter(h.config.status for h in hb.latest.values())),
        },
    }  # fmt: skip


def print_summary(r: dict[str, Any]) -> None:
    rows = [(label, fmt(r[key], unit)) for label, key, unit in (
        ("agents (N)", "agents", ""), ("converged (fleet round)", "converged", ""),
        ("config set (etcd write)", "write_ms", "ms"), ("first agent reported", "first_ms", "ms"),
        ("p50", "p50_ms", "ms"), ("p99", "p99_ms", "ms"),
        ("all converged", "all_converged_ms", "ms"))]  # fmt: skip
    rows += [(f"  p50 {step.replace('_', ' ')}", fmt(r["phases_ms"].get(step, {}).get("p50_ms")))
             for step in (*STEPS, "heartbeat_sent")]  # fmt: skip
    rows.append(("etcd watchers", fmt(r["etcd_watchers"], "")))
    print_rows(f"hidsd config rollout, N={r['agents']} ({r['setup']['workers']} workers)", rows,
               r["quick"])  # fmt: skip
    print(f"{'round':<16} {'converged':>11} {'p50':>10} {'p99':>10} {'all':>10}  at end")
    for rnd in r["rounds"]:
        if "error" in rnd:
            print(f"{rnd['round']:<16} {rnd['error']}")
            continue
        conv = f"{rnd['converged']}/{rnd['expected']}"
        print(f"{rnd['round']:<16} {conv:>11} {fmt(rnd['p50_ms']):>10} {fmt(rnd['p99_ms']):>10} "
              f"{fmt(rnd['all_converged_ms']):>10}  "
              f"{rnd['regressed']} regressed, {rnd['never_applied']} never applied")  # fmt: skip


OPTIONS: list[Option] = [
    ("--workers", int, 4, "worker processes"),
    ("--wait-s", float, 30.0, "how long a round waits for every agent"),
    ("--pause-s", float, 1.5, "quiet time between rounds"),
    ("--fleet-rounds", int, 1, "fleet-scope rounds after the warmup (the first is the headline)"),
    ("--concurrent-rounds", int, 1, "rounds that write a fleet and a group version at once"),
    ("--heartbeat-s", float, 10.0, "the agents' bootstrap heartbeat period (as the agent's)"),
    ("--resync-s", float, 60.0, "the agents' bootstrap resync period (as the agent's)"),
    ("--connect-batch", int, 100, "agents a worker starts at once"),
    ("--budget-s", float, 540.0, "rounds that would end later than this after the start are "
     "cut (the whole run stays under 10 minutes)"),
]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_common_args(p, RESULTS / "config_rollout.json")
    p.add_argument("--agents", type=int, help="fleet size N (default 1000; 100 with --quick)")
    add_options(p, OPTIONS)
    p.add_argument(
        "--skip-probes", action="store_true", help="skip the same-effective and concurrent probes"
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
    args = p.parse_args(argv)  # fmt: skip
    if args.agents is None:
        args.agents = 100 if args.quick else 1000
    if args.agents < 1 or args.fleet_rounds < 1:
        p.error("--agents and --fleet-rounds must be at least 1")
    return args


if __name__ == "__main__":
    sys.exit(run_benchmark("config_rollout", parse_args(), run, print_summary))
