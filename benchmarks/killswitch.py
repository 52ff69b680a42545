"""Kill-switch benchmark: how fast a signed fleet-wide stop reaches N agents and is acked.

Usage::

    .venv/bin/python benchmarks/killswitch.py --agents 1000 [--out PATH] [--workers 4]
        [--offline-frac 0.1] [--watch-agents M]

The script starts its own stack (`hidsd.dev.devstack`: one nats-server, one etcd member) in a temp
dir and an in-process fleet: `--workers` processes (`benchmarks/_fleet.py`), each running its
slice of N "lite agents" on one uvloop loop. A lite agent is the real command path: its own
`Bus` (nats-py connection), `ControlPolicy`, `CommandService` (subscribed with
`CommandService.subscribe()`) and `StateFile`; see `_fleet.py`.

Phases, all timed on the coordinator's monotonic clock:

1. floor: one message on a plain subject that every agent connection answers with an empty
   reply (no agent logic); time until all N replies arrived (median of `--floor-rounds`).
2. offline: `--offline-frac` of the agents (at least one) close their NATS connections.
3. kill switch (the main figures): the stop is recorded in etcd as `issue_command` records it
   (one transaction: the signed desired state at `desired/fleet` plus a create-only audit
   entry), then the coordinator subscribes to `ack.<cmd_id>`, signs the command with the
   transaction's revision and publishes it on `cmd.all`. Per-ack latency = arrival at the
   coordinator minus publish time. No lite agent runs an etcd watch in this phase, so this is
   the NATS path alone.
4. offline converge: the offline agents are told to come back; each reconnects, subscribes,
   resyncs from etcd (`ConvergenceService.resync("reconnect")`) and acks the converged
   decision on NATS; time from the signal to the last of their acks.
5. etcd watch (the Meituan design as reference): M agents watch the desired-state prefix
   (`Store.watch_prefix`, events through `ConvergenceService.on_events`); the coordinator
   writes a signed resume into etcd and nothing on NATS; time from the put to the last ack.
6. hidsctl path: the real `hidsd.ctl.killswitch.issue_command` (with a stub controller that
   answers the expected set), to show what the operator's CLI reports at this N.

Writes JSON to `benchmarks/results/killswitch.json` (or `--out`) and prints a summary.
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
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import uvloop
from _common import BenchError, etcd_watchers, fmt, ms, warn
from _fleet import (
    FLOOR_SUBJECT,
    OP_SUBJECT,
    READY_SUBJECT,
    WorkerConfig,
    host_id,
    pack,
    raise_nofile_limit,
    unpack,
)
from nats.aio.msg import Msg

from hidsd.agent.app import StateFile
from hidsd.agent.control import ControlState
from hidsd.base import logging as hidsd_logging
from hidsd.base.errors import HidsError, ProtocolError
from hidsd.base.proc import with_pdeathsig
from hidsd.bus.store import Store
from hidsd.bus.transport import Bus, BusOptions
from hidsd.ctl.killswitch import DEFAULT_TTL_S, IssueResult, issue_command, new_command_id
from hidsd.dev.devstack import EtcdCluster, NatsServer, find_binary
from hidsd.wire.commands import AckStatus, Command, CommandKind, RunMode, decode_ack
from hidsd.wire.names import FLEET_TARGET, KeyLayout, Scope, Subjects
from hidsd.wire.rpc import encode_reply
from hidsd.wire.signing import OperatorKey, encode_public_key

HERE = Path(__file__).resolve().parent
FLEET_PY = HERE / "_fleet.py"
DEFAULT_OUT = HERE / "results" / "killswitch.json"
#: Default cap on etcd watch streams for the reference phase (see --watch-agents): the largest
#: M verified on the 2-core machine (N=15,000: all streams open in about 4.4 s, about 390 MiB
#: peak RSS per worker); N itself is limited by nats-server's 20,000 open files there.
DEFAULT_WATCH_CAP = 15_000
#: Connections a worker process keeps besides its agents (control, etcd, slack).
FD_SLACK = 256
AUTHOR = "benchmarks/killswitch.py"

NOTES = (
    "In-process fleet, not N agent processes: {workers} worker processes each run about "
    "{per_worker} lite agents on one uvloop event loop, sharing {cpus} CPU cores with "
    "nats-server, etcd and the coordinator, over loopback without TLS. Each lite agent has "
    "its own nats-py connection (name hidsd:<host>), ControlPolicy, CommandService (via "
    "CommandService.subscribe) and StateFile, so receipt, signature verification, revision "
    "ordering, persistence and the ack are the real code; what it lacks is the rest of the "
    "agent (heartbeats, plugins, the periodic resync loop, the work gate and the mode_changed "
    "log line; logging is at warning). "
    "Queueing: the agents of one worker handle a broadcast one after another on one loop, and "
    "nats-py writes a publish from a per-connection flusher task that runs only after the "
    "handlers already scheduled in that loop iteration, so acks leave a worker in bursts; "
    "first_ack, p50 and p99 include waiting behind up to {per_worker} other agents, which N "
    "real hosts would not have (each would ack within about its own handling time plus the "
    "network RTT, which loopback lacks). all_acked_ms is therefore close to the fleet's total "
    "CPU work divided by the cores: a throughput figure for this machine, not a per-host "
    "latency. "
    "State files: every StateFile lives under {state_dir} ({state_note}); one save cost a "
    "median {save_here_us} us there and {save_tmp_us} us on the temp dir's disk (each real "
    "agent pays that once, on its own disk, in parallel with the others). "
    "No lite agent runs an etcd watch during the kill-switch phase: those figures are the NATS "
    "path alone. The offline agents' resync and all watch streams of a worker share one etcd "
    "Store (one gRPC channel) per worker process, where a real agent has its own channel; "
    "every watch is still its own gRPC watch stream (etcd counted {watchers} watchers). That "
    "sharing favours the etcd figure: a worker's watch events arrive multiplexed on one TCP "
    "connection, where the NATS path reads one socket per agent (as a real fleet would for "
    "both). The signature-verifying TrustStore object is shared by a worker's agents "
    "(it is stateless). "
    "floor_ms is the median of {floor_rounds} rounds with all N connections (floor.online_only "
    "has the same set of connections as the kill switch); the kill switch is a single shot. "
    "The floor subscription is sent before CommandService.subscribe() without its own flush "
    "(the command subscriptions' flushes cover it). "
    "gc_freeze={gc_freeze}: after connecting, workers {gc_text}. issue_command is the real "
    "hidsctl path, with a stub controller answering the expected set."
)


GC_TEXT = {
    True: "call gc.freeze() so the thousands of long-lived agent objects are not rescanned by "
    "the cyclic GC during a broadcast (a real agent process holds one agent)",
    False: "leave the GC alone",
}


# --------------------------------------------------------------------------- helpers


def split(total: int, parts: int) -> list[int]:
    """Split `total` into `parts` integers that differ by at most one."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of `values` (any order)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 2)


def default_state_base() -> Path | None:
    """tmpfs when there is one: N agents' state files would be N disks in a real fleet."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


def state_save_cost(base: Path | None, samples: int = 300) -> dict[str, Any]:
    """What one `StateFile.save` costs on `base`'s file system (each real agent pays it once,
    on its own disk, per change)."""
    root = Path(tempfile.mkdtemp(prefix="hidsd-statecost-", dir=base))
    try:
        files = [StateFile(root / f"a{i}") for i in range(samples)]
        for f in files:
            f.prepare()  # an agent reserves its slots once, at start
        times = []
        for i, f in enumerate(files):
            t0 = time.perf_counter()
            f.save(ControlState(mode=RunMode.STOPPED, applied_rev=i + 1, applied_cmd="x"))
            times.append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "dir": str(root.parent),
        "samples": samples,
        "p50_us": round((percentile(times, 50) or 0) * 1e6, 1),
        "p99_us": round((percentile(times, 99) or 0) * 1e6, 1),
    }


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        mem_gib = round(int(f.readline().split()[1]) / (1 << 20), 1)

    def version(name: str, env: str) -> str:
        try:
            out = subprocess.run(
                [find_binary(name, env), "--version"], capture_output=True, text=True, timeout=10,
                check=False,
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


# --------------------------------------------------------------------------- acks


@dataclass
class AckLog:
    """Acks for one command id, with arrival times; waits for a set of hosts."""

    cmd_id: str
    arrivals: dict[str, tuple[float, AckStatus, str]] = field(default_factory=dict)
    bad: int = 0
    duplicates: int = 0
    _waiting: set[str] = field(default_factory=set)
    _done: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_msg(self, msg: Msg) -> None:
        t = time.perf_counter()
        try:
            ack = decode_ack(msg.data)
        except ProtocolError:
            self.bad += 1
            return
        if ack.cmd_id != self.cmd_id:
            self.bad += 1
            return
        if ack.host in self.arrivals:
            self.duplicates += 1
            return
        self.arrivals[ack.host] = (t, ack.status, ack.detail)
        if ack.status is AckStatus.APPLIED and ack.host in self._waiting:
            self._waiting.discard(ack.host)
            if not self._waiting:
                self._done.set()

    def applied(self, host: str) -> bool:
        got = self.arrivals.get(host)
        return got is not None and got[1] is AckStatus.APPLIED

    async def wait_for(self, hosts: set[str], timeout: float) -> bool:
        """Wait until every host in `hosts` acked `applied`; False on timeout."""
        self._waiting = {h for h in hosts if not self.applied(h)}
        self._done = asyncio.Event()
        if not self._waiting:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._done.wait()
        except TimeoutError:
            return False
        return True

    def summary(
        self, hosts: set[str], t0: float, worker_of: dict[str, int] | None = None
    ) -> dict[str, Any]:
        """Latency figures for the acks of `hosts`, relative to `t0`."""
        lat = [self.arrivals[h][0] - t0 for h in hosts if self.applied(h)]
        by_worker: dict[int, list[float]] = {}
        if worker_of is not None:
            for h in hosts:
                if self.applied(h):
                    by_worker.setdefault(worker_of[h], []).append(self.arrivals[h][0] - t0)
        statuses = Counter(
            self.arrivals[h][1].value if h in self.arrivals else "missing" for h in hosts
        )
        missing = sorted(h for h in hosts if not self.applied(h))
        complete = not missing and bool(hosts)
        last = max(lat) if lat else None
        return {
            "expected": len(hosts),
            "acked": len(lat),
            "first_ack_ms": ms(min(lat)) if lat else None,
            "p50_ms": ms(percentile(lat, 50)),
            "p99_ms": ms(percentile(lat, 99)),
            "all_acked_ms": ms(last) if complete else None,
            "last_ack_ms": ms(last),
            "percentiles_ms": {str(p): ms(percentile(lat, p)) for p in (10, 25, 50, 75, 90, 99)},
            "by_worker": {
                str(w): {"acked": len(v), "first_ms": ms(min(v)), "last_ms": ms(max(v))}
                for w, v in sorted(by_worker.items())
            },
            "statuses": dict(statuses),
            "missing_hosts": missing[:20],
            "missing": len(missing),
            "unexpected_acks": len(set(self.arrivals) - hosts),
            "duplicate_acks": self.duplicates,
            "bad_acks": self.bad,
        }


# --------------------------------------------------------------------------- the fleet


class Fleet:
    """The worker processes and the control protocol the coordinator drives them with."""

    def __init__(self, bus: Bus, workdir: Path) -> None:
        self.bus = bus
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.ready: list[dict[str, Any]] = []

    @property
    def size(self) -> int:
        return len(self.procs)

    def spawn(self, configs: list[WorkerConfig]) -> None:
        for cfg in configs:
            log = self.workdir / f"worker-{cfg.index}.log"
            with open(log, "ab") as out:
                proc = subprocess.Popen(
                    with_pdeathsig([sys.executable, str(FLEET_PY), cfg.to_json()], os.getpid()),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            self.procs.append(proc)
            self.logs.append(log)

    def check_alive(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None:
                tail = self.logs[i].read_text(errors="replace")[-3000:]
                raise BenchError(f"worker {i} exited with {proc.returncode}:\n{tail}")

    async def _wait(self, done: asyncio.Event, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done.is_set():
            self.check_alive()
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), min(0.25, left))

    async def start(self, configs: list[WorkerConfig], timeout: float) -> list[dict[str, Any]]:
        """Spawn the workers and wait for every READY (all agents connected and subscribed)."""
        done = asyncio.Event()

        async def on_ready(msg: Msg) -> None:
            self.ready.append(unpack(msg.data))
            if len(self.ready) >= self.size:
                done.set()

        sub = await self.bus.subscribe(READY_SUBJECT, on_ready)
        try:
            self.spawn(configs)
            await self._wait(done, timeout, "workers to connect their agents")
        finally:
            await sub.unsubscribe()
        self.ready.sort(key=lambda r: int(r["worker"]))
        return self.ready

    async def request(self, op: str, timeout: float, **params: Any) -> list[dict[str, Any]]:
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
            await self._wait(done, timeout, f"workers to finish {op!r}")
        finally:
            await sub.unsubscribe()
        errors = [str(r["error"]) for r in replies if "error" in r]
        if errors:
            raise BenchError(f"{op} failed in a worker: {'; '.join(errors)}")
        return sorted(replies, key=lambda r: int(r["worker"]))

    async def stop(self, graceful: bool) -> None:
        """Ask the workers to close their agents and exit; then SIGTERM, then SIGKILL."""
        if graceful and self.procs and self.bus.connected:
            with contextlib.suppress(BenchError, HidsError, TimeoutError):
                await self.request("exit", timeout=60.0)
        for proc in self.procs:
            if graceful:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(proc.wait, 10.0)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


# --------------------------------------------------------------------------- phases


async def floor_round(bus: Bus, replies: int, timeout: float) -> dict[str, Any]:
    """One message to every connection's floor handler; time until `replies` answers."""
    inbox = f"bench.floor.reply.{secrets.token_hex(6)}"
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
    return {
        "expected": replies,
        "replies": len(lat),
        "first_ms": ms(min(lat)) if lat else None,
        "p50_ms": ms(percentile(lat, 50)),
        "all_ms": ms(max(lat)) if len(lat) >= replies else None,
    }


async def floor_rounds(bus: Bus, replies: int, rounds: int, timeout: float) -> dict[str, Any]:
    results = []
    for _ in range(rounds):
        results.append(await floor_round(bus, replies, timeout))
        await asyncio.sleep(0.3)
    alls = [r["all_ms"] for r in results if r["all_ms"] is not None]
    return {
        "all_ms_median": round(statistics.median(alls), 2) if alls else None,
        "rounds": results,
    }


async def record_desired(
    store: Store, key: OperatorKey, keys: KeyLayout, kind: CommandKind, cmd_id: str
) -> int:
    """Record a fleet desired state exactly as `issue_command` does; return the revision."""
    issued_at = time.time()
    stored = Command(
        cmd_id, kind, Scope.FLEET, FLEET_TARGET, 0, issued_at, issued_at + DEFAULT_TTL_S, {}
    )
    audit = msgpack.packb(
        {
            "id": cmd_id,
            "kind": kind.value,
            "scope": Scope.FLEET.value,
            "target": FLEET_TARGET,
            "issued_at": issued_at,
            "key_id": key.key_id,
            "author": AUTHOR,
        }
    )
    return await store.put_all(
        {
            keys.desired(Scope.FLEET, FLEET_TARGET): key.sign_command(stored),
            keys.command_log(cmd_id): audit,
        },
        absent=[keys.command_log(cmd_id)],
    )


@dataclass
class Bench:
    """The coordinator's state across phases."""

    args: argparse.Namespace
    bus: Bus
    store: Store
    fleet: Fleet
    key: OperatorKey
    etcd_endpoint: str
    subjects: Subjects = field(default_factory=Subjects)
    keys: KeyLayout = field(default_factory=KeyLayout)
    worker_of: dict[str, int] = field(default_factory=dict)
    ack_sub: Any = None

    def say(self, text: str) -> None:
        print(text, flush=True)

    async def phase_killswitch(self, expected: set[str]) -> tuple[AckLog, dict[str, Any]]:
        """Record the stop in etcd, subscribe to its acks, sign and publish it on cmd.all."""
        cmd_id = new_command_id()
        acks = AckLog(cmd_id)
        t_rec = time.perf_counter()
        rev = await record_desired(self.store, self.key, self.keys, CommandKind.STOP, cmd_id)
        record_ms = ms(time.perf_counter() - t_rec)
        sub = await self.bus.subscribe(self.subjects.ack(cmd_id), acks.on_msg)
        issued_at = time.time()
        cmd = Command(
            cmd_id, CommandKind.STOP, Scope.FLEET, FLEET_TARGET, rev, issued_at,
            issued_at + DEFAULT_TTL_S, {},
        )  # fmt: skip
        envelope = self.key.sign_command(cmd)
        t_pub = time.perf_counter()
        await self.bus.publish(self.subjects.cmd_all(), envelope)
        await self.bus.flush()
        await acks.wait_for(expected, self.args.wait_s)
        summary = acks.summary(expected, t_pub, self.worker_of)
        summary.update(
            cmd_id=cmd_id,
            rev=rev,
            record_ms=record_ms,
            envelope_bytes=len(envelope),
        )
        self.ack_sub = sub
        return acks, summary

    async def phase_reconnect(self, acks: AckLog, offline: set[str]) -> dict[str, Any]:
        """Offline agents come back, resync from etcd and ack the converged stop."""
        t0 = time.perf_counter()
        replies, ok = await asyncio.gather(
            self.fleet.request("reconnect", timeout=60.0 + len(offline) / 20),
            acks.wait_for(offline, self.args.wait_s),
        )
        summary = acks.summary(offline, t0, self.worker_of)
        outcomes: Counter[str] = Counter()
        for r in replies:
            outcomes.update(r["outcomes"])
        return {
            "agents": len(offline),
            "converged": summary["acked"],
            "complete": ok,
            "converge_ms": summary["all_acked_ms"],
            "first_ack_ms": summary["first_ack_ms"],
            "p50_ms": summary["p50_ms"],
            "last_ack_ms": summary["last_ack_ms"],
            "by_worker": summary["by_worker"],
            "statuses": summary["statuses"],
            "missing_hosts": summary["missing_hosts"],
            "worker_outcomes": dict(outcomes),
            "worker_s": [r["worker_s"] for r in replies],
        }

    async def phase_watch(self, watch_agents: int, per_worker_online: list[int]) -> dict[str, Any]:
        """The fleet learns a resume through its etcd watches alone; time put -> last ack."""
        counts = split(watch_agents, self.fleet.size)
        counts = [min(c, cap) for c, cap in zip(counts, per_worker_online, strict=True)]
        baseline = await asyncio.to_thread(etcd_watchers, self.etcd_endpoint)
        start_revision = await self.store.revision() + 1
        t_open = time.perf_counter()
        replies = await self.fleet.request(
            "watch_start", timeout=120.0, counts=counts, start_revision=start_revision
        )
        watching = {h for r in replies for h in r["watching"]}
        target = baseline + len(watching)
        deadline = time.monotonic() + 60.0 + len(watching) / 50
        seen = baseline
        while True:
            self.fleet.check_alive()
            seen = await asyncio.to_thread(etcd_watchers, self.etcd_endpoint)
            if seen >= target or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        setup_s = round(time.perf_counter() - t_open, 3)
        opened = seen - baseline
        self.say(f"  {opened}/{len(watching)} etcd watches open after {setup_s:.1f}s")
        if opened < len(watching):
            await self.fleet.request("watch_stop", timeout=120.0)
            return {"agents": len(watching), "opened": opened, "setup_s": setup_s,
                    "error": "not every watch stream opened in time"}  # fmt: skip
        await asyncio.sleep(1.0)
        cmd_id = new_command_id()
        acks = AckLog(cmd_id)
        sub = await self.bus.subscribe(self.subjects.ack(cmd_id), acks.on_msg)
        try:
            t_put = time.perf_counter()
            rev = await record_desired(self.store, self.key, self.keys, CommandKind.RESUME, cmd_id)
            put_ms = ms(time.perf_counter() - t_put)
            await acks.wait_for(watching, self.args.wait_s)
            summary = acks.summary(watching, t_put, self.worker_of)
        finally:
            await sub.unsubscribe()
        stop = await self.fleet.request("watch_stop", timeout=120.0)
        errors: Counter[str] = Counter()
        for r in stop:
            errors.update(r["errors"])
        summary.update(
            agents=len(watching), opened=opened, setup_s=setup_s, cmd_id=cmd_id, rev=rev,
            put_ms=put_ms, per_worker=counts, worker_errors=dict(errors),
        )  # fmt: skip
        return summary

    async def phase_issue_command(self, online: list[str]) -> dict[str, Any]:
        """The operator's real path (`issue_command`), with a stub controller for the set."""
        hosts = sorted(online)

        async def expected(msg: Msg) -> None:
            await self.bus.publish(msg.reply, encode_reply({"online": hosts, "offline": []}))

        arrivals: list[float] = []

        def on_ack(_ack: Any, _result: IssueResult) -> None:
            arrivals.append(time.perf_counter())

        sub = await self.bus.subscribe(self.subjects.ctl("expected"), expected)
        try:
            result = await issue_command(
                kind=CommandKind.STOP, scope=Scope.FLEET, target=FLEET_TARGET, key=self.key,
                bus=self.bus, store=self.store, subjects=self.subjects, keys=self.keys,
                wait_s=self.args.wait_s, on_ack=on_ack, author=AUTHOR,
            )  # fmt: skip
        finally:
            await sub.unsubscribe()
        last_ms = None
        if arrivals and result.first_ack_ms is not None:
            last_ms = round(result.first_ack_ms + (arrivals[-1] - arrivals[0]) * 1000, 2)
        return {
            "expected": len(result.expected or []),
            "acked": len(result.acked),
            "complete": result.complete,
            "first_ack_ms": result.first_ack_ms,
            "elapsed_ms": round(result.elapsed_ms, 2),
            "last_ack_processed_ms": last_ms,
            "record_ms": round(result.record_ms, 2),
            "rev": result.rev,
        }


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes derived from the arguments."""

    agents: int
    workers: int
    sizes: list[int]
    offline: int
    watch_agents: int
    nofile: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        n = args.agents
        workers = max(1, min(args.workers, n))
        nofile = raise_nofile_limit()
        sizes = split(n, workers)
        if max(sizes) + FD_SLACK > nofile:
            raise BenchError(
                f"{max(sizes)} connections per worker exceed the open-files limit {nofile}: "
                "use more --workers"
            )
        offline = 0 if args.offline_frac <= 0 else max(1, round(n * args.offline_frac))
        cap = args.watch_agents if args.watch_agents is not None else DEFAULT_WATCH_CAP
        return cls(n, workers, sizes, min(offline, n - 1), max(0, min(n, cap)), nofile)

    def configs(
        self, args: argparse.Namespace, nats_url: str, etcd: list[str], key: OperatorKey,
        state_dir: Path,
    ) -> list[WorkerConfig]:  # fmt: skip
        offline = split(self.offline, self.workers)
        firsts = [sum(self.sizes[:i]) for i in range(self.workers)]
        return [
            WorkerConfig(
                index=i,
                nats_url=nats_url,
                etcd_endpoints=tuple(etcd),
                trusted_key=encode_public_key(key.public_key),
                first=firsts[i],
                count=self.sizes[i],
                offline=offline[i],
                state_dir=str(state_dir),
                connect_batch=args.connect_batch,
                gc_freeze=args.gc_freeze,
            )
            for i in range(self.workers)
        ]


async def run_phases(bench: Bench, plan: Plan, ready: list[dict[str, Any]]) -> dict[str, Any]:
    """Floor, offline, kill switch, reconnect, etcd watch, issue_command; the result dict."""
    args, fleet, bus, say = bench.args, bench.fleet, bench.bus, bench.say
    connected = sum(int(r["connected"]) for r in ready)
    await asyncio.sleep(1.0)

    floor_all = await floor_rounds(bus, connected, args.floor_rounds, args.wait_s)
    say(f"floor ({connected} replies): {floor_all['all_ms_median']} ms")

    off_replies = await fleet.request("offline", timeout=60.0)
    online = {h for r in off_replies for h in r["online"]}
    offline = {h for r in off_replies for h in r["offline"]}
    await asyncio.sleep(1.0)
    floor_online = await floor_rounds(bus, len(online), args.floor_rounds, args.wait_s)
    say(f"{len(offline)} agents offline; floor ({len(online)} replies): "
        f"{floor_online['all_ms_median']} ms")  # fmt: skip
    await asyncio.sleep(1.0)

    acks, ks = await bench.phase_killswitch(online)
    say(f"kill switch: {ks['acked']}/{ks['expected']} acked, all in {ks['all_acked_ms']} ms "
        f"(first {ks['first_ack_ms']}, p50 {ks['p50_ms']}, p99 {ks['p99_ms']})")  # fmt: skip
    await asyncio.sleep(1.0)

    conv: dict[str, Any] = {"agents": 0, "converged": 0, "converge_ms": None}
    if offline:
        conv = await bench.phase_reconnect(acks, offline)
        say(f"offline converge: {conv['converged']}/{conv['agents']} in "
            f"{conv['converge_ms']} ms")  # fmt: skip
    await bench.ack_sub.unsubscribe()
    await asyncio.sleep(1.0)

    watch: dict[str, Any] = {"agents": 0, "opened": 0, "all_acked_ms": None}
    if plan.watch_agents > 0:
        say(f"etcd watch phase: opening {plan.watch_agents} watches")
        per_worker = [len(r["online"]) + len(r["offline"]) for r in off_replies]
        watch = await bench.phase_watch(plan.watch_agents, per_worker)
        say(f"etcd watch: {watch.get('acked')}/{watch['agents']} acked, all in "
            f"{watch.get('all_acked_ms')} ms")  # fmt: skip
        await asyncio.sleep(1.0)

    issue: dict[str, Any] = {}
    if not args.skip_issue_command:
        issue = await bench.phase_issue_command(sorted(online | offline))
        say(f"issue_command: {issue['acked']}/{issue['expected']} acked, "
            f"elapsed {issue['elapsed_ms']} ms")  # fmt: skip

    stats = await fleet.request("stats", timeout=60.0)
    save_here = state_save_cost(args.state_dir)
    save_tmp = state_save_cost(None)
    floor_ms = floor_all["all_ms_median"]
    return {
        "agents": plan.agents,
        "expected": ks["expected"],
        "acked": ks["acked"],
        "first_ack_ms": ks["first_ack_ms"],
        "p50_ms": ks["p50_ms"],
        "p99_ms": ks["p99_ms"],
        "all_acked_ms": ks["all_acked_ms"],
        "offline_converge_ms": conv["converge_ms"],
        "floor_ms": floor_ms,
        "etcd_watch_all_acked_ms": watch.get("all_acked_ms"),
        "etcd_watch_agents": watch["agents"],
        "offline_agents": conv["agents"],
        "offline_converged": conv["converged"],
        "ratios": {
            "all_acked_over_floor": ratio(ks["all_acked_ms"], floor_ms),
            "all_acked_over_floor_online": ratio(ks["all_acked_ms"], floor_online["all_ms_median"]),
            "etcd_watch_over_all_acked": ratio(watch.get("all_acked_ms"), ks["all_acked_ms"]),
        },
        "notes": NOTES.format(
            workers=plan.workers,
            per_worker=max(plan.sizes),
            cpus=os.cpu_count(),
            watchers=watch.get("opened", 0),
            floor_rounds=args.floor_rounds,
            gc_freeze=args.gc_freeze,
            gc_text=GC_TEXT[args.gc_freeze],
            state_dir=args.state_dir or tempfile.gettempdir(),
            state_note="tmpfs: N agents' files would be on N disks, not one"
            if args.state_dir == Path("/dev/shm")
            else "one disk for every agent",
            save_here_us=save_here["p50_us"],
            save_tmp_us=save_tmp["p50_us"],
        ),
        "killswitch": ks,
        "offline": conv,
        "floor": {"all": floor_all, "online_only": floor_online},
        "etcd_watch": watch,
        "issue_command": issue,
        "setup": {"workers": plan.workers, "per_worker": ready},
        "worker_stats": stats,
        "params": {
            "agents": plan.agents,
            "workers": plan.workers,
            "offline_frac": args.offline_frac,
            "watch_agents": args.watch_agents,
            "connect_batch": args.connect_batch,
            "floor_rounds": args.floor_rounds,
            "wait_s": args.wait_s,
            "gc_freeze": args.gc_freeze,
            "nofile": plan.nofile,
        },
        "state_files": {
            "dir": str(args.state_dir or tempfile.gettempdir()),
            "save_cost_here": save_here,
            "save_cost_tmp": save_tmp,
        },
        "machine": machine_info(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the stack and the fleet, run the phases, stop everything (also on Ctrl-C)."""
    plan = Plan.from_args(args)
    load_before = os.getloadavg()
    if load_before[0] > 1.0:
        warn(f"load average is {load_before[0]:.1f} before starting: other work shares the CPUs")
    workdir = Path(tempfile.mkdtemp(prefix="hidsd-killswitch-"))
    state_dir = Path(tempfile.mkdtemp(prefix="hidsd-killswitch-state-", dir=args.state_dir))
    nats_srv = NatsServer(workdir / "stack")
    etcd = EtcdCluster(workdir / "stack")
    bus: Bus | None = None
    fleet: Fleet | None = None
    graceful = True
    task = asyncio.current_task()
    if task is not None:  # SIGTERM cleans up like Ctrl-C does
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        t0 = time.perf_counter()
        nats_srv.start()
        etcd.start()
        print(f"stack up in {time.perf_counter() - t0:.1f}s: {nats_srv.url}, "
              f"etcd {etcd.endpoints[0]}; workdir {workdir}", flush=True)  # fmt: skip
        key = OperatorKey.generate()
        bus = Bus(BusOptions(servers=(nats_srv.url,), name="bench-coordinator"))
        await bus.connect(attempts=3)
        fleet = Fleet(bus, workdir)
        configs = plan.configs(args, nats_srv.url, etcd.endpoints, key, state_dir)
        # Spawn before this process opens a gRPC channel: grpc does not like fork().
        t0 = time.perf_counter()
        ready = await fleet.start(configs, timeout=120.0 + plan.agents / 50)
        fleet_s = round(time.perf_counter() - t0, 2)
        connected = sum(int(r["connected"]) for r in ready)
        print(f"fleet up in {fleet_s}s: {connected}/{plan.agents} agents connected in "
              f"{plan.workers} workers (connect {max(r['connect_s'] for r in ready):.1f}s, "
              f"rss {sum(r['rss_mb'] for r in ready):.0f} MiB)", flush=True)  # fmt: skip
        worker_of = {host_id(c.first + j): c.index for c in configs for j in range(c.count)}
        async with Store(etcd.endpoints) as store:
            bench = Bench(args, bus, store, fleet, key, etcd.endpoints[0], worker_of=worker_of)
            out = await run_phases(bench, plan, ready)
        out["setup"]["fleet_up_s"] = fleet_s
        out["machine"]["loadavg_before"] = [round(x, 2) for x in load_before]
        out["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        return out
    except asyncio.CancelledError:
        graceful = False
        raise
    finally:
        # Every step on its own: one failing (say, nats-server already gone after a Ctrl-C
        # that reached the whole process group) must not leave the others undone.
        if fleet is not None:
            try:
                await fleet.stop(graceful)
            except Exception as exc:
                warn(f"stopping workers: {exc!r}")
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
            print(f"workdir kept: {workdir} (agent state: {state_dir})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.rmtree(state_dir, ignore_errors=True)


# --------------------------------------------------------------------------- output


def print_summary(r: dict[str, Any]) -> None:
    ks = r["killswitch"]
    rows = [
        ("agents (N)", fmt(r["agents"], "")),
        ("expected (online)", fmt(r["expected"], "")),
        ("acked (applied)", fmt(r["acked"], "")),
        ("first ack", fmt(r["first_ack_ms"])),
        ("p50 ack", fmt(r["p50_ms"])),
        ("p99 ack", fmt(r["p99_ms"])),
        ("all acked (NATS)", fmt(r["all_acked_ms"])),
        ("etcd record (before publish)", fmt(ks.get("record_ms"))),
        (f"offline converge ({r['offline_converged']}/{r['offline_agents']})",
         fmt(r["offline_converge_ms"])),
        ("floor (N empty replies)", fmt(r["floor_ms"])),
        ("floor (online only)", fmt(r["floor"]["online_only"]["all_ms_median"])),
        (f"etcd watch, all acked (M={r['etcd_watch_agents']})",
         fmt(r["etcd_watch_all_acked_ms"])),
        ("all acked / floor", fmt(r["ratios"]["all_acked_over_floor"], "x")),
        ("etcd watch / all acked", fmt(r["ratios"]["etcd_watch_over_all_acked"], "x")),
    ]  # fmt: skip
    issue = r.get("issue_command") or {}
    if issue:
        rows.append(
            (f"hidsctl issue_command ({issue['acked']}/{issue['expected']})",
             fmt(issue["elapsed_ms"]))
        )  # fmt: skip
    width = max(len(k) for k, _ in rows)
    print()
    print(f"hidsd kill switch, N={r['agents']}")
    print("-" * (width + 16))
    for k, v in rows:
        print(f"{k:<{width}}  {v:>12}")
    print("-" * (width + 16))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--agents", type=int, required=True, help="fleet size N")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    p.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    p.add_argument(
        "--offline-frac",
        type=float,
        default=0.1,
        help="fraction of agents offline during the broadcast (default 0.1, >= 1)",
    )
    p.add_argument(
        "--watch-agents",
        type=int,
        default=None,
        help=f"agents in the etcd-watch reference (default min(N, {DEFAULT_WATCH_CAP}))",
    )
    p.add_argument(
        "--connect-batch",
        type=int,
        default=200,
        help="concurrent connects per worker (default 200)",
    )
    p.add_argument("--floor-rounds", type=int, default=3, help="floor measurements (median)")
    p.add_argument("--wait-s", type=float, default=30.0, help="how long to wait for acks")
    p.add_argument(
        "--no-gc-freeze",
        dest="gc_freeze",
        action="store_false",
        help="do not gc.freeze() the fleet in the workers after connecting",
    )
    p.add_argument(
        "--skip-issue-command", action="store_true", help="skip the hidsctl issue_command phase"
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_base(),
        help="where the agents' StateFiles go (default /dev/shm if present, else the temp dir)",
    )
    p.add_argument("--keep-workdir", action="store_true", help="keep logs and state files")
    args = p.parse_args(argv)  # fmt: skip
    if args.agents < 2:
        p.error("--agents must be at least 2")
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
    args.out.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
