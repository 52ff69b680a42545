"""Worker for `benchmarks/config_rollout.py`: one slice of the fleet, every host a real `Agent`.

The agents are `harness.fleet.SimFleet`'s: `hidsd.agent.app.Agent` with all its services, so
the config path is the agent's own `ConfigService` (a start read, one etcd watch per scope
pointer, the resync on a watch event, validation, merge, the last-good file), its hot reload
(`Agent._apply_config`) and its `HeartbeatService` (poked when a config is applied). Host
``cfg-NNNNNN`` is in groups ``bench`` and ``shard<N % 10>``.

Timestamps for the per-phase breakdown, taken without changing what the agent does: once an
agent is up, two public attributes of its `ConfigService` are wrapped by delegating wrappers,

* `config.store` (the store its resyncs read; the watch streams keep the Follower's own
  reference): when each resync's first read (the scope pointers) began;
* `config.on_status` (the agent's heartbeat poke, called at the end of every apply): when the
  new versions took effect, and the read that began that resync;

and the last-good file's change time (`config.path`, set by the kernel at the rename that
saves it) is read when the coordinator asks.

Operations (harness.workers.serve): `arm` forgets the stamps before a round, `report` gives
each host's versions, status and stamps relative to the coordinator's t0, `stats` sums the
agents' counters. Run as ``python benchmarks/config_rollout_worker.py '<json config>'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.fleet import FleetSpec, SimFleet, serve_fleet
from harness.report import ms, rss_mb
from harness.workers import Op, worker_main

from hidsd.agent.app import Agent
from hidsd.agent.follow import FollowStore
from hidsd.bus.store import KV, WatchEvent

#: every simulated host is in this group, and in one of `SHARDS` shard groups
GROUP = "bench"
SHARDS = 10
HOST_PREFIX = "cfg"


def groups_of(index: int) -> tuple[str, ...]:
    return (GROUP, f"shard{index % SHARDS}")


@dataclass(slots=True)
class Stamps:
    """One agent's monotonic times (CLOCK_MONOTONIC is system-wide: the coordinator's too)."""

    last_read: float | None = None
    #: the pointer read of the resync that applied the round's versions
    read: float | None = None
    applied: float | None = None
    #: applies that ended with status ok (each calls on_status once)
    applies: int = 0

    def reset(self) -> None:
        self.read = self.applied = None


class StampedReads:
    """A `ConfigService`'s store: the real one, plus when a resync's pointer read began."""

    def __init__(self, inner: FollowStore, pointer_keys: Sequence[str], stamps: Stamps) -> None:
        self.inner = inner
        self.pointer_keys = list(pointer_keys)
        self.stamps = stamps

    async def get_many(self, keys: Sequence[str]) -> tuple[list[KV], int]:
        if list(keys) == self.pointer_keys:
            self.stamps.last_read = time.monotonic()
        return await self.inner.get_many(keys)

    def watch_key(self, key: str, start_revision: int = 0) -> AsyncIterator[list[WatchEvent]]:
        return self.inner.watch_key(key, start_revision)

    def watch_prefix(self, prefix: str, start_revision: int = 0) -> AsyncIterator[list[WatchEvent]]:
        return self.inner.watch_prefix(prefix, start_revision)


def instrument(agent: Agent) -> Stamps:
    """Wrap the agent's config store and status callback; both delegate unchanged."""
    cfg = agent.config
    stamps = Stamps()
    cfg.store = StampedReads(cfg.store, cfg.pointer_keys, stamps)
    poke = cfg.on_status

    def on_status() -> None:
        if cfg.status == "ok":
            stamps.applies += 1
            if stamps.applied is None:
                stamps.applied = time.monotonic()
                stamps.read = stamps.last_read
        if poke is not None:
            poke()

    cfg.on_status = on_status
    return stamps


def saved_at(path: Path) -> float | None:
    """The last-good file's change time (wall clock; the kernel's coarse clock, ~1 ms)."""
    with contextlib.suppress(OSError):
        return os.stat(path).st_ctime_ns / 1e9
    return None


def since(t: float | None, t0: float) -> float | None:
    return None if t is None or t < t0 else ms(t - t0)


@dataclass
class Slice:
    """The worker's agents and their stamps."""

    cfg: dict[str, Any]
    fleet: SimFleet
    stamps: dict[str, Stamps] = field(default_factory=dict)

    def running(self) -> list[Agent]:
        return [s.agent for s in self.fleet.agents if s.running and s.agent is not None]

    async def setup(self, tg: asyncio.TaskGroup) -> dict[str, Any]:
        started = await self.fleet.start(tg, timeout_s=float(self.cfg["start_timeout_s"]))
        agents = self.running()
        self.stamps = {a.settings.host_id: instrument(a) for a in agents}
        if self.cfg["gc_freeze"]:
            self.fleet.freeze_gc()
        followers = [f for a in agents for f in (a.convergence.follower, a.config.follower,
                                                 a.plugin_state.follower)]  # fmt: skip
        return {
            **started,
            "hosts": list(self.stamps),
            "config_watch_keys": sum(len(a.config.pointer_keys) for a in agents),
            "watch_keys": sum(len(f.keys) for f in followers if f.watch),
            "rss_mb": rss_mb(),
        }

    async def arm(self, _req: dict[str, Any]) -> dict[str, Any]:
        for s in self.stamps.values():
            s.reset()
        return {"armed": len(self.stamps)}

    async def report(self, req: dict[str, Any]) -> dict[str, Any]:
        """Per host: what it runs now, and [pointer read, applied, last good saved] in ms
        after the coordinator's t0 (None: not since t0)."""
        t0, t0_wall = float(req["t0"]), float(req["t0_wall"])
        out: dict[str, Any] = {}
        for a in self.running():
            c, st = a.config, self.stamps[a.settings.host_id]
            out[a.settings.host_id] = {
                "versions": dict(c.versions), "status": c.status, "fingerprint": c.fingerprint,
                "marks": [since(st.read, t0), since(st.applied, t0),
                          since(saved_at(c.path), t0_wall)],
            }  # fmt: skip
        return {"agents": out}

    async def stats(self, _req: dict[str, Any]) -> dict[str, Any]:
        agents = self.running()
        return {
            **self.fleet.stats(),
            "config": {
                "applies_ok": sum(s.applies for s in self.stamps.values()),
                "resyncs": sum(a.config.follower.resyncs for a in agents),
                "rejections": sum(a.config.rejections for a in agents),
                "statuses": dict(Counter(a.config.status for a in agents)),
                "log_levels": dict(Counter(str(a.config.effective["log_level"]) for a in agents)),
            },
        }

    async def close(self) -> None:
        await self.fleet.stop()

    def ops(self) -> dict[str, Op]:
        return {"arm": self.arm, "report": self.report, "stats": self.stats}


async def run(cfg: dict[str, Any]) -> None:
    spec = FleetSpec(
        nats_url=cfg["nats_url"], etcd_endpoints=tuple(cfg["etcd_endpoints"]), trusted_keys=(),
        data_root=Path(cfg["data_root"]), host_prefix=HOST_PREFIX,
        heartbeat_s=float(cfg["heartbeat_s"]), resync_s=float(cfg["resync_s"]),
    )  # fmt: skip
    await serve_fleet(cfg, spec, groups_of, Slice)


if __name__ == "__main__":
    sys.exit(worker_main(run))
