"""Simulated agents: real `Agent`s, many to a process.

Every simulated host is `hidsd.agent.app.Agent` itself, built from `AgentSettings` as
`hidsd.agent.main` builds it, running `Agent.run()`: command path, convergence with etcd,
config hot reload, plugin control, breaker service, storage service, heartbeat, graceful
shutdown, all the package's code. How N of them in one process differ from N hosts:

* one event loop per worker process: a worker's agents handle one broadcast one after
  another, so per-agent latency includes waiting behind the others on the loop;
* one etcd `Store` (one gRPC channel) per worker, shared by its agents (each real agent has
  its own channel; every watch is still its own stream);
* one log level and format per process (`configure` is process-wide): workers log at warning;
* the breaker runs with `cgroups = "off"` (no per-agent cgroup subtree) and no plugins run
  unless a benchmark configures some;
* data dirs live under the worker's directory (a tmpfs where the benchmark says so), where N
  real hosts have N disks; `runtime_dir` is off.

Readiness: an agent is up once it is connected and subscribed (`Agent.bus_ready`) and its
three etcd followers (desired state, config, plugin state) have done their first read (their
watches start from that read's revision, so nothing after it is missed).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hidsd.agent.app import Agent
from hidsd.agent.settings import AgentSettings, EtcdSettings, NatsSettings
from hidsd.bus.store import Store

from .report import bounded_gather, maxrss_mb, rss_mb
from .workers import Op, serve


@dataclass(frozen=True)
class FleetSpec:
    """What every simulated agent of a worker shares, and how its hosts are named."""

    nats_url: str
    etcd_endpoints: tuple[str, ...]
    trusted_keys: tuple[str, ...]
    data_root: Path
    host_prefix: str = "sim"
    heartbeat_s: float = 10.0
    resync_s: float = 60.0
    watch: bool = True
    shutdown_timeout_s: float = 5.0

    def host(self, index: int) -> str:
        return f"{self.host_prefix}-{index:06d}"

    def settings(self, index: int, groups: tuple[str, ...]) -> AgentSettings:
        host = self.host(index)
        return AgentSettings(
            host_id=host, groups=groups,
            nats=NatsSettings(servers=(self.nats_url,), reconnect_base_s=0.2, reconnect_max_s=2.0),
            etcd=EtcdSettings(endpoints=self.etcd_endpoints),
            trusted_keys=self.trusted_keys, data_dir=self.data_root / host,
            heartbeat_s=self.heartbeat_s, resync_s=self.resync_s, watch=self.watch,
            shutdown_timeout_s=self.shutdown_timeout_s, log_level="warning", log_format="json",
            cgroups="off", runtime_dir=None,
        )  # fmt: skip


@dataclass
class SimAgent:
    settings: AgentSettings
    agent: Agent | None = None
    task: asyncio.Task[int] | None = None
    starts: int = 0

    @property
    def host(self) -> str:
        return self.settings.host_id

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()


async def _up(agent: Agent, task: asyncio.Task[int]) -> None:
    followers = (agent.convergence.follower, agent.config.follower, agent.plugin_state.follower)
    waits = [agent.bus_ready.wait(), *(f.synced.wait() for f in followers)]
    pending = {asyncio.ensure_future(w) for w in waits}
    try:
        while pending:
            done, pending = await asyncio.wait(
                pending | {task}, return_when=asyncio.FIRST_COMPLETED
            )
            if task in done:
                raise RuntimeError(
                    f"{agent.settings.host_id} exited with {task.result()} while starting"
                )
            pending.discard(task)
    finally:
        for w in pending:
            w.cancel()


@dataclass
class SimFleet:
    """A worker's slice of simulated agents, started in the worker's TaskGroup."""

    agents: list[SimAgent]
    store: Store
    connect_batch: int = 100
    errors: Counter[str] = field(default_factory=Counter)

    @classmethod
    def build(cls, spec: FleetSpec, indexes: Sequence[int],
              groups_of: Callable[[int], tuple[str, ...]], store: Store,
              connect_batch: int = 100) -> SimFleet:  # fmt: skip
        return cls([SimAgent(spec.settings(i, groups_of(i))) for i in indexes], store,
                   connect_batch)  # fmt: skip

    def by_host(self) -> dict[str, SimAgent]:
        return {a.host: a for a in self.agents}

    async def start(self, tg: asyncio.TaskGroup, which: Sequence[SimAgent] | None = None,
                    timeout_s: float = 120.0) -> dict[str, Any]:  # fmt: skip
        """Build and run each agent (a fresh `Agent` from its settings and data dir, as a
        process restart does); return once every one is up. Failures are counted."""
        t0 = time.perf_counter()

        async def one(sim: SimAgent) -> bool:
            sim.agent = Agent(sim.settings, store=self.store)
            sim.task = tg.create_task(sim.agent.run(), name=f"sim:{sim.host}")
            sim.starts += 1
            try:
                await asyncio.wait_for(_up(sim.agent, sim.task), timeout_s)
            except (TimeoutError, RuntimeError) as exc:
                self.errors[f"start.{type(exc).__name__}"] += 1
                return False
            return True

        ok = await bounded_gather(list(which if which is not None else self.agents), one,
                                  self.connect_batch)  # fmt: skip
        return {"started": sum(ok), "failed": len(ok) - sum(ok),
                "start_s": round(time.perf_counter() - t0, 3)}  # fmt: skip

    async def stop(self, which: Sequence[SimAgent] | None = None, timeout_s: float = 30.0) -> int:
        """Stop agents as SIGTERM does (`should_exit`: a bye heartbeat, then close)."""
        targets = [a for a in (which if which is not None else self.agents) if a.running]
        for sim in targets:
            assert sim.agent is not None
            sim.agent.should_exit.set()
        tasks = [sim.task for sim in targets if sim.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=timeout_s)
            for t in late:
                self.errors["stop.timeout"] += 1
                t.cancel()
            if late:
                await asyncio.wait(late)
        return len(targets)

    def freeze_gc(self) -> None:
        """Hundreds of long-lived agents per process: move them out of the cyclic GC's reach so
        a full collection does not land in a measurement (a real agent process holds one)."""
        gc.collect()
        gc.freeze()

    def stats(self) -> dict[str, Any]:
        """Sums of the agents' own counters: commands, rejections, bus, heartbeats, storage."""
        rejections: Counter[str] = Counter()
        bus: Counter[str] = Counter()
        storage: Counter[str] = Counter()
        handled = hb_failures = 0
        for sim in self.agents:
            a = sim.agent
            if a is None:
                continue
            handled += a.commands.handled
            hb_failures += a.heartbeat.failures
            rejections.update({k: v for k, v in a.policy.counters().items() if v})
            bus.update(a.bus.counters)
            storage[a.health.status.value] += 1
        return {
            "running": sum(a.running for a in self.agents),
            "handled": handled,
            "heartbeat_failures": hb_failures,
            "rejections": dict(rejections),
            "bus_counters": dict(bus),
            "storage": dict(storage),
            "errors": dict(self.errors),
            "rss_mb": rss_mb(),
            "maxrss_mb": maxrss_mb(),
            "cpu_s": round(time.process_time(), 2),
        }


@contextlib.asynccontextmanager
async def shared_store(endpoints: Sequence[str]) -> Any:
    """The worker's one etcd channel (opened after any fork: grpc does not like fork())."""
    store = Store(tuple(endpoints))
    await store.open()
    try:
        yield store
    finally:
        with contextlib.suppress(Exception):
            await store.close()


def tmpfs() -> Path | None:
    """/dev/shm when writable: N agents' data dirs would be on N disks, not on this one."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


class Slice(Protocol):
    """A worker's part of a benchmark: its setup in the worker's TaskGroup, its operations
    (`harness.workers.serve`'s table) and its close."""

    def setup(self, tg: asyncio.TaskGroup) -> Awaitable[dict[str, Any]]: ...
    def ops(self) -> Mapping[str, Op]: ...
    def close(self) -> Awaitable[None]: ...


async def serve_fleet(
    cfg: dict[str, Any],
    spec: FleetSpec,
    groups_of: Callable[[int], tuple[str, ...]],
    make_slice: Callable[[dict[str, Any], SimFleet], Slice],
) -> None:
    """A fleet worker's life: its agents (`cfg` first/count/connect_batch) on one etcd channel,
    served as `make_slice` says until the coordinator says exit."""
    indexes = range(int(cfg["first"]), int(cfg["first"]) + int(cfg["count"]))
    async with shared_store(spec.etcd_endpoints) as store:
        fleet = SimFleet.build(spec, indexes, groups_of, store, int(cfg["connect_batch"]))
        part = make_slice(cfg, fleet)
        await serve(cfg, part.setup, part.ops(), part.close)
