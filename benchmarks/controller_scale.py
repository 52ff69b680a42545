"""Controller scale-out benchmark: heartbeats and acks per second that 1, 2, 3 controllers absorb.

Usage::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/controller_scale.py [--controllers 1,2,3]
        [--seconds 10] [--hosts 10000] [--generators 2] [--quick]

For each K a fresh local stack (`harness.stack`: nats-server, one etcd member) and K real
controller processes (`harness.controllers`: `python -m hidsd.controller.main`). They share
the ingest work as in production: every heartbeat and ack goes to one of them (NATS queue
group `hidsd-ingest`), which decodes, validates and applies it and forwards it to the others
in a batch every 250 ms.

`--generators` worker processes (`controller_scale_worker.py`) simulate `--hosts` agents:
each host's heartbeat is the agent's own (`HeartbeatService.build` over the sources in
`harness.agentreports`), each message that heartbeat with the next seq and the current
sent_at, encoded by `encode_heartbeat`; acks are `Ack`s encoded by `encode_ack`;
`--hb-per-ack` heartbeats per ack, published as fast as the connection allows. NATS does not
slow a publisher down for a slow subscriber (the server buffers, then cuts a slow consumer
off), so this script reads the controllers' pending bytes at the server (`/connz`, every
`--poll-s`) and pauses the generators while any has more than `--high-mb` waiting, resuming
below `--low-mb`: the controllers always have work queued, never enough to be cut off.

Each K has two phases of `--seconds`: "max" (as above; the headline msgs_per_s) and "paced"
(`--paced-rate` msgs/s in all, below saturation, no pausing), whose CPU figures give the cost
of one received message and of one applied forwarded copy (`cost_model`). A phase during
which other processes used more than `--quiet-pct` of a core is run again (at most
`--max-tries`, each after waiting up to `--quiet-wait-s` for a quiet machine); the quietest
is reported. Phases that would overrun `--budget-s` are cut (`cut`).

Absorbed msgs/s = the sum over controllers of their `heartbeats` + `acks` counters between
two samples inside the load (each member asked directly, `ctlpeer.<id>.stats`, every second).
Also recorded: offered rate, drain, messages lost, replication (copies owed to the K-1 others
vs. applied), slow consumers (server `/varz`, the controllers' logs), CPU % of every process
(100 = one core), the machine's busy %, msgs per controller-CPU-second, and `decode_cost`
(decode_heartbeat of one generated heartbeat, timed in this process).

Writes `benchmarks/results/controller_scale.json` (or `--out`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from controller_scale_figures import Sample, cost_model, decode_cost, print_summary, summarize
from controller_scale_worker import CTL_SUBJECT, encode_applied, host_id, unused
from harness.agentreports import HostKit
from harness.controllers import ControllerSet, quiet_options
from harness.fleet import tmpfs
from harness.procs import CpuMeter, process_cpu_s, wait_for_quiet
from harness.report import (
    RESULTS,
    BenchError,
    Budget,
    Option,
    add_common_args,
    add_options,
    machine_busy_s,
    quick_defaults,
    run_benchmark,
    warn,
)
from harness.stack import Stack, local_stack
from harness.workers import WorkerPool, split

from hidsd.base.errors import HidsError
from hidsd.wire.heartbeat import encode_heartbeat
from hidsd.wire.verbs import CONTROLLERS

WORKER = Path(__file__).resolve().parent / "controller_scale_worker.py"
CONTROLLER_CLIENT = "hidsd-controller:"
#: controller log events that mean work was lost or a connection was cut
LOSS_EVENTS = ("nats_slow_consumer_drop", "sync_not_sent", "nats_disconnected", "member_gone")

NOTES = (
    "Everything runs on one machine with {cpus} CPU cores: nats-server, etcd, the K "
    "controllers, {gens} generator processes and this coordinator, over loopback. Messages "
    "are built with the agent's and the wire's own code: each host's Heartbeat from the "
    "agent's HeartbeatService.build (harness.agentreports: local_facts with the host's name, "
    "procmon and inventory PluginReports, a real Breaker's, StorageHealth's and "
    "LatestPublisher's reports), per message the next seq and sent_at, encode_heartbeat "
    "({hb_bytes} B); acks are Ack dataclasses through encode_ack ({ack_bytes} B); "
    "{hb_per_ack} heartbeats per ack, {hosts} hosts. Not N hosts: a generator's hosts share "
    "one NATS connection (the controllers see subjects, not connections) and send as fast as "
    "allowed, not every 10 s. In the max phase the generators pause only while a controller "
    "has more than {high} MiB pending at the server, so absorbed msgs/s is what the "
    "controllers process, limited by their own CPU or by what the machine leaves them: "
    "compare controllers_cpu_pct (100 = one core) with machine_busy_pct (100 = every core); "
    "foreign_cpu_pct is what processes this benchmark did not start used. "
    "msgs_per_controller_cpu_s = absorbed / the controllers' CPU seconds (forwarded copies "
    "included as far as applied). The paced phase offers {paced:,.0f} msgs/s in all, below "
    "saturation. Controllers run with their defaults (log level info, JSON logs to a file, no "
    "system account: presence by heartbeat timeouts)."
)


def http_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=2) as resp:
        data: dict[str, Any] = json.load(resp)
        return data


class Run:
    """One stack with K controllers and the generators."""

    def __init__(self, args: argparse.Namespace, k: int, st: Stack, pool: WorkerPool,
                 ctl: ControllerSet) -> None:  # fmt: skip
        self.args, self.k, self.st, self.pool, self.ctl = args, k, st, pool, ctl
        self.flow: dict[str, Any] = {}

    def pids(self) -> dict[str, int]:
        st = self.st
        return {**self.ctl.pids(), "nats_server": st.nats.proc.pid if st.nats.proc else 0,
                **{f"etcd-{m.name}": m.proc.pid for m in st.etcd.members if m.proc},
                **{f"worker-{i}": p.pid for i, p in enumerate(self.pool.procs)},
                "coordinator": os.getpid()}  # fmt: skip

    async def sample(self, t_start: float) -> Sample:
        t, lat, rows = await self.ctl.peer_stats()
        cpu = {n: process_cpu_s(p) for n, p in self.pids().items()}
        return Sample(t - t_start, lat, rows, cpu, machine_busy_s())

    async def wait_agents(self, n: int, timeout: float = 60.0) -> None:
        """Until every controller knows every host (the warm-up heartbeats, forwarded)."""
        deadline = time.monotonic() + timeout
        while True:
            self.ctl.check_alive()
            _, _, rows = await self.ctl.peer_stats()
            if all(r.agents >= n for r in rows.values()):
                return
            if time.monotonic() > deadline:
                raise BenchError(f"controllers know {[r.agents for r in rows.values()]} of "
                                 f"{n} hosts after {timeout:.0f}s")  # fmt: skip
            await asyncio.sleep(0.3)

    async def flow_control(self, until: float) -> None:
        """Pause the generators while a controller has over --high-mb pending at the server."""
        url = f"http://127.0.0.1:{self.st.nats.http_port}/connz?acc=HIDS&limit=1000"
        high, low = self.args.high_mb * (1 << 20), self.args.low_mb * (1 << 20)
        paused_at: float | None = None
        bus, f = self.st.bus, self.flow
        while time.perf_counter() < until:
            try:
                conns = (await asyncio.to_thread(http_json, url))["connections"]
            except (OSError, ValueError, KeyError):
                f["poll_errors"] += 1
                await asyncio.sleep(self.args.poll_s)
                continue
            f["polls"] += 1
            ours = [c for c in conns if str(c.get("name", "")).startswith(CONTROLLER_CLIENT)]
            pending = max((int(c.get("pending_bytes", 0)) for c in ours), default=0)
            f["max_pending_mb"] = round(max(f["max_pending_mb"], pending / (1 << 20)), 2)
            if paused_at is None and pending > high:
                await bus.publish(CTL_SUBJECT, b"pause")
                paused_at = time.perf_counter()
                f["pauses"] += 1
            elif paused_at is not None and pending < low:
                await bus.publish(CTL_SUBJECT, b"resume")
                f["paused_s"] += time.perf_counter() - paused_at
                paused_at = None
            await asyncio.sleep(self.args.poll_s)
        if paused_at is not None:
            f["paused_s"] += time.perf_counter() - paused_at
            await bus.publish(CTL_SUBJECT, b"resume")

    async def ctl_controllers(self) -> dict[str, Any]:
        """`ctl.controllers` as `hidsctl controllers list` asks it, mid-load."""
        t0 = time.perf_counter()
        try:
            rows = (await self.ctl.ask(CONTROLLERS, timeout=5.0)).controllers
        except HidsError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, "ms": round((time.perf_counter() - t0) * 1000, 1), "rows": len(rows),
                "did_not_answer": sum(1 for r in rows if r.stats is None)}  # fmt: skip

    def loss_events(self) -> dict[str, dict[str, int]]:
        return {name: {e.split(":", 1)[-1]: v for e, v in log.items()
                       if e.split(":", 1)[-1] in LOSS_EVENTS}
                for name, log in self.ctl.logs().items()}  # fmt: skip

    async def measure(self, phase: str, rate: float) -> dict[str, Any]:
        """One load phase: a sample every second while it runs, then the drain."""
        a = self.args
        self.flow = {"pauses": 0, "paused_s": 0.0, "max_pending_mb": 0.0, "polls": 0,
                     "poll_errors": 0}  # fmt: skip
        varz0 = http_json(f"http://127.0.0.1:{self.st.nats.http_port}/varz")
        logs0 = self.loss_events()
        start_at = time.time() + 0.5
        stop_at = start_at + a.seconds
        load = asyncio.ensure_future(self.pool.call(
            "phase", timeout=a.seconds + 60, start_at=start_at, stop_at=stop_at,
            rate=rate / self.pool.size))  # fmt: skip
        try:
            s0 = await self.sample(0.0)
            await asyncio.sleep(max(0.0, start_at - time.time()))
            t_start = time.perf_counter()
            s0.t, s0.busy = 0.0, machine_busy_s()  # CPU from the load's start on
            s0.cpu = {n: process_cpu_s(p) for n, p in self.pids().items()}
            samples = [s0]
            flow = asyncio.ensure_future(self.flow_control(t_start + a.seconds)) if rate <= 0 \
                else None  # fmt: skip
            under_load: dict[str, Any] = {}
            for sec in range(1, int(a.seconds) + 1):
                await asyncio.sleep(max(0.0, t_start + sec - time.perf_counter()))
                if time.perf_counter() - t_start >= a.seconds:
                    break
                self.ctl.check_alive()
                if sec == int(a.seconds) // 2:
                    under_load = await self.ctl_controllers()
                samples.append(await self.sample(t_start))
            if flow is not None:
                await flow
            done = await load
        finally:
            load.cancel()
        deadline, last, stable = time.monotonic() + 60, -1, 0
        while stable < 2 and time.monotonic() < deadline:  # the drain
            await asyncio.sleep(0.5)
            end = await self.sample(t_start)
            stable, last = (stable + 1 if end.total() == last else 0), end.total()
        varz1 = http_json(f"http://127.0.0.1:{self.st.nats.http_port}/varz")
        logs1 = self.loss_events()
        names = sorted(self.ctl.pids())
        others = [n for n in self.pids() if n not in names]
        return {"phase": phase, "rate": rate or None,
                **summarize(self.k, a.seconds, names, others, samples, end, done),
                "flow": {**self.flow, "paused_s": round(self.flow["paused_s"], 2),
                         "generator_paused_s": [x["paused_s"] for x in done]},
                "slow_consumers_server": varz1.get("slow_consumers", 0)
                - varz0.get("slow_consumers", 0),
                "controller_log_losses": {n: {e: v - logs0.get(n, {}).get(e, 0)
                                              for e, v in ev.items()} for n, ev in logs1.items()},
                "nats_in_msgs": varz1.get("in_msgs", 0) - varz0.get("in_msgs", 0),
                "ctl_controllers_mid_load": under_load}  # fmt: skip


async def one_k(args: argparse.Namespace, k: int, budget: Budget,
                data_root: Path) -> list[dict[str, Any]]:  # fmt: skip
    async with local_stack(f"ctlscale-{k}", quiet=True) as st:
        ctl = ControllerSet(
            st,
            env={
                "HIDSD_CONTROLLER_STREAM_MAX_BYTES": str(64 << 20),
                "HIDSD_CONTROLLER_INVENTORY_MAX_BYTES": str(64 << 20),
            },
        )
        pool = WorkerPool(st.bus, st.workdir, WORKER)
        sizes = split(args.hosts, args.generators)
        configs = [{"nats_url": st.nats_url, "data_root": str(data_root), "first": sum(sizes[:i]),
                    "count": n, "hb_per_ack": args.hb_per_ack, "interval_s": 10.0,
                    "flush_every": args.flush_every, "check_every": 200}
                   for i, n in enumerate(sizes)]  # fmt: skip
        try:
            for i in range(k):
                ctl.start(f"cs-c{i + 1}")
            await ctl.wait_members()
            await pool.start(configs, timeout=120.0)
            await pool.call("warm_up", timeout=120.0)
            run = Run(args, k, st, pool, ctl)
            await run.wait_agents(args.hosts)
            await asyncio.sleep(1.0)  # the warm-up's forwarded batches and log lines
            phases = [("max", 0.0)] + ([("paced", args.paced_rate)] if args.paced_rate > 0 else [])
            out = []
            for phase, rate in phases:
                tries: list[dict[str, Any]] = []
                for _ in range(args.max_tries):
                    if not budget.fits(f"K={k} {phase}", args.seconds + 15 + args.quiet_wait_s):
                        break
                    waited = await wait_for_quiet(CpuMeter(run.pids()), args.quiet_pct,
                                                  args.quiet_wait_s)  # fmt: skip
                    tries.append({**await run.measure(phase, rate), "waited_for_quiet_s": waited})
                    if tries[-1]["foreign_cpu_pct"] <= args.quiet_pct:
                        break
                if not tries:
                    continue
                best = min(tries, key=lambda r: r["foreign_cpu_pct"])
                best["tries"] = [
                    {
                        "msgs_per_s": r["msgs_per_s"],
                        "reported": r is best,
                        "foreign_cpu_pct": r["foreign_cpu_pct"],
                        "waited_for_quiet_s": r["waited_for_quiet_s"],
                    }
                    for r in tries
                ]
                best["controller_logs"] = ctl.logs()
                out.append(best)
            return out
        finally:
            await pool.stop()
            ctl.stop_all()


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    budget = Budget(args.budget_s)
    runs: list[dict[str, Any]] = []
    paced: list[dict[str, Any]] = []
    data_root = Path(tempfile.mkdtemp(prefix="hidsd-ctlscale-", dir=args.data_dir))
    try:
        kit = HostKit(data_root, unused, unused, lambda: True)
        hb = encode_heartbeat(kit.host(host_id(0), 0, ("bench", "web"), "Debian", "debian")
                              .heartbeat.build())  # fmt: skip
        for k in args.controllers:
            if not budget.fits(f"K={k}", 20 + args.seconds * 2):
                continue
            print(f"K={k}: starting ({args.seconds:.0f} s of load per phase)", flush=True)
            for r in await one_k(args, k, budget, data_root):
                (runs if r["phase"] == "max" else paced).append(r)
                print(f"K={k} {r['phase']}: {r['msgs_per_s']:,} msgs/s absorbed (offered "
                      f"{r['offered_per_s']:,}/s), controllers {r['controllers_cpu_pct']}% CPU, "
                      f"machine {r['machine_busy_pct']}% busy, lost {r['lost']}, replication "
                      f"missing {r['replication']['missing_frac']:.1%}, other work "
                      f"{r['foreign_cpu_pct']:.0f}% CPU ({len(r['tries'])} tries)",
                      flush=True)  # fmt: skip
    finally:
        shutil.rmtree(data_root, ignore_errors=True)
    if not runs:
        raise BenchError(f"no phase ran within the budget (cut: {budget.cut})")
    base = runs[0]["msgs_per_s"] or 1
    ack_bytes = len(encode_applied(0, host_id(0), time.time()))
    return {
        **{key: [r[src] for r in runs] for key, src in (
            ("controllers", "controllers"), ("msgs_per_s", "msgs_per_s"),
            ("msgs_per_controller_cpu_s", "msgs_per_controller_cpu_s"),
            ("controllers_cpu_pct", "controllers_cpu_pct"),
            ("machine_busy_pct", "machine_busy_pct"), ("foreign_cpu_pct", "foreign_cpu_pct"),
            ("offered_per_s", "offered_per_s"), ("lost", "lost"))},
        "ratio_to_first": [round(r["msgs_per_s"] / base, 2) for r in runs],
        "replication_missing_frac": [r["replication"]["missing_frac"] for r in runs],
        "runs": runs, "paced": paced, "cost_model": cost_model(paced),
        "decode_cost": decode_cost(hb), "heartbeat_bytes": len(hb), "ack_bytes": ack_bytes,
        "cut": budget.cut,
        "params": {k: v for k, v in vars(args).items() if k not in ("out", "data_dir")},
        "notes": NOTES.format(cpus=os.cpu_count(), gens=args.generators, high=args.high_mb,
                              hb_bytes=len(hb), ack_bytes=ack_bytes, hb_per_ack=args.hb_per_ack,
                              hosts=args.hosts, paced=args.paced_rate),
    }  # fmt: skip


OPTIONS: list[Option] = [
    ("--generators", int, 2, "load generator processes"),
    ("--hb-per-ack", int, 4, "heartbeats per ack"),
    ("--flush-every", int, 2000, "a generator flushes to the server every N messages"),
    ("--high-mb", float, 4.0, "pause the load when a controller has this much pending"),
    ("--low-mb", float, 1.0, "resume below this"),
    ("--poll-s", float, 0.025, "how often the controllers' pending bytes are read"),
    *quiet_options("phase"),
]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_common_args(p, RESULTS / "controller_scale.json")
    p.add_argument("--controllers", help="K values, comma-separated (1,2,3; 1,2 with --quick)")
    p.add_argument("--seconds", type=float, help="load per phase (default 10; 4 with --quick)")
    p.add_argument("--hosts", type=int, help="simulated hosts (default 10,000; 500 --quick)")
    p.add_argument("--paced-rate", type=float,
                   help="offered msgs/s of the paced phase, below saturation: the CPU cost of a "
                   "message and of a forwarded copy (default 2,000; 0: skip)")  # fmt: skip
    p.add_argument("--max-tries", type=int, help="runs of a phase at most (default 3; 1 --quick)")
    p.add_argument("--quiet-wait-s", type=float,
                   help="before a phase, wait at most this long for other work to stop "
                   "(default 20; 0 with --quick)")  # fmt: skip
    add_options(p, OPTIONS)
    p.add_argument("--data-dir", type=Path, default=tmpfs(),
                   help="where the generators' data dirs go (default /dev/shm)")  # fmt: skip
    args = p.parse_args(argv)
    quick_defaults(args, {"controllers": "1,2,3", "seconds": 10.0, "hosts": 10_000,
                          "paced_rate": 2000.0, "max_tries": 3, "quiet_wait_s": 20.0},
                   {"controllers": "1,2", "seconds": 4.0, "hosts": 500, "paced_rate": 1000.0,
                    "max_tries": 1, "quiet_wait_s": 0.0})  # fmt: skip
    try:
        args.controllers = [int(x) for x in str(args.controllers).split(",") if x.strip()]
    except ValueError:
        p.error("--controllers: comma-separated integers, e.g. 1,2,3")
    if not args.controllers or min(args.controllers) < 1:
        p.error("--controllers: at least one K >= 1")
    if args.seconds < 2 or args.generators < 1 or args.hosts < args.generators:
        p.error("--seconds >= 2, --generators >= 1, --hosts >= --generators")
    if args.max_tries < 1:
        warn("--max-tries below 1: every phase is skipped")
    return args


if __name__ == "__main__":
    sys.exit(run_benchmark("controller_scale", parse_args(), run_all, print_summary))
