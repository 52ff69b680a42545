"""Worker process for `benchmarks/killswitch.py`: a lightweight in-process fleet.

One worker runs a slice of "lite agents" on one uvloop event loop. A lite agent is the real
agent's command path without the rest of the agent (no heartbeat, no plugins, no resync loop):

* its own `Bus` (one real nats-py connection, named ``hidsd:<host>``);
* a `ControlPolicy` (host id ``bench-NNNNNN``, groups ``("bench",)``) trusting the operator key;
* a `CommandService` subscribed through `CommandService.subscribe()`, whose `on_change`
  persists with `StateFile.save()` as `Agent._on_change` does;
* for the reconnect and the etcd-watch phases, a `ConvergenceService` over one `Store` (one
  gRPC channel) shared by every lite agent of the worker, whose decisions are persisted and
  acked on NATS as `Agent._on_store_decision` does.

Every connection also subscribes to a plain floor subject whose handler only publishes an
empty reply: that measures what NATS and nats-py cost without any agent logic.

The coordinator drives the worker over NATS (a separate control connection): the worker
announces itself on `READY_SUBJECT` once every agent is connected and every subscription is
flushed, then serves one operation at a time from `OP_SUBJECT`, answering on the request's
reply subject. Run as ``python benchmarks/_fleet.py '<json config>'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import os
import resource
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import msgpack
import nats.errors
import uvloop
from nats.aio.msg import Msg

from hidsd.agent.app import StateFile
from hidsd.agent.commands import CommandService
from hidsd.agent.control import ControlPolicy, ControlState, Decision
from hidsd.agent.convergence import ConvergenceService
from hidsd.base import logging as hidsd_logging
from hidsd.base.errors import HidsError
from hidsd.bus.store import Store, WatchEvent
from hidsd.bus.transport import Bus, BusOptions
from hidsd.wire.commands import MAX_COMMAND_BYTES
from hidsd.wire.names import KeyLayout, Subjects
from hidsd.wire.signing import TrustStore

#: Groups every lite agent belongs to (so it subscribes to one group subject too).
GROUPS: tuple[str, ...] = ("bench",)
#: The coordinator publishes operations here, with a reply subject per operation.
OP_SUBJECT = "bench.ctl.op"
#: A worker announces itself here once its slice is connected and subscribed.
READY_SUBJECT = "bench.ctl.ready"
#: The physical floor: every agent connection answers this with an empty reply.
FLOOR_SUBJECT = "bench.floor"
#: Resync period given to ConvergenceService; the benchmark never runs its loop.
RESYNC_S = 60.0

#: Errors a single agent's connect, subscribe or resync may raise; counted, never fatal.
AGENT_ERRORS: tuple[type[BaseException], ...] = (
    HidsError,
    nats.errors.Error,
    OSError,
    TimeoutError,
)


def host_id(index: int) -> str:
    return f"bench-{index:06d}"


def raise_nofile_limit() -> int:
    """Raise the soft open-files limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def rss_mb() -> float:
    """Current resident set size of this process, in MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return round(pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20), 1)


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


async def bounded_gather(
    items: Sequence[Any], fn: Callable[[Any], Awaitable[Any]], limit: int
) -> list[Any]:
    """Run `fn` over `items` with at most `limit` in flight; results in order."""
    sem = asyncio.Semaphore(limit)

    async def one(item: Any) -> Any:
        async with sem:
            return await fn(item)

    return list(await asyncio.gather(*(one(item) for item in items)))


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    index: int
    nats_url: str
    etcd_endpoints: tuple[str, ...]
    trusted_key: str
    first: int
    count: int
    offline: int
    state_dir: str
    connect_batch: int
    gc_freeze: bool

    @classmethod
    def from_json(cls, text: str) -> WorkerConfig:
        raw = json.loads(text)
        raw["etcd_endpoints"] = tuple(raw["etcd_endpoints"])
        return cls(**raw)

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "etcd_endpoints": list(self.etcd_endpoints)})


class LiteAgent:
    """One agent's command path: Bus, ControlPolicy, CommandService, StateFile."""

    def __init__(
        self,
        host: str,
        nats_url: str,
        trust: TrustStore,
        state_dir: Path,
        subjects: Subjects,
        keys: KeyLayout,
    ) -> None:
        self.host = host
        self.keys = keys
        self.bus = Bus(BusOptions(servers=(nats_url,), name=f"hidsd:{host}"))
        self.policy = ControlPolicy(
            host=host, groups=GROUPS, trust=trust, max_command_bytes=MAX_COMMAND_BYTES
        )
        self.state_file = StateFile(state_dir / host)
        # An installed agent's data dir and reserved state slots exist before any command.
        self.state_file.prepare()
        self.commands = CommandService(self.bus, self.policy, subjects, self._on_change)
        self.convergence: ConvergenceService | None = None
        self.saves = 0
        self.save_errors = 0

    def _on_change(self, state: ControlState, decision: Decision) -> None:
        """As `Agent._on_change`: persist first (the gate, log line and heartbeat are not here)."""
        if self.state_file.save(state):
            self.saves += 1
        else:
            self.save_errors += 1

    async def _on_store_decision(self, decision: Decision) -> None:
        """As `Agent._on_store_decision`: persist a change, then ack on NATS."""
        if decision.changed:
            self._on_change(decision.state, decision)
        if self.bus.connected:
            await self.commands.ack(decision)

    async def _on_floor(self, msg: Msg) -> None:
        await self.bus.publish(msg.reply, b"")

    def converger(self, store: Store) -> ConvergenceService:
        if self.convergence is None:
            self.convergence = ConvergenceService(
                store, self.policy, self.keys, RESYNC_S, self._on_store_decision, watch=False
            )
        return self.convergence

    async def connect(self, floor: bool) -> None:
        """Connect and subscribe. Every Bus.subscribe flushes; the floor SUB goes first without
        its own flush, since the server handles one connection's protocol in order and the
        command subscriptions' flushes cover it (one round trip less per agent)."""
        try:
            await self.bus.connect(attempts=3)
            if floor:
                await self.bus.client.subscribe(FLOOR_SUBJECT, cb=self._on_floor)
            await self.commands.subscribe()
        except AGENT_ERRORS:
            await self.close()
            raise

    async def reconnect(self, store: Store) -> Decision | None:
        """What the agent does on reconnect: subscribe again, then resync from etcd."""
        await self.connect(floor=False)
        return await self.converger(store).resync("reconnect")

    async def watch(self, store: Store, start_revision: int) -> None:
        """The agent's watch loop (ConvergenceService._watch_loop) without its retry."""
        conv = self.converger(store)
        stream = cast(
            AsyncGenerator[list[WatchEvent], None],
            store.watch_prefix(self.keys.desired_prefix, start_revision=start_revision),
        )
        async with contextlib.aclosing(stream):
            async for events in stream:
                await conv.on_events(events)

    async def close(self) -> None:
        # RuntimeError: nats-py's close() writes to a transport uvloop has already closed when
        # the server went away with data still buffered.
        with contextlib.suppress(*AGENT_ERRORS, RuntimeError):
            await self.bus.close(timeout=1.0)


class Worker:
    """A slice of the fleet plus the control loop the coordinator talks to."""

    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self.subjects = Subjects()
        self.keys = KeyLayout()
        trust = TrustStore.from_b64([cfg.trusted_key])
        state_dir = Path(cfg.state_dir)
        self.agents = [
            LiteAgent(host_id(i), cfg.nats_url, trust, state_dir, self.subjects, self.keys)
            for i in range(cfg.first, cfg.first + cfg.count)
        ]
        self.online: list[LiteAgent] = []
        self.offline: list[LiteAgent] = []
        self.control = Bus(BusOptions(servers=(cfg.nats_url,), name=f"bench-worker-{cfg.index}"))
        self.store = Store(cfg.etcd_endpoints)
        self.ops: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.errors: Counter[str] = Counter()
        self.watch_tasks: list[asyncio.Task[None]] = []

    def _count_error(self, phase: str, exc: BaseException) -> None:
        self.errors[f"{phase}.{type(exc).__name__}"] += 1

    async def _on_op(self, msg: Msg) -> None:
        self.ops.put_nowait((msg.reply, unpack(msg.data)))

    async def _reply(self, subject: str, result: dict[str, Any]) -> None:
        await self.control.publish(subject, pack({"worker": self.cfg.index, **result}))
        await self.control.flush()

    async def connect_fleet(self) -> dict[str, Any]:
        t0 = time.perf_counter()

        async def one(agent: LiteAgent) -> bool:
            try:
                await agent.connect(floor=True)
            except AGENT_ERRORS as exc:
                self._count_error("connect", exc)
                return False
            return True

        ok = await bounded_gather(self.agents, one, self.cfg.connect_batch)
        self.online = [a for a, good in zip(self.agents, ok, strict=True) if good]
        connect_s = time.perf_counter() - t0
        if self.cfg.gc_freeze:
            # Thousands of long-lived agents per process: move them out of the GC's reach so a
            # full collection does not land in the middle of a broadcast (a real agent process
            # holds one agent, not thousands).
            gc.collect()
            gc.freeze()
        return {
            "connected": len(self.online),
            "failed": len(self.agents) - len(self.online),
            "connect_s": round(connect_s, 3),
            "rss_mb": rss_mb(),
            "pid": os.getpid(),
            "errors": dict(self.errors),
        }

    async def op_offline(self, _req: dict[str, Any]) -> dict[str, Any]:
        """Close the connections of the last `offline` connected agents of this slice."""
        k = min(self.cfg.offline, len(self.online))
        if k:
            self.online, self.offline = self.online[:-k], self.online[-k:]
        else:
            self.offline = []
        await asyncio.gather(*(a.close() for a in self.offline))
        return {
            "online": [a.host for a in self.online],
            "offline": [a.host for a in self.offline],
        }

    async def op_reconnect(self, _req: dict[str, Any]) -> dict[str, Any]:
        """The offline agents come back: reconnect, subscribe, resync from etcd, ack."""
        t0 = time.perf_counter()

        async def one(agent: LiteAgent) -> str:
            try:
                decision = await agent.reconnect(self.store)
            except AGENT_ERRORS as exc:
                self._count_error("reconnect", exc)
                return "error"
            return "no_decision" if decision is None else str(decision.ack_status)

        outcomes = await bounded_gather(self.offline, one, self.cfg.connect_batch)
        pairs = list(zip(self.offline, outcomes, strict=True))
        back = [a for a, o in pairs if o != "error"]
        self.online += back
        self.offline = [a for a, o in pairs if o == "error"]
        return {
            "reconnected": len(back),
            "outcomes": dict(Counter(outcomes)),
            "worker_s": round(time.perf_counter() - t0, 3),
        }

    async def op_watch_start(self, req: dict[str, Any], tg: asyncio.TaskGroup) -> dict[str, Any]:
        """Open one etcd watch per participating agent (the first `counts[index]` online)."""
        watchers = self.online[: int(req["counts"][self.cfg.index])]
        start = int(req["start_revision"])

        async def watch(agent: LiteAgent) -> None:
            try:
                await agent.watch(self.store, start)
            except HidsError as exc:
                self._count_error("watch", exc)

        self.watch_tasks = [tg.create_task(watch(a)) for a in watchers]
        await asyncio.sleep(0)
        return {"watching": [a.host for a in watchers]}

    async def op_watch_stop(self, _req: dict[str, Any]) -> dict[str, Any]:
        tasks, self.watch_tasks = self.watch_tasks, []
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks)
        return {"stopped": len(tasks), "errors": dict(self.errors)}

    def op_stats(self) -> dict[str, Any]:
        bus: Counter[str] = Counter()
        rejections: Counter[str] = Counter()
        for a in self.agents:
            bus.update(a.bus.counters)
            rejections.update({k: v for k, v in a.policy.rejections.items() if v})
        return {
            "rss_mb": rss_mb(),
            "maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "cpu_s": round(time.process_time(), 2),
            "handled": sum(a.commands.handled for a in self.agents),
            "saves": sum(a.saves for a in self.agents),
            "save_errors": sum(a.save_errors for a in self.agents),
            "bus_counters": dict(bus),
            "rejections": dict(rejections),
            "errors": dict(self.errors),
        }

    async def close_fleet(self) -> None:
        await bounded_gather(self.agents, lambda a: a.close(), 500)

    async def serve(self) -> None:
        """Announce readiness, then serve operations until `exit`."""
        async with asyncio.TaskGroup() as tg:
            await self.control.subscribe(OP_SUBJECT, self._on_op)
            ready = await self.connect_fleet()
            await self.control.publish(READY_SUBJECT, pack({"worker": self.cfg.index, **ready}))
            await self.control.flush()
            while True:
                reply, req = await self.ops.get()
                op = str(req.get("op"))
                try:
                    if op == "offline":
                        result = await self.op_offline(req)
                    elif op == "reconnect":
                        result = await self.op_reconnect(req)
                    elif op == "watch_start":
                        result = await self.op_watch_start(req, tg)
                    elif op == "watch_stop":
                        result = await self.op_watch_stop(req)
                    elif op == "stats":
                        result = self.op_stats()
                    elif op == "exit":
                        await self.op_watch_stop(req)
                        await asyncio.wait_for(self.close_fleet(), 30.0)
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


def main(argv: list[str]) -> int:
    # Ctrl-C goes to the whole foreground process group: the coordinator decides when
    # workers stop (an `exit` op, else SIGTERM; PR_SET_PDEATHSIG if it dies).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_nofile_limit()
    hidsd_logging.configure("warning", "json")
    cfg = WorkerConfig.from_json(argv[1])
    uvloop.run(Worker(cfg).run())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
