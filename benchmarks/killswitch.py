"""Kill-switch benchmark: how fast a signed fleet-wide stop reaches N agents and is acked.

Usage::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/killswitch.py [--agents 1000] [--quick]
        [--workers 4] [--no-watch] [--budget-s 540]

A local stack (`harness.stack`: nats-server, one etcd member) and `--workers` worker processes
(`killswitch_worker.py`), each running its slice of N real agents (`harness.fleet`). Phases,
timed on the coordinator's perf_counter; acks are counted per host once, its first `applied`
ack (`harness.acks`), with the path that reached it first read from the ack's detail:

1. floor: one message on a plain subject that every agent's own connection answers with an
   empty reply (no agent code); time until all N replies arrived (median of `--floor-rounds`).
2. offline: `--offline-frac` of the agents (at least one) stop as on SIGTERM.
3. kill switch (the main figures): t0, then the stop is recorded by hidsctl's own code
   (`hidsd.ctl.killswitch.issue_command` without a bus: what `hidsctl stop` does when NATS is
   unreachable: one etcd transaction, the signed desired state plus the audit entry), then a
   raw signed broadcast of it (its revision, on `cmd.all`). Latency = ack arrival - t0.
   Agents that watch etcd (the default) may learn it from their watch before the broadcast
   leaves; `--no-watch` runs agents without the watch: the NATS path alone.
4. offline converge: the offline agents start again (state file, start read from etcd, the
   ack once connected); time from the signal to the last of their acks.
5. etcd watch (reference; not with `--no-watch`): a resume recorded in etcd the same way and
   nothing on NATS; every agent (M = N) learns it through its own watch; put -> last ack.
6. hidsctl path: the real `issue_command` end to end, the expected set from a real controller
   (`python -m hidsd.controller.main`, started for this phase once it sees every host).

Writes `benchmarks/results/killswitch-<N>.json` (`killswitch.json` for N=10,000; a `-nowatch`
suffix with `--no-watch`; or `--out`) and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.acks import AckLog
from harness.controllers import ControllerSet
from harness.fleet import tmpfs
from harness.procs import log_events
from harness.report import (
    RESULTS,
    BenchError,
    Budget,
    Option,
    add_common_args,
    add_options,
    etcd_watchers,
    ms,
    percentile,
    raise_nofile_limit,
    run_benchmark,
    wait_etcd_watchers,
    warn,
)
from harness.stack import Stack, local_stack
from harness.workers import WorkerPool, split
from killswitch_figures import NOTES, print_summary, ratio
from killswitch_worker import FLOOR_SUBJECT
from nats.aio.msg import Msg

from hidsd.bus.store import Store
from hidsd.bus.transport import Bus
from hidsd.ctl.killswitch import DEFAULT_TTL_S, IssueResult, issue_command
from hidsd.wire.commands import Ack, Command, CommandKind
from hidsd.wire.names import FLEET_TARGET, KeyLayout, Scope, Subjects
from hidsd.wire.signing import OperatorKey, encode_public_key

WORKER = Path(__file__).resolve().parent / "killswitch_worker.py"
AUTHOR = "benchmarks/killswitch.py"
#: descriptors a worker keeps besides one NATS connection per agent (etcd, files, slack)
FD_SLACK = 256
#: the default result file; N=10,000 writes killswitch.json (the figure the README cites)
OUT_TEMPLATE = RESULTS / "killswitch-<N>.json"


async def floor_round(bus: Bus, replies: int, timeout: float) -> dict[str, Any]:
    """One message to every agent connection's floor handler; time until `replies` answers."""
    inbox = bus.client.new_inbox()
    times: list[float] = []
    done = asyncio.Event()

    async def on_reply(_msg: Msg) -> None:
        times.append(time.perf_counter())
        if len(times) >= replies:
            done.set()

    sub = await bus.subscribe(inbox, on_reply)
    try:
        t0 = time.perf_counter()
        await bus.publish(FLOOR_SUBJECT, b"", reply=inbox)
        await bus.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout)
    finally:
        await sub.unsubscribe()
    lat = [t - t0 for t in times]
    return {"expected": replies, "replies": len(lat), "first_ms": ms(min(lat)) if lat else None,
            "p50_ms": ms(percentile(lat, 50)),
            "all_ms": ms(max(lat)) if len(lat) >= replies else None}  # fmt: skip


async def floor_rounds(bus: Bus, replies: int, rounds: int, timeout: float) -> dict[str, Any]:
    results = []
    for _ in range(rounds):
        results.append(await floor_round(bus, replies, timeout))
        await asyncio.sleep(0.3)
    alls = [r["all_ms"] for r in results if r["all_ms"] is not None]
    return {"all_ms_median": round(statistics.median(alls), 2) if alls else None,
            "rounds": results}  # fmt: skip


@dataclass
class Bench:
    """The coordinator's state across phases."""

    args: argparse.Namespace
    st: Stack
    store: Store
    pool: WorkerPool
    key: OperatorKey
    worker_of: dict[str, int]
    budget: Budget
    subjects: Subjects = field(default_factory=Subjects)
    keys: KeyLayout = field(default_factory=KeyLayout)
    #: the kill switch's ack subscription, kept for the offline agents' acks
    ack_sub: Any = None

    async def record(self, kind: CommandKind) -> IssueResult:
        """hidsctl's own record step: `issue_command` without a bus records and returns."""
        return await issue_command(
            kind=kind, scope=Scope.FLEET, target=FLEET_TARGET, key=self.key, bus=None,
            store=self.store, subjects=self.subjects, keys=self.keys, wait_s=0.0, author=AUTHOR,
        )  # fmt: skip

    async def killswitch(self, online: set[str]) -> tuple[AckLog, dict[str, Any]]:
        """Record the stop (hidsctl's code), then broadcast it signed with its revision."""
        acks = AckLog()
        sub = await self.st.bus.subscribe(self.subjects.ack_all(), acks.on_msg)
        t0 = time.perf_counter()
        rec = await self.record(CommandKind.STOP)
        acks.bind(rec.cmd_id)
        issued_at = time.time()
        cmd = Command(rec.cmd_id, CommandKind.STOP, Scope.FLEET, FLEET_TARGET, rec.rev, issued_at,
                      issued_at + DEFAULT_TTL_S, {})  # fmt: skip
        envelope = self.key.sign_command(cmd)
        t_pub = time.perf_counter()
        await self.st.bus.publish(self.subjects.cmd_for(Scope.FLEET, FLEET_TARGET), envelope)
        await self.st.bus.flush()
        await acks.wait_for(online, self.args.wait_s)
        out = acks.summary(online, t0, self.worker_of)
        before_pub = sum(1 for t, _ in acks.applied.values() if t < t_pub)
        out.update(cmd_id=rec.cmd_id, rev=rec.rev, record_ms=round(rec.record_ms, 2),
                   published_ms=ms(t_pub - t0), acked_before_publish=before_pub,
                   envelope_bytes=len(envelope))  # fmt: skip
        self.ack_sub = sub
        return acks, out

    async def reconnect(self, acks: AckLog, offline: set[str]) -> dict[str, Any]:
        """The offline agents start again, read etcd, and ack the stop they missed."""
        t0 = time.perf_counter()
        replies, ok = await asyncio.gather(
            self.pool.call("reconnect", timeout=self.budget.share(0.5, 60.0)),
            acks.wait_for(offline, self.args.wait_s + 60.0),
        )
        s = acks.summary(offline, t0, self.worker_of)
        await self.ack_sub.unsubscribe()
        return {
            "agents": len(offline), "converged": s["acked"], "complete": ok,
            "converge_ms": s["all_acked_ms"],
            **{k: s[k] for k in ("first_ack_ms", "p50_ms", "last_ack_ms", "first_ack_path",
                                 "by_worker", "statuses", "missing_hosts")},
            "worker_outcomes": {"restarted": sum(r["started"] for r in replies),
                                "failed": sum(r["failed"] for r in replies)},
            "worker_s": [r["worker_s"] for r in replies],
        }  # fmt: skip

    async def watch(self, hosts: set[str], watchers: int) -> dict[str, Any]:
        """A resume recorded in etcd and nothing on NATS: the agents' own watches carry it."""
        acks = AckLog()
        sub = await self.st.bus.subscribe(self.subjects.ack_all(), acks.on_msg)
        try:
            t0 = time.perf_counter()
            rec = await self.record(CommandKind.RESUME)
            acks.bind(rec.cmd_id)
            await acks.wait_for(hosts, self.args.wait_s)
            out = acks.summary(hosts, t0, self.worker_of)
        finally:
            await sub.unsubscribe()
        out.update(agents=len(hosts), opened=watchers, cmd_id=rec.cmd_id, rev=rec.rev,
                   put_ms=round(rec.record_ms, 2))  # fmt: skip
        return out

    async def issue(self, hosts: set[str], kind: CommandKind) -> dict[str, Any]:
        """hidsctl's `issue_command` end to end, a real controller answering `expected`."""
        ctl = ControllerSet(self.st)
        ctl.start("bench-controller")
        try:
            seen, wait_s = await ctl.wait_expected(hosts, timeout=self.args.heartbeat_s * 2 + 20.0)
            if seen < len(hosts):
                warn(f"the controller saw {seen} of {len(hosts)} hosts online")
            acks = AckLog()
            arrivals: list[float] = []

            def on_ack(ack: Ack, _res: IssueResult) -> None:
                arrivals.append(time.perf_counter())
                acks.add(ack)

            result = await issue_command(
                kind=kind, scope=Scope.FLEET, target=FLEET_TARGET, key=self.key,
                bus=self.st.bus, store=self.store, subjects=self.subjects, keys=self.keys,
                wait_s=self.args.wait_s, on_ack=on_ack, author=AUTHOR,
            )  # fmt: skip
            acks.bind(result.cmd_id)
        finally:
            ctl.stop_all()
        ctl_events = ctl.logs()["bench-controller"]
        last_ms = None
        if arrivals and result.first_ack_ms is not None:
            last_ms = round(result.first_ack_ms + (arrivals[-1] - arrivals[0]) * 1000, 2)
        return {
            "kind": kind.value, "expected": len(result.expected or []),
            "acked": len(result.acked), "complete": result.complete,
            "first_ack_ms": result.first_ack_ms, "elapsed_ms": round(result.elapsed_ms, 2),
            "last_ack_processed_ms": last_ms, "record_ms": round(result.record_ms, 2),
            "rev": result.rev, "acks_received": len(arrivals),
            "first_ack_path": dict(acks.summary(hosts, 0.0)["first_ack_path"]),
            "later_acks_path": dict(acks.repeats),
            "controller_saw_online": seen, "controller_wait_s": wait_s,
            "controller_log_events": ctl_events,
        }  # fmt: skip


async def phases(b: Bench, ready: list[dict[str, Any]], watch_keys: int) -> dict[str, Any]:
    """Floor, offline, kill switch, reconnect, etcd watch, issue_command; the result."""
    a, bus = b.args, b.st.bus
    hosts = set(b.worker_of)
    floor_all = await floor_rounds(bus, len(hosts), a.floor_rounds, a.wait_s)
    print(f"floor ({len(hosts)} replies): {floor_all['all_ms_median']} ms", flush=True)
    off = await b.pool.call("offline", timeout=60.0)
    online = {h for r in off for h in r["online"]}
    offline = {h for r in off for h in r["offline"]}
    await asyncio.sleep(1.0)
    floor_online = await floor_rounds(bus, len(online), a.floor_rounds, a.wait_s)
    print(f"{len(offline)} agents offline; floor ({len(online)} replies): "
          f"{floor_online['all_ms_median']} ms", flush=True)  # fmt: skip
    await asyncio.sleep(1.0)
    acks, ks = await b.killswitch(online)
    print(f"kill switch: {ks['acked']}/{ks['expected']} acked, all in {ks['all_acked_ms']} ms "
          f"(first {ks['first_ack_ms']}, p50 {ks['p50_ms']}, p99 {ks['p99_ms']}); first acks by "
          f"path {ks['first_ack_path']}", flush=True)  # fmt: skip
    await asyncio.sleep(1.0)
    conv = await b.reconnect(acks, offline)
    # the broadcast's repeats of what etcd's watch applied first, until its subscription ended
    ks["later_acks_path"], ks["duplicate_acks"] = dict(acks.repeats), sum(acks.repeats.values())
    print(f"offline converge: {conv['converged']}/{conv['agents']} in {conv['converge_ms']} ms",
          flush=True)  # fmt: skip
    await asyncio.sleep(1.0)
    watch: dict[str, Any] = {"agents": 0, "opened": 0, "all_acked_ms": None}
    if a.watch and b.budget.fits("etcd watch", a.wait_s + 5):
        watch = await b.watch(hosts, watch_keys)
        print(f"etcd watch: {watch['acked']}/{watch['agents']} acked, all in "
              f"{watch['all_acked_ms']} ms", flush=True)  # fmt: skip
        await asyncio.sleep(1.0)
    elif not a.watch:
        watch["skipped"] = "--no-watch: the agents run no etcd watch"
    issue: dict[str, Any] = {}
    kind = CommandKind.STOP if watch.get("acked") else CommandKind.RESUME
    if not a.skip_issue_command and b.budget.fits(
        "issue_command", a.wait_s + a.heartbeat_s * 2 + 30
    ):
        issue = await b.issue(hosts, kind)
        print(f"issue_command ({kind.value}): {issue['acked']}/{issue['expected']} acked, "
              f"elapsed {issue['elapsed_ms']} ms", flush=True)  # fmt: skip
    stats = await b.pool.call("stats", timeout=60.0)
    floor_ms = floor_all["all_ms_median"]
    return {
        "agents": a.agents, "expected": ks["expected"], "acked": ks["acked"],
        **{k: ks[k] for k in ("first_ack_ms", "p50_ms", "p99_ms", "all_acked_ms")},
        "first_ack_path": ks["first_ack_path"],
        "offline_converge_ms": conv["converge_ms"], "floor_ms": floor_ms,
        "etcd_watch_all_acked_ms": watch.get("all_acked_ms"), "etcd_watch_agents": watch["agents"],
        "offline_agents": conv["agents"], "offline_converged": conv["converged"],
        "ratios": {
            "all_acked_over_floor": ratio(ks["all_acked_ms"], floor_ms),
            "all_acked_over_floor_online": ratio(ks["all_acked_ms"], floor_online["all_ms_median"]),
            "etcd_watch_over_all_acked": ratio(watch.get("all_acked_ms"), ks["all_acked_ms"]),
        },
        "killswitch": ks, "offline": conv,
        "floor": {"all": floor_all, "online_only": floor_online},
        "etcd_watch": watch, "issue_command": issue, "worker_stats": stats,
    }  # fmt: skip


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the stack and the fleet, run the phases, stop everything (also on Ctrl-C)."""
    budget = Budget(args.budget_s)
    sizes = split(args.agents, max(1, min(args.workers, args.agents)))
    nofile = raise_nofile_limit()
    if max(sizes) + FD_SLACK > nofile:
        raise BenchError(f"{max(sizes)} connections per worker exceed the open-files limit "
                         f"{nofile}: use more --workers")  # fmt: skip
    offline = 0 if args.offline_frac <= 0 else max(1, round(args.agents * args.offline_frac))
    offline = min(offline, args.agents - 1)
    load = [round(x, 2) for x in os.getloadavg()]
    if load[0] > 1.0:
        warn(f"load average is {load[0]:.1f} before starting: other work shares the CPUs")
    data_root = Path(tempfile.mkdtemp(prefix="hidsd-killswitch-data-", dir=args.data_dir))
    key = OperatorKey.generate()
    params = {**vars(args), "out": str(args.out), "data_dir": str(data_root.parent),
              "workers": len(sizes), "offline": offline, "nofile": nofile}  # fmt: skip
    try:
        async with local_stack("killswitch") as st:
            pool = WorkerPool(st.bus, st.workdir, WORKER)
            per_off = split(offline, len(sizes))
            configs = [{"nats_url": st.nats_url, "etcd_endpoints": list(st.etcd_endpoints),
                        "data_root": str(data_root), "first": sum(sizes[:i]), "count": n,
                        "offline": per_off[i], "trusted_key": encode_public_key(key.public_key),
                        "connect_batch": args.connect_batch, "gc_freeze": args.gc_freeze,
                        "heartbeat_s": args.heartbeat_s, "watch": args.watch,
                        "start_timeout_s": 60.0 + n / 10} for i, n in enumerate(sizes)]  # fmt: skip
            try:
                result = await fleet_run(args, st, pool, configs, key, budget)
            finally:
                await pool.stop()
                events = log_events(pool.logs)
                if events:
                    print(f"worker log events: {events}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(data_root, ignore_errors=True)
    after = [round(x, 2) for x in os.getloadavg()]
    result["setup"]["worker_log_events"] = events
    return result | {"cut": budget.cut, "params": params,
                     "machine": {"loadavg_before": load, "loadavg_after": after}}  # fmt: skip


async def fleet_run(args: argparse.Namespace, st: Stack, pool: WorkerPool,
                    configs: list[dict[str, Any]], key: OperatorKey,
                    budget: Budget) -> dict[str, Any]:  # fmt: skip
    endpoint = st.etcd_endpoints[0]
    baseline = await asyncio.to_thread(etcd_watchers, endpoint)
    # spawned before this process opens a gRPC channel: grpc does not like fork()
    t0 = time.perf_counter()
    ready = await pool.start(configs, timeout=min(120.0 + args.agents / 10, budget.share(0.5)))
    worker_of = {h: int(r["worker"]) for r in ready for h in r.pop("hosts")}
    watch_keys = sum(int(r["watch_keys"]) for r in ready)
    watchers, watch_wait_s = await wait_etcd_watchers(
        endpoint, baseline + watch_keys, 60.0 + watch_keys / 100
    )
    watchers -= baseline
    fleet_s = round(time.perf_counter() - t0, 2)
    print(f"fleet up in {fleet_s}s: {len(worker_of)}/{args.agents} agents in {len(configs)} "
          f"workers, etcd watchers {watchers}/{watch_keys} (rss "
          f"{sum(r['rss_mb'] for r in ready):.0f} MiB)", flush=True)  # fmt: skip
    if len(worker_of) < args.agents:
        raise BenchError(f"only {len(worker_of)} of {args.agents} agents started")
    if watchers < watch_keys:
        warn(f"etcd counts {watchers} watchers, expected {watch_keys}")
    await asyncio.sleep(1.0)
    async with Store(st.etcd_endpoints) as store:
        bench = Bench(args, st, store, pool, key, worker_of, budget)
        out = await phases(bench, ready, watchers)
    desired = sum(int(r["desired_watch_keys"]) for r in ready)
    out["notes"] = NOTES.format(
        workers=len(configs), per_worker=max(c["count"] for c in configs), cpus=os.cpu_count(),
        watch="on" if args.watch else "off (--no-watch)", watchers=watchers, desired=desired,
        floor_rounds=args.floor_rounds, gc_freeze=args.gc_freeze, heartbeat_s=args.heartbeat_s,
        data_dir=args.data_dir or tempfile.gettempdir())  # fmt: skip
    out["setup"] = {"workers": len(configs), "per_worker": ready, "fleet_up_s": fleet_s,
                    "watch": args.watch, "watch_keys": watch_keys, "desired_watch_keys": desired,
                    "etcd_watchers": watchers, "watchers_wait_s": watch_wait_s}  # fmt: skip
    return out


OPTIONS: list[Option] = [
    ("--workers", int, 4, "worker processes"),
    ("--offline-frac", float, 0.1, "fraction of agents offline during the broadcast (>= 1 agent)"),
    ("--floor-rounds", int, 3, "floor measurements (median)"),
    ("--wait-s", float, 30.0, "how long a phase waits for acks"),
    ("--heartbeat-s", float, 10.0, "the agents' bootstrap heartbeat period (as the agent's)"),
    ("--connect-batch", int, 100, "agents a worker starts at once"),
    ("--budget-s", float, 540.0, "phases that would end later than this after the start are "
     "cut (the whole run stays under 10 minutes)"),
]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_common_args(p, OUT_TEMPLATE)
    p.add_argument("--agents", type=int, help="fleet size N (default 1000; 100 with --quick)")
    add_options(p, OPTIONS)
    p.add_argument("--no-watch", dest="watch", action="store_false",
                   help="agents run no etcd watch (the kill switch is then the NATS path alone; "
                   "no etcd-watch phase)")  # fmt: skip
    p.add_argument("--no-gc-freeze", dest="gc_freeze", action="store_false",
                   help="do not gc.freeze() the fleet in the workers after start")  # fmt: skip
    p.add_argument("--skip-issue-command", action="store_true",
                   help="skip the hidsctl issue_command phase")  # fmt: skip
    p.add_argument("--data-dir", type=Path, default=tmpfs(),
                   help="where the agents' data dirs go (default /dev/shm)")  # fmt: skip
    args = p.parse_args(argv)
    if args.agents is None:
        args.agents = 100 if args.quick else 1000
    if args.agents < 2:
        p.error("--agents must be at least 2")
    if args.out == OUT_TEMPLATE:
        size = "" if args.agents == 10_000 else f"-{args.agents}"
        args.out = RESULTS / f"killswitch{size}{'' if args.watch else '-nowatch'}.json"
    return args


if __name__ == "__main__":
    sys.exit(run_benchmark("killswitch", parse_args(), run, print_summary))
