"""Worker process for `benchmarks/config_rollout.py`: a fleet of lite agents on the config path.

One worker runs a slice of "lite agents" on one uvloop event loop. A lite agent is the real
agent's config hot-reload path and its heartbeat, without the rest of the agent:

* its own `ConfigService` (host id ``cfg-NNNNNN``, groups ``("bench", "shard<i % 10>")``), so
  its `Follower` reads the scope pointers on start and keeps one etcd watch stream open per
  pointer key (fleet, both groups, its host: 4 streams per agent);
* one `Store` (one gRPC channel) shared by every lite agent of the worker, where a real agent
  has its own channel;
* its own `Bus` (one nats-py connection, named ``hidsd:<host>``) that publishes heartbeats;
* `on_apply` does what `Agent._apply_config` does (new heartbeat and resync periods, the
  effective config kept, the `config_hot_reloaded` log line) except `set_level` (the log level
  is process-wide and shared here by hundreds of agents) and `Supervisor.configure` (no
  plugins run here). Then it pokes the heartbeat loop,
  which is `HeartbeatService.run` in miniature: it sends at once when poked, else every
  `heartbeat_s` (jittered), with `config=ConfigService.report()`;
* the last good config is written by `ConfigService` itself, under ``<data_dir>/<host>/``.

`BenchConfigService` only adds timestamps (watch event seen, apply done, last good saved) for
the per-phase breakdown; every decision is the package's code.

The coordinator drives the worker over NATS (a separate control connection), with the same
subjects and request/reply shape as `_fleet.py`: the worker announces itself on
`READY_SUBJECT` once its agents are connected and their initial etcd read is done, then serves
one operation at a time from `OP_SUBJECT`. Run as ``python benchmarks/_config_fleet.py '<json>'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import ctypes
import dataclasses
import gc
import json
import os
import random
import resource
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop
from _fleet import (
    AGENT_ERRORS,
    OP_SUBJECT,
    READY_SUBJECT,
    bounded_gather,
    pack,
    raise_nofile_limit,
    rss_mb,
    unpack,
)
from nats.aio.msg import Msg

from hidsd import __version__
from hidsd.agent.configsvc import ConfigService
from hidsd.base import logging as hidsd_logging
from hidsd.base.hostinfo import SelfUsage, host_facts
from hidsd.bus.store import Store, WatchEvent
from hidsd.bus.transport import Bus, BusOptions
from hidsd.wire.commands import RunMode
from hidsd.wire.heartbeat import Heartbeat, encode_heartbeat
from hidsd.wire.names import KeyLayout, Subjects
from hidsd.wire.rpc import encode_event

PR_SET_PDEATHSIG = 1
#: The group every lite agent is in; each is also in one of `SHARDS` shard groups.
GROUP = "bench"
SHARDS = 10


def host_id(index: int) -> str:
    return f"cfg-{index:06d}"


def groups_of(index: int) -> tuple[str, ...]:
    return (GROUP, f"shard{index % SHARDS}")


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    index: int
    nats_url: str
    etcd_endpoints: tuple[str, ...]
    first: int
    count: int
    data_dir: str
    connect_batch: int
    gc_freeze: bool
    heartbeat_s: float
    resync_s: float
    sync_timeout_s: float
    parent_pid: int

    @classmethod
    def from_json(cls, text: str) -> WorkerConfig:
        raw = json.loads(text)
        raw["etcd_endpoints"] = tuple(raw["etcd_endpoints"])
        return cls(**raw)

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "etcd_endpoints": list(self.etcd_endpoints)})


@dataclass(slots=True)
class Marks:
    """Monotonic times (CLOCK_MONOTONIC is system-wide: comparable with the coordinator's) of
    the first of each step since the coordinator armed the round."""

    watch: float | None = None
    apply: float | None = None
    saved: float | None = None
    heartbeat: float | None = None

    def reset(self) -> None:
        self.watch = self.apply = self.saved = self.heartbeat = None


class BenchConfigService(ConfigService):
    """`ConfigService` plus timestamps; no behaviour of its own."""

    def __init__(self, *args: Any, marks: Marks, **kwargs: Any) -> None:
        self.marks = marks
        super().__init__(*args, **kwargs)

    async def _on_events(self, events: list[WatchEvent]) -> None:
        if self.marks.watch is None:
            self.marks.watch = time.monotonic()
        await super()._on_events(events)

    async def resync(self, why: str) -> int:
        revision = await super().resync(why)
        if self.marks.apply is not None and self.marks.saved is None:
            self.marks.saved = time.monotonic()  # after _save_last_good
        return revision


class LiteAgent:
    """One agent's config path: ConfigService, heartbeat, Bus."""

    def __init__(
        self,
        index: int,
        cfg: WorkerConfig,
        store: Store,
        keys: KeyLayout,
        subjects: Subjects,
        facts: dict[str, Any],
    ) -> None:
        self.host = host_id(index)
        self.groups = groups_of(index)
        self.subjects = subjects
        self.facts = facts
        self.started = time.monotonic()
        self.bus = Bus(
            BusOptions(servers=(cfg.nats_url,), name=f"hidsd:{self.host}"),
            on_reconnect=self._on_reconnect,
        )
        self.heartbeat_s = cfg.heartbeat_s
        self.resync_s = cfg.resync_s
        self.dynamic: dict[str, Any] = {}
        self.marks = Marks()
        self.applies = 0
        self.seq = 0
        self.sent = 0
        self._now = asyncio.Event()
        self._rng = random.Random()
        self._usage = SelfUsage()
        self.service = BenchConfigService(
            store, keys, self.host, self.groups, Path(cfg.data_dir) / self.host,
            base={"log_level": "warning", "heartbeat_s": cfg.heartbeat_s,
                  "resync_s": cfg.resync_s},
            on_apply=self._apply_config, on_reject=self._publish_event,
            period_s=lambda: self.resync_s, watch=True, marks=self.marks,
            on_status=self._now.set,  # as Agent: every new status or version is reported at once
        )  # fmt: skip
        self.log = self.service.log
        self.service.load_last_good()

    # ------------------------------------------------------------------ as Agent does

    def _apply_config(self, effective: dict[str, Any]) -> None:
        """`Agent._apply_config` without `set_level` (process-wide here), then the poke."""
        self.applies += 1
        if self.marks.apply is None:
            self.marks.apply = time.monotonic()
        self.heartbeat_s = float(effective["heartbeat_s"])
        self.resync_s = float(effective["resync_s"])
        self.dynamic = effective
        self.log.info("config_hot_reloaded", log_level=effective["log_level"],
                      heartbeat_s=self.heartbeat_s, resync_s=self.resync_s)  # fmt: skip
        self._now.set()

    async def _publish_event(self, event: dict[str, Any]) -> None:
        if self.bus.connected:
            data = encode_event(self.host, event, time.time())
            await self.bus.publish(self.subjects.event(self.host), data)
        self._now.set()

    async def _on_reconnect(self) -> None:
        self.service.follower.request()
        self._now.set()

    def build(self) -> Heartbeat:
        cpu, rss = self._usage.sample()
        self.seq += 1
        return Heartbeat(
            host=self.host,
            version=__version__,
            groups=self.groups,
            mode=RunMode.RUNNING,
            applied_rev=0,
            held=False,
            interval_s=self.heartbeat_s,
            seq=self.seq,
            sent_at=time.time(),
            uptime_s=round(time.monotonic() - self.started, 3),
            cpu_pct=round(cpu, 2),
            rss_bytes=rss,
            facts={**self.facts, "store_ok": self.service.follower.store_ok},
            rejections={f"bus.{k}": v for k, v in self.bus.counters.items()},
            config=self.service.report(),
        )

    async def send(self) -> None:
        if not self.bus.connected:
            return
        after_apply = self.marks.apply is not None and self.marks.heartbeat is None
        await self.bus.publish(self.subjects.heartbeat(self.host), encode_heartbeat(self.build()))
        self.sent += 1
        if after_apply:
            self.marks.heartbeat = time.monotonic()

    async def heartbeat_loop(self) -> None:
        """`HeartbeatService.run`: send, then wait for a poke or the jittered period."""
        while True:
            await self.send()
            self._now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._now.wait(), self.heartbeat_s * self._rng.uniform(0.9, 1.1)
                )

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.service.run(), name=f"config:{self.host}")
            tg.create_task(self.heartbeat_loop(), name=f"heartbeat:{self.host}")

    # ------------------------------------------------------------------ benchmark plumbing

    async def connect(self) -> None:
        try:
            await self.bus.connect(attempts=3)
        except AGENT_ERRORS:
            await self.close()
            raise

    async def close(self) -> None:
        # RuntimeError: nats-py's close() writes to a transport uvloop has already closed.
        with contextlib.suppress(*AGENT_ERRORS, RuntimeError):
            await self.bus.close(timeout=1.0)


def _delta_ms(t: float | None, t0: float) -> float | None:
    return None if t is None else round((t - t0) * 1000, 3)


class Worker:
    """A slice of the fleet plus the control loop the coordinator talks to."""

    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self.keys = KeyLayout()
        self.subjects = Subjects()
        self.store = Store(cfg.etcd_endpoints)
        facts = host_facts()
        self.agents = [
            LiteAgent(i, cfg, self.store, self.keys, self.subjects, facts)
            for i in range(cfg.first, cfg.first + cfg.count)
        ]
        self.online: list[LiteAgent] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.control = Bus(
            BusOptions(servers=(cfg.nats_url,), name=f"bench-cfg-worker-{cfg.index}")
        )
        self.ops: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.errors: Counter[str] = Counter()
        self.profiler: cProfile.Profile | None = None
        self.profile_to: Path | None = None

    async def _on_op(self, msg: Msg) -> None:
        self.ops.put_nowait((msg.reply, unpack(msg.data)))

    async def _reply(self, subject: str, result: dict[str, Any]) -> None:
        await self.control.publish(subject, pack({"worker": self.cfg.index, **result}))
        await self.control.flush()

    async def start_fleet(self, tg: asyncio.TaskGroup) -> dict[str, Any]:
        """Connect every agent's Bus, start its config service and heartbeat, and wait for
        every agent's first etcd read (`Follower.synced`)."""
        t0 = time.perf_counter()

        async def one(agent: LiteAgent) -> bool:
            try:
                await agent.connect()
            except AGENT_ERRORS as exc:
                self.errors[f"connect.{type(exc).__name__}"] += 1
                return False
            return True

        ok = await bounded_gather(self.agents, one, self.cfg.connect_batch)
        self.online = [a for a, good in zip(self.agents, ok, strict=True) if good]
        connect_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        self.tasks = [tg.create_task(a.run(), name=f"agent:{a.host}") for a in self.online]
        waits = [a.service.follower.synced.wait() for a in self.online]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waits), self.cfg.sync_timeout_s)
        synced = sum(a.service.follower.synced.is_set() for a in self.online)
        sync_s = time.perf_counter() - t1
        if self.cfg.gc_freeze:
            # Hundreds of long-lived agents per process: move them out of the cyclic GC's reach
            # so a full collection does not land in the middle of a rollout (a real agent
            # process holds one agent, not hundreds).
            gc.collect()
            gc.freeze()
        return {
            "connected": len(self.online),
            "failed": len(self.agents) - len(self.online),
            "synced": synced,
            "hosts": [a.host for a in self.online],
            "watch_keys": sum(len(a.service.pointer_keys) for a in self.online),
            "connect_s": round(connect_s, 3),
            "sync_s": round(sync_s, 3),
            "rss_mb": rss_mb(),
            "pid": os.getpid(),
            "errors": dict(self.errors),
        }

    def op_arm(self, req: dict[str, Any]) -> dict[str, Any]:
        """Reset the agents' step times; with `profile`, run cProfile until `marks`."""
        for a in self.online:
            a.marks.reset()
        if req.get("profile"):
            self.profile_to = Path(str(req["profile"])) / f"worker-{self.cfg.index}.prof"
            self.profiler = cProfile.Profile()
            self.profiler.enable()
        return {"armed": len(self.online)}

    def op_marks(self, req: dict[str, Any]) -> dict[str, Any]:
        """Per agent: [watch, apply, saved, heartbeat] in ms after the coordinator's t0."""
        t0 = float(req["t0"])
        profiler, self.profiler = self.profiler, None
        if profiler is not None and self.profile_to is not None:
            profiler.disable()
            self.profile_to.parent.mkdir(parents=True, exist_ok=True)
            profiler.dump_stats(self.profile_to)
        return {
            "marks": {
                a.host: [
                    _delta_ms(a.marks.watch, t0),
                    _delta_ms(a.marks.apply, t0),
                    _delta_ms(a.marks.saved, t0),
                    _delta_ms(a.marks.heartbeat, t0),
                ]
                for a in self.online
            }
        }

    def op_state(self) -> dict[str, Any]:
        """What each agent runs now, as its heartbeat would say."""
        return {
            "state": {
                a.host: {
                    "versions": dict(a.service.versions),
                    "status": a.service.status,
                    "fingerprint": a.service.fingerprint,
                }
                for a in self.online
            }
        }

    def op_stats(self) -> dict[str, Any]:
        bus: Counter[str] = Counter()
        statuses: Counter[str] = Counter()
        for a in self.online:
            bus.update(a.bus.counters)
            statuses[a.service.status] += 1
        return {
            "rss_mb": rss_mb(),
            "maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "cpu_s": round(time.process_time(), 2),
            "applies": sum(a.applies for a in self.online),
            "heartbeats_sent": sum(a.sent for a in self.online),
            "resyncs": sum(a.service.follower.resyncs for a in self.online),
            "rejections": sum(a.service.rejections for a in self.online),
            "store_ok": sum(a.service.follower.store_ok for a in self.online),
            "statuses": dict(statuses),
            "bus_counters": dict(bus),
            "errors": dict(self.errors),
        }

    async def stop_fleet(self) -> None:
        tasks, self.tasks = self.tasks, []
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await bounded_gather(self.agents, lambda a: a.close(), 500)

    async def serve(self) -> None:
        """Announce readiness, then serve operations until `exit`."""
        async with asyncio.TaskGroup() as tg:
            await self.control.subscribe(OP_SUBJECT, self._on_op)
            ready = await self.start_fleet(tg)
            await self.control.publish(READY_SUBJECT, pack({"worker": self.cfg.index, **ready}))
            await self.control.flush()
            while True:
                reply, req = await self.ops.get()
                op = str(req.get("op"))
                try:
                    if op == "arm":
                        result = self.op_arm(req)
                    elif op == "marks":
                        result = self.op_marks(req)
                    elif op == "state":
                        result = self.op_state()
                    elif op == "stats":
                        result = self.op_stats()
                    elif op == "exit":
                        await asyncio.wait_for(self.stop_fleet(), 30.0)
                        result = {"closed": len(self.agents)}
                    else:
                        result = {"error": f"unknown op {op!r}"}
                except Exception as exc:  # reported to the coordinator, which fails the run
                    result = {"error": f"{op}: {type(exc).__name__}: {exc}"}
                await self._reply(reply, result)
                if op == "exit":
                    return

    async def run(self) -> None:
        await self.control.connect(attempts=5)
        await self.store.open()
        try:
            await self.serve()
        finally:
            with contextlib.suppress(*AGENT_ERRORS):
                await self.store.close()
            with contextlib.suppress(*AGENT_ERRORS, RuntimeError):
                await self.control.close()


def die_with_parent(parent_pid: int) -> None:
    """PR_SET_PDEATHSIG: the kernel kills this worker when the coordinator dies. Set here,
    in the worker, rather than in a `preexec_fn` (Python in a forked child is unsafe once the
    parent has threads); exit at once if the coordinator is already gone."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        sys.exit(70)


def main(argv: list[str]) -> int:
    cfg = WorkerConfig.from_json(argv[1])
    die_with_parent(cfg.parent_pid)
    # Ctrl-C goes to the whole foreground process group: the coordinator decides when
    # workers stop (an `exit` op, else SIGTERM; PR_SET_PDEATHSIG if it dies).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_nofile_limit()
    hidsd_logging.configure("warning", "json")
    uvloop.run(Worker(cfg).run())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
