"""Config rollout benchmark: time from `hidsctl config set` to N agents reporting the version.

Usage::

    .venv/bin/python benchmarks/config_rollout.py --agents 1000 [--out PATH] [--workers 4]

The script starts its own stack (`hidsd.dev.devstack`: one nats-server, one etcd member, no etcd
auth) in a temp dir and an in-process fleet: `--workers` processes
(`benchmarks/_config_fleet.py`), each running its slice of N "lite agents" on one uvloop loop.
A lite agent is the real config path: its own `ConfigService` (per-key etcd watches on its
scope pointers, validation, merge, last-good file), an `on_apply` that does what
`Agent._apply_config` does and pokes a heartbeat loop, and its own NATS connection that
publishes the heartbeat with `config=ConfigService.report()`; see `_config_fleet.py`.

Each round, timed on CLOCK_MONOTONIC (system-wide, so the workers' step times compare with
the coordinator's): t0 just before the real `hidsd.ctl.configplane.set_config` (what
`hidsctl config set` runs) or `configplane.rollback`; per agent, the first heartbeat that
reports the new version(s) with status "ok", as it arrives at the coordinator's subscription
on `hb.*`. Rounds:

0. warmup: fleet v1 (the first config the fleet sees: also warms etcd and the gRPC channels);
1. fleet: a new fleet version (the headline figures);
2. group: a new `group:bench` version (every agent is in group `bench`);
3. rollback: `configplane.rollback` of the fleet scope to v1 (a new version, v1's content);
4. same-effective probe: a fleet version whose settings equal the current ones (a comment
   differs): the agents apply it but their effective config does not change;
5. concurrent probe: a fleet and a group version written at the same time.

Writes JSON to `benchmarks/results/config_rollout.json` (or `--out`) and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop
from _common import BenchError, etcd_watchers, fmt, ms, warn
from _config_fleet import GROUP, SHARDS, WorkerConfig, host_id
from _fleet import OP_SUBJECT, READY_SUBJECT, pack, raise_nofile_limit, unpack
from nats.aio.msg import Msg

from hidsd.base import logging as hidsd_logging
from hidsd.base.errors import HidsError, ProtocolError
from hidsd.bus.store import Store
from hidsd.bus.transport import Bus, BusOptions
from hidsd.ctl import configplane
from hidsd.dev.devstack import EtcdCluster, NatsServer, find_binary
from hidsd.wire.configstore import ConfigVersion
from hidsd.wire.heartbeat import decode_heartbeat
from hidsd.wire.names import FLEET_TARGET, KeyLayout, Scope, Subjects

HERE = Path(__file__).resolve().parent
WORKER_PY = HERE / "_config_fleet.py"
DEFAULT_OUT = HERE / "results" / "config_rollout.json"
AUTHOR = "benchmarks/config_rollout.py"
#: Connections a worker process keeps besides its agents (control, etcd, slack).
FD_SLACK = 256
#: A round's etcd write; returns the versions it created.
Write = Callable[[], Awaitable[list[ConfigVersion]]]
#: Step names of the per-phase breakdown, in the order the workers report them.
STEPS = ("watch_event", "applied", "last_good_saved", "heartbeat_sent")

CONTENT_A = "[telemetry]\nrate_per_s = 1500\n"
CONTENT_B = "[telemetry]\nrate_per_s = 2000\n"
CONTENT_GROUP = "[telemetry]\nburst = 4000\n"
CONTENT_A_COMMENTED = "# same settings as v1, new version\n" + CONTENT_A
CONTENT_C = "[telemetry]\nrate_per_s = 2500\n"
CONTENT_GROUP_2 = "[telemetry]\nburst = 5000\n"

NOTES = (
    "Top-level figures are the 'fleet' round (a new fleet-scope version after a warmup round), "
    "not a median of rounds; every round is under 'rounds'. Latency per agent = arrival at "
    "the coordinator of its first heartbeat reporting the new version with status ok, minus "
    "t0 taken just before configplane.set_config (what `hidsctl config set` runs: validate, "
    "read the pointer, one etcd transaction). "
    "Local stack: one nats-server and one etcd member (devstack) on loopback, no TLS and no "
    "etcd auth (a real agent authenticates as its own etcd user; the lite agents do not). "
    "In-process fleet, not N agent processes: {workers} worker processes each run about "
    "{per_worker} lite agents on one uvloop event loop, sharing {cpus} CPU cores with "
    "nats-server, etcd and the coordinator. Each lite agent has its own ConfigService (the "
    "package's, subclassed only to take timestamps), so the Follower's start read, its "
    "per-key watch streams (one per scope pointer: fleet, group bench, group shard<i%{shards}>, "
    "host; etcd counted {watchers} watchers for {agents} agents), the resync on a watch event "
    "(two etcd reads), validation, merge and the last-good file are the real code. The etcd "
    "Store (one gRPC channel) is shared by all lite agents of a worker, where each real agent "
    "has its own channel; every watch is still its own gRPC stream. Each lite agent has its "
    "own NATS connection (hidsd:<host>) that only publishes: heartbeats as "
    "HeartbeatService.run sends them (at once when poked by on_apply, else every heartbeat_s "
    "= {heartbeat_s} s, jittered), with config=ConfigService.report() (ConfigService._apply "
    "updates versions and status before it calls on_apply, so the poked heartbeat carries "
    "them). on_apply does what Agent._apply_config does except set_level (the log level is "
    "process-wide and would be shared by a worker's agents) and Supervisor.configure (the "
    "lite agents run no plugins; their heartbeat's plugins map is empty); workers log at "
    "warning, so the "
    "config_applied and config_hot_reloaded info lines are built and dropped by the level "
    "filter. Missing versus a real agent: the command path, convergence service, plugins, and "
    "per-agent processes. Queueing: a worker's agents handle the watch events of one change "
    "one after another on one loop, so p50/p99 include waiting behind up to {per_worker} other "
    "agents, which N real hosts would not; all_converged_ms is close to the fleet's total CPU "
    "work (worker Python + etcd + nats-server) divided by the cores. Last-good files go to "
    "{data_dir} (tmpfs: N agents' files would be on N disks). gc_freeze={gc_freeze}: after "
    "start the workers move the long-lived agent objects out of the cyclic GC's reach. "
    "Probe rounds (see each round's note): same_effective shows how long a version whose "
    "effective config equals the running one takes to be reported (no on_apply, no poke: the "
    "next periodic heartbeat, and every agent's period restarted at the previous poke); "
    "concurrent writes a fleet and a group version at once and counts agents that reported "
    "both and later ran an older one ('regressed')."
)


# --------------------------------------------------------------------------- helpers


def split(total: int, parts: int) -> list[int]:
    """`total` as `parts` integers that differ by at most one."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of `values` (any order)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def tmpfs() -> Path | None:
    """/dev/shm when writable: N agents' files would be on N disks, not on this one."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    mem_gib = None
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        mem_gib = round(int(f.readline().split()[1]) / (1 << 20), 1)

    def version(name: str, env: str) -> str:
        try:
            out = subprocess.run(
                [find_binary(name, env), "--version"], capture_output=True, text=True,
                timeout=10, check=False,
            )  # fmt: skip
        except (OSError, HidsError, subprocess.SubprocessError):
            return "?"
        return (out.stdout or out.stderr).strip().splitlines()[0]

    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": mem_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "nats_server": version("nats-server", "HIDSD_NATS_SERVER_BIN"),
        "etcd": version("etcd", "HIDSD_ETCD_BIN"),
    }


# --------------------------------------------------------------------------- workers


class Workers:
    """The worker processes and the request/reply protocol the coordinator drives them with."""

    def __init__(self, bus: Bus, workdir: Path, nats: NatsServer) -> None:
        self.bus = bus
        self.workdir = workdir
        self.nats = nats
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    @property
    def size(self) -> int:
        return len(self.procs)

    def spawn(self, configs: list[WorkerConfig]) -> None:
        for cfg in configs:
            log = self.workdir / f"worker-{cfg.index}.log"
            with open(log, "ab") as out:
                proc = subprocess.Popen(
                    [sys.executable, str(WORKER_PY), cfg.to_json()],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            self.procs.append(proc)
            self.logs.append(log)

    def check_alive(self) -> None:
        """Fail fast when a worker, or the nats-server carrying the control channel, is gone."""
        if self.nats.proc is None or self.nats.proc.poll() is not None:
            raise BenchError("nats-server exited: the workers cannot be reached")
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None:
                tail = self.logs[i].read_text(errors="replace")[-3000:]
                raise BenchError(f"worker {i} exited with {proc.returncode}:\n{tail}")

    async def wait(self, done: asyncio.Event, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done.is_set():
            self.check_alive()
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), min(0.25, left))

    async def start(self, configs: list[WorkerConfig], timeout: float) -> list[dict[str, Any]]:
        """Spawn the workers; wait for every READY (agents connected, first etcd read done)."""
        ready: list[dict[str, Any]] = []
        done = asyncio.Event()

        async def on_ready(msg: Msg) -> None:
            ready.append(unpack(msg.data))
            if len(ready) >= len(configs):
                done.set()

        sub = await self.bus.subscribe(READY_SUBJECT, on_ready)
        try:
            self.spawn(configs)
            await self.wait(done, timeout, "workers to start their agents")
        finally:
            await sub.unsubscribe()
        return sorted(ready, key=lambda r: int(r["worker"]))

    async def request(self, op: str, timeout: float = 60.0, **params: Any) -> list[dict[str, Any]]:
        """Send one operation to every worker and collect their replies."""
        inbox = f"bench.ctl.reply.{secrets.token_hex(6)}"
        replies: list[dict[str, Any]] = []
        done = asyncio.Event()

        async def on_reply(msg: Msg) -> None:
            replies.append(unpack(msg.data))
            if len(replies) >= self.size:
                done.set()

        sub = await self.bus.subscribe(inbox, on_reply)
        try:
            await self.bus.publish(OP_SUBJECT, pack({"op": op, **params}), reply=inbox)
            await self.bus.flush()
            await self.wait(done, timeout, f"workers to finish {op!r}")
        finally:
            await sub.unsubscribe()
        errors = [str(r["error"]) for r in replies if "error" in r]
        if errors:
            raise BenchError(f"{op} failed in a worker: {'; '.join(errors)}")
        return sorted(replies, key=lambda r: int(r["worker"]))

    async def stop(self, graceful: bool) -> None:
        """Ask the workers to stop their agents and exit; then SIGTERM, then SIGKILL."""
        asked = False
        if graceful and self.procs and self.bus.connected:
            with contextlib.suppress(BenchError, HidsError, TimeoutError):
                await self.request("exit", timeout=60.0)
                asked = True
        for proc in self.procs:
            if asked:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(proc.wait, 10.0)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)

    def log_events(self) -> dict[str, int]:
        """What the workers logged: JSON lines by level and event, other lines by their start
        (etcd3aio logs through the standard library, Python prints unhandled task errors)."""
        counts: Counter[str] = Counter()
        for log in self.logs:
            with contextlib.suppress(OSError), open(log, errors="replace") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        counts[f"text:{line.strip()[:70]}"] += 1
                        continue
                    if isinstance(rec, dict):
                        counts[f"{rec.get('level', '?')}:{rec.get('event', '?')}"] += 1
        return dict(counts)


# --------------------------------------------------------------------------- heartbeats


@dataclass
class Round:
    """One rollout being measured: which versions count, who is expected, who has them."""

    wanted: dict[str, int]
    expected: set[str]
    arrivals: dict[str, float] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    pending: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.pending = set(self.expected)

    def offer(self, host: str, t: float, status: Any, versions: Any) -> None:
        if host in self.arrivals or status != "ok" or not isinstance(versions, dict):
            return
        if all(versions.get(label) == v for label, v in self.wanted.items()):
            self.arrivals[host] = t
            self.pending.discard(host)
            if not self.pending:
                self.done.set()


@dataclass
class HeartbeatLog:
    """Every heartbeat on `hb.*`: first sighting per host, and the rounds' arrivals."""

    first_seen: dict[str, float] = field(default_factory=dict)
    received: int = 0
    bad: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    buffer: list[tuple[float, str, Any, Any]] | None = None
    round: Round | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_msg(self, msg: Msg) -> None:
        t = time.monotonic()
        try:
            hb = decode_heartbeat(msg.data)
        except ProtocolError:
            self.bad += 1
            return
        self.received += 1
        if hb.host not in self.first_seen:
            self.first_seen[hb.host] = t
            self.changed.set()
        cfg = hb.config
        status, versions = cfg.get("status"), cfg.get("versions")
        self.statuses[str(status)] += 1
        if self.round is not None:
            self.round.offer(hb.host, t, status, versions)
        elif self.buffer is not None:
            self.buffer.append((t, hb.host, status, versions))

    def begin(self) -> None:
        """Keep heartbeats from now on: the target versions are known only after the write."""
        self.round, self.buffer = None, []

    def target(self, wanted: dict[str, int], expected: set[str]) -> Round:
        rnd = Round(wanted, expected)
        for t, host, status, versions in self.buffer or []:
            rnd.offer(host, t, status, versions)
        self.round, self.buffer = rnd, None
        return rnd

    def end(self) -> None:
        self.round = self.buffer = None

    async def wait_seen(self, hosts: set[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not hosts <= self.first_seen.keys():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.5))
        return True


# --------------------------------------------------------------------------- rounds


class CpuMeter:
    """utime + stime of named processes, from /proc (what each part of the stack spent)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.tick = os.sysconf("SC_CLK_TCK")

    def _cpu_s(self, pid: int) -> float | None:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / self.tick

    def sample(self) -> dict[str, float | None]:
        return {name: self._cpu_s(pid) for name, pid in self.pids.items()}

    def since(self, before: dict[str, float | None]) -> dict[str, float | None]:
        after = self.sample()
        out: dict[str, float | None] = {}
        for name, t in after.items():
            t0 = before.get(name)
            out[name] = None if t is None or t0 is None else round((t - t0) * 1000, 1)
        workers = [v for k, v in out.items() if k.startswith("worker") and v is not None]
        out["workers_total"] = round(sum(workers), 1)
        out["all"] = round(
            sum(
                v
                for k, v in out.items()
                if k != "all" and not k.startswith("worker-") and v is not None
            ),
            1,
        )
        return out


def spread(values: list[float]) -> dict[str, float | None]:
    return {
        "n": len(values),
        "p50_ms": percentile(values, 50),
        "p90_ms": percentile(values, 90),
        "p99_ms": percentile(values, 99),
        "max_ms": max(values) if values else None,
    }


def phases(marks: dict[str, list[float | None]], hosts: set[str]) -> dict[str, Any]:
    """Per-step spread over the agents (ms after t0), from the workers' timestamps."""
    out: dict[str, Any] = {}
    for i, step in enumerate(STEPS):
        values = [v[i] for h, v in marks.items() if h in hosts]
        out[step] = spread([x for x in values if x is not None])
    return out


@dataclass
class Bench:
    """The coordinator's state across rounds."""

    args: argparse.Namespace
    bus: Bus
    store: Store
    workers: Workers
    hb: HeartbeatLog
    hosts: set[str]
    worker_of: dict[str, int]
    cpu: CpuMeter = field(default_factory=lambda: CpuMeter({}))
    keys: KeyLayout = field(default_factory=KeyLayout)
    profiled: bool = False

    def say(self, text: str) -> None:
        print(text, flush=True)

    async def measure(
        self, name: str, write: Write, wait_s: float, note: str = ""
    ) -> dict[str, Any]:
        """Arm the workers, write, wait for every agent's heartbeat with the new versions."""
        profile = ""
        if self.args.profile is not None and name == "fleet" and not self.profiled:
            profile = str(self.args.profile.resolve())
            self.profiled = True
        await self.workers.request("arm", profile=profile)
        self.hb.begin()
        received0 = self.hb.received
        cpu0 = self.cpu.sample()
        t0 = time.monotonic()
        written = await write()
        t_written = time.monotonic()
        wanted = {cv.scope: cv.version for cv in written}
        rnd = self.hb.target(wanted, self.hosts)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(rnd.done.wait(), wait_s)
        t_end = time.monotonic()
        cpu_ms = self.cpu.since(cpu0)
        self.hb.end()
        heartbeats = self.hb.received - received0
        marks: dict[str, list[float | None]] = {}
        for r in await self.workers.request("marks", t0=t0):
            marks.update(r["marks"])
        state: dict[str, dict[str, Any]] = {}
        for r in await self.workers.request("state"):
            state.update(r["state"])
        lat = [(t - t0) * 1000 for h, t in rnd.arrivals.items() if h in self.hosts]
        missing = sorted(self.hosts - rnd.arrivals.keys())
        now_other = {
            h for h in self.hosts
            if any(state.get(h, {}).get("versions", {}).get(k) != v for k, v in wanted.items())
        }  # fmt: skip
        # An agent that reported the versions once and no longer runs them went backwards.
        regressed = sorted(now_other & rnd.arrivals.keys())
        never = sorted(now_other - rnd.arrivals.keys())
        by_worker: dict[int, list[float]] = {}
        for h, t in rnd.arrivals.items():
            by_worker.setdefault(self.worker_of[h], []).append((t - t0) * 1000)
        complete = not missing
        result = {
            "round": name,
            "wanted": wanted,
            "note": note,
            "expected": len(self.hosts),
            "converged": len(lat),
            "first_ms": round(min(lat), 2) if lat else None,
            "p50_ms": _r(percentile(lat, 50)),
            "p90_ms": _r(percentile(lat, 90)),
            "p99_ms": _r(percentile(lat, 99)),
            "all_converged_ms": round(max(lat), 2) if lat and complete else None,
            "last_ms": round(max(lat), 2) if lat else None,
            "write_ms": ms(t_written - t0),
            "waited_ms": ms(t_end - t0),
            "missing": len(missing),
            "missing_hosts": missing[:20],
            "missing_state": {h: state.get(h) for h in missing[:5]},
            "regressed": len(regressed),
            "regressed_hosts": regressed[:20],
            "regressed_state": {h: state.get(h) for h in regressed[:5]},
            "never_applied": len(never),
            "heartbeats_received": heartbeats,
            "cpu_ms": cpu_ms,
            "cpu_note": "CPU time per process from just before the write to the last arrival",
            "phases_ms": {
                **phases(marks, self.hosts),
                "heartbeat_received": spread(lat),
            },
            "by_worker": {
                str(w): {
                    "converged": len(v),
                    "first_ms": round(min(v), 2),
                    "last_ms": round(max(v), 2),
                }
                for w, v in sorted(by_worker.items())
            },
        }
        self.say(
            f"{name:>16}: {len(lat)}/{len(self.hosts)} converged; write "
            f"{result['write_ms']} ms, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
            f"all {result['all_converged_ms']} ms"
            + (f"; {len(regressed)} went back to older versions" if regressed else "")
            + (f"; {len(never)} never applied it" if never else "")
        )
        return result

    def writer(self, scope: Scope, target: str, content: str, message: str) -> Write:
        """A round's write: `configplane.set_config`, what `hidsctl config set` runs."""

        async def write() -> list[ConfigVersion]:
            cv = await configplane.set_config(
                self.store, self.keys, scope, target, content, message, AUTHOR
            )
            return [cv]

        return write

    async def rollback(self) -> list[ConfigVersion]:
        """`configplane.rollback` of the fleet scope to v1 (what `hidsctl config rollback` runs)."""
        cv = await configplane.rollback(
            self.store, self.keys, Scope.FLEET, FLEET_TARGET, 1, "bench rollback", AUTHOR
        )
        return [cv]

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
        wait_s = self.args.wait_s
        rounds = [
            ("warmup", self.writer(Scope.FLEET, FLEET_TARGET, CONTENT_A, "bench warmup"), wait_s,
             "fleet v1: the first config the fleet sees"),
        ]  # fmt: skip
        for k in range(self.args.fleet_rounds):
            content = (CONTENT_B, CONTENT_C)[k % 2]  # never A: the rollback goes back to A
            rounds.append(
                ("fleet", self.writer(Scope.FLEET, FLEET_TARGET, content, "bench fleet"), wait_s,
                 "a new fleet version (the first one is the headline round)")
            )  # fmt: skip
        rounds += [
            ("group", self.writer(Scope.GROUP, GROUP, CONTENT_GROUP, "bench group"), wait_s,
             f"a new group:{GROUP} version"),
            ("rollback", self.rollback, wait_s, "configplane.rollback of the fleet scope to v1"),
        ]  # fmt: skip
        if self.args.skip_probes:
            return rounds
        rounds.append(
            ("same_effective",
             self.writer(Scope.FLEET, FLEET_TARGET, CONTENT_A_COMMENTED, "bench: comment only"),
             self.args.heartbeat_s * 1.1 + 5.0,
             "a fleet version with the same settings (a comment differs): the effective config "
             "does not change, so ConfigService does not call on_apply and nothing pokes the "
             "heartbeat; the new version is reported by the next periodic heartbeat")
        )  # fmt: skip
        for k in range(self.args.concurrent_rounds):
            # The fleet runs A (rollback, same_effective) before the first of these rounds.
            both = self.concurrent((CONTENT_B, CONTENT_C)[k % 2],
                                   (CONTENT_GROUP_2, CONTENT_GROUP)[k % 2])  # fmt: skip
            rounds.append(
                ("concurrent", both, wait_s,
                 f"a fleet and a group:{GROUP} version written at the same time (two writers)")
            )  # fmt: skip
        return rounds

    async def rounds(self, etcd_alive: Callable[[], bool]) -> list[dict[str, Any]]:
        """Run the planned rounds; stop early if etcd exits."""
        out: list[dict[str, Any]] = []
        for i, (name, write, wait_s, note) in enumerate(self.plan()):
            if i:
                await asyncio.sleep(self.args.pause_s)
            try:
                out.append(await self.measure(name, write, wait_s, note))
            except HidsError as exc:
                if etcd_alive():
                    raise
                out.append({"round": name, "error": f"etcd exited: {exc}"})
            if not etcd_alive():
                warn(f"etcd exited during the {name!r} round; no further rounds")
                out[-1]["etcd_exited"] = True
                break
        return out


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# --------------------------------------------------------------------------- plan and run


@dataclass(frozen=True, slots=True)
class Plan:
    agents: int
    workers: int
    sizes: list[int]
    nofile: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        workers = max(1, min(args.workers, args.agents))
        nofile = raise_nofile_limit()
        sizes = split(args.agents, workers)
        if max(sizes) + FD_SLACK > nofile:
            raise BenchError(
                f"{max(sizes)} connections per worker exceed the open-files limit {nofile}: "
                "use more --workers"
            )
        return cls(args.agents, workers, sizes, nofile)

    def configs(
        self, args: argparse.Namespace, nats_url: str, etcd: list[str], data_dir: Path
    ) -> list[WorkerConfig]:
        firsts = [sum(self.sizes[:i]) for i in range(self.workers)]
        return [
            WorkerConfig(
                index=i,
                nats_url=nats_url,
                etcd_endpoints=tuple(etcd),
                first=firsts[i],
                count=self.sizes[i],
                data_dir=str(data_dir),
                connect_batch=args.connect_batch,
                gc_freeze=args.gc_freeze,
                heartbeat_s=args.heartbeat_s,
                resync_s=args.resync_s,
                sync_timeout_s=60.0 + self.sizes[i] / 20,
                parent_pid=os.getpid(),
            )
            for i in range(self.workers)
        ]


def etcd_alive(etcd: EtcdCluster) -> bool:
    proc = etcd.members[0].proc
    return proc is not None and proc.poll() is None


async def maybe_watchers(etcd: EtcdCluster) -> int | None:
    """etcd's watcher gauge, or None when etcd is gone."""
    if not etcd_alive(etcd):
        return None
    try:
        return await asyncio.to_thread(etcd_watchers, etcd.endpoints[0])
    except OSError:
        return None


def etcd_panic(etcd: EtcdCluster) -> str | None:
    """The panic line of the etcd log, if etcd died of one."""
    with contextlib.suppress(OSError), open(etcd.log(etcd.members[0]), errors="replace") as f:
        for line in f:
            if '"level":"panic"' in line or line.startswith("panic:"):
                return line.strip()[:600]
    return None


async def wait_watchers(endpoint: str, target: int, timeout: float) -> tuple[int, float]:
    """Poll etcd's watcher gauge until it reaches `target`; (watchers, seconds waited)."""
    t0 = time.monotonic()
    seen = 0
    while time.monotonic() - t0 < timeout:
        seen = await asyncio.to_thread(etcd_watchers, endpoint)
        if seen >= target:
            break
        await asyncio.sleep(0.2)
    return seen, round(time.monotonic() - t0, 2)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the stack and the fleet, run the rounds, stop everything (also on Ctrl-C)."""
    plan = Plan.from_args(args)
    load_before = os.getloadavg()
    if load_before[0] > 1.0:
        warn(f"load average is {load_before[0]:.1f} before starting: other work shares the CPUs")
    workdir = Path(tempfile.mkdtemp(prefix="hidsd-cfgrollout-"))
    data_dir = Path(tempfile.mkdtemp(prefix="hidsd-cfgrollout-data-", dir=args.data_dir))
    # No JetStream: the config path does not use it (and it costs the server memory).
    nats_srv = NatsServer(workdir / "stack", jetstream=False)
    etcd = EtcdCluster(workdir / "stack")
    bus: Bus | None = None
    workers: Workers | None = None
    graceful = True
    task = asyncio.current_task()
    if task is not None:  # SIGTERM cleans up like Ctrl-C does
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        t0 = time.perf_counter()
        nats_srv.start()
        etcd.start()
        print(f"stack up in {time.perf_counter() - t0:.1f}s: {nats_srv.url}, "
              f"etcd {etcd.endpoints[0]} (no auth); workdir {workdir}", flush=True)  # fmt: skip
        bus = Bus(BusOptions(servers=(nats_srv.url,), name="bench-coordinator"))
        await bus.connect(attempts=3)
        hb = HeartbeatLog()
        hb_sub = await bus.subscribe(Subjects().heartbeat_all(), hb.on_msg)
        workers = Workers(bus, workdir, nats_srv)
        baseline = await asyncio.to_thread(etcd_watchers, etcd.endpoints[0])
        configs = plan.configs(args, nats_srv.url, etcd.endpoints, data_dir)
        # Spawn before this process opens a gRPC channel: grpc does not like fork().
        t0 = time.perf_counter()
        ready = await workers.start(configs, timeout=120.0 + plan.agents / 20)
        hosts = {h for r in ready for h in r.pop("hosts")}
        worker_of = {h: c.index for c in configs for h in _hosts_of(c)}
        synced = sum(int(r["synced"]) for r in ready)
        watch_keys = sum(int(r["watch_keys"]) for r in ready)
        seen_all = await hb.wait_seen(hosts, 30.0)
        watchers, watch_wait_s = await wait_watchers(
            etcd.endpoints[0], baseline + watch_keys, 60.0 + watch_keys / 100
        )
        fleet_s = round(time.perf_counter() - t0, 2)
        print(f"fleet up in {fleet_s}s: {len(hosts)}/{plan.agents} agents connected, "
              f"{synced} synced, {len(hb.first_seen)} heartbeating, etcd watchers "
              f"{watchers - baseline}/{watch_keys} (connect "
              f"{max(r['connect_s'] for r in ready):.1f}s, rss "
              f"{sum(r['rss_mb'] for r in ready):.0f} MiB)", flush=True)  # fmt: skip
        if synced < len(hosts) or not seen_all:
            raise BenchError(f"only {synced} of {len(hosts)} agents synced and "
                             f"{len(hb.first_seen)} heartbeating")  # fmt: skip
        if watchers - baseline < watch_keys:
            warn(f"etcd counts {watchers - baseline} watchers, expected {watch_keys}")
        await asyncio.sleep(args.pause_s)
        async with Store(etcd.endpoints) as store:
            pids = {
                "coordinator": os.getpid(),
                "nats_server": nats_srv.proc.pid if nats_srv.proc else 0,
                "etcd": etcd.members[0].proc.pid if etcd.members[0].proc else 0,
                **{f"worker-{i}": p.pid for i, p in enumerate(workers.procs)},
            }
            bench = Bench(args, bus, store, workers, hb, hosts, worker_of, CpuMeter(pids))
            rounds = await bench.rounds(lambda: etcd_alive(etcd))
            stats = await workers.request("stats")
            watchers_end = await maybe_watchers(etcd)
        await hb_sub.unsubscribe()
        fleet_rounds = [r for r in rounds if r["round"] == "fleet" and "error" not in r]
        headline: dict[str, Any] = fleet_rounds[0] if fleet_rounds else {}
        return {
            "agents": plan.agents,
            "expected": len(hosts),
            "converged": headline.get("converged", 0),
            "first_ms": headline.get("first_ms"),
            "p50_ms": headline.get("p50_ms"),
            "p99_ms": headline.get("p99_ms"),
            "all_converged_ms": headline.get("all_converged_ms"),
            "write_ms": headline.get("write_ms"),
            "headline_round": "fleet (the first 'fleet' round, after the warmup)",
            "fleet_rounds_all_converged_ms": [r["all_converged_ms"] for r in fleet_rounds],
            "phases_ms": headline.get("phases_ms", {}),
            "etcd_watchers": watchers - baseline,
            "notes": NOTES.format(
                workers=plan.workers,
                per_worker=max(plan.sizes),
                cpus=os.cpu_count(),
                shards=SHARDS,
                watchers=watchers - baseline,
                agents=plan.agents,
                heartbeat_s=args.heartbeat_s,
                data_dir=args.data_dir or tempfile.gettempdir(),
                gc_freeze=args.gc_freeze,
            ),
            "rounds": rounds,
            "setup": {
                "workers": plan.workers,
                "per_worker": ready,
                "fleet_up_s": fleet_s,
                "synced": synced,
                "watch_keys": watch_keys,
                "etcd_watchers_at_start": watchers - baseline,
                "etcd_watchers_at_end": None if watchers_end is None else watchers_end - baseline,
                "etcd_exited": not etcd_alive(etcd),
                "etcd_panic": etcd_panic(etcd),
                "watchers_wait_s": watch_wait_s,
            },
            "worker_stats": stats,
            "heartbeats": {
                "received": hb.received,
                "undecodable": hb.bad,
                "config_status_counts": dict(hb.statuses),
            },
            "params": {
                "agents": plan.agents,
                "workers": plan.workers,
                "heartbeat_s": args.heartbeat_s,
                "resync_s": args.resync_s,
                "wait_s": args.wait_s,
                "pause_s": args.pause_s,
                "fleet_rounds": args.fleet_rounds,
                "concurrent_rounds": args.concurrent_rounds,
                "skip_probes": args.skip_probes,
                "connect_batch": args.connect_batch,
                "gc_freeze": args.gc_freeze,
                "data_dir": str(args.data_dir or tempfile.gettempdir()),
                "nofile": plan.nofile,
                "etcd_auth": False,
                "profile": str(args.profile) if args.profile else None,
            },
            "machine": {
                **machine_info(),
                "loadavg_before": [round(x, 2) for x in load_before],
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            },
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    except asyncio.CancelledError:
        graceful = False
        raise
    finally:
        # Every step on its own: one failing (say, nats-server already gone after a Ctrl-C
        # that reached the whole process group) must not leave the others undone.
        if workers is not None:
            try:
                await workers.stop(graceful)
            except Exception as exc:
                warn(f"stopping workers: {exc!r}")
            log_events = workers.log_events()
            if log_events:
                print(f"worker log events: {log_events}", file=sys.stderr, flush=True)
        if bus is not None:
            try:
                await bus.close(timeout=2.0)
            except Exception as exc:  # nats-py raises RuntimeError if the server is gone
                warn(f"closing the coordinator's NATS connection: {exc!r}")
        for server in (nats_srv, etcd):
            try:
                server.stop()
            except Exception as exc:
                warn(f"stopping {type(server).__name__}: {exc!r}")
        if args.keep_workdir:
            print(f"workdir kept: {workdir} (last-good files: {data_dir})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.rmtree(data_dir, ignore_errors=True)


def _hosts_of(cfg: WorkerConfig) -> list[str]:
    return [host_id(i) for i in range(cfg.first, cfg.first + cfg.count)]


# --------------------------------------------------------------------------- output


def print_summary(r: dict[str, Any]) -> None:
    ph = {step: r["phases_ms"].get(step, {}) for step in STEPS}
    rows = [
        ("agents (N)", fmt(r["agents"], "")),
        ("converged (fleet round)", fmt(r["converged"], "")),
        ("config set (etcd write)", fmt(r["write_ms"])),
        ("first agent reported", fmt(r["first_ms"])),
        ("p50", fmt(r["p50_ms"])),
        ("p99", fmt(r["p99_ms"])),
        ("all converged", fmt(r["all_converged_ms"])),
        ("  p50 watch event seen", fmt(ph["watch_event"].get("p50_ms"))),
        ("  p50 applied", fmt(ph["applied"].get("p50_ms"))),
        ("  p50 last good saved", fmt(ph["last_good_saved"].get("p50_ms"))),
        ("  p50 heartbeat sent", fmt(ph["heartbeat_sent"].get("p50_ms"))),
        ("etcd watchers", fmt(r["etcd_watchers"], "")),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    print()
    print(f"hidsd config rollout, N={r['agents']} ({r['setup']['workers']} workers)")
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
    p.add_argument("--agents", type=int, required=True, help="fleet size N")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
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
        default=200,
        help="concurrent NATS connects per worker (default 200)",
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
        help="where the last-good files go (default /dev/shm if present)",
    )
    p.add_argument("--keep-workdir", action="store_true", help="keep logs and last-good files")
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="cProfile the workers during the first fleet round; write worker-<i>.prof here",
    )
    args = p.parse_args(argv)  # fmt: skip
    if args.agents < 1:
        p.error("--agents must be at least 1")
    if args.fleet_rounds < 1:
        p.error("--fleet-rounds must be at least 1")
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
        print("interrupted; stack and workers stopped", file=sys.stderr)
        return 130
    print_summary(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
