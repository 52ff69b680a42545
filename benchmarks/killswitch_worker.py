"""Worker for `benchmarks/killswitch.py`: one slice of the fleet, every host a real `Agent`.

The agents are `harness.fleet.SimFleet`'s: `hidsd.agent.app.Agent` with all its services, so
a kill switch goes through the agent's own command path (`CommandService`: verify, revision
order, persist, work gate, heartbeat poke, ack) and its own convergence with etcd
(`ConvergenceService`: the start read, the watch of its desired-state keys unless the run says
`--no-watch`, the resync). Host ``ks-NNNNNN`` is in group ``bench``, and trusts the run's
operator key.

The one thing added to an agent: once it is up, its own connection (`agent.bus`) subscribes to
a floor subject whose handler only publishes an empty reply (no agent code), so the floor is
measured on the very connections the kill switch uses.

Operations (harness.workers.serve): `offline` stops the last `offline` agents of the slice as
SIGTERM does (a bye heartbeat, the connection closed, their etcd watches ended); `reconnect`
starts them again (a fresh `Agent` from the same settings and data dir, as a restarted host:
state file, start read from etcd, ack once connected); `stats` sums the agents' counters.
Run as ``python benchmarks/killswitch_worker.py '<json config>'``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.fleet import FleetSpec, SimAgent, SimFleet, serve_fleet
from harness.report import rss_mb
from harness.workers import Op, worker_main
from nats.aio.msg import Msg

from hidsd.agent.app import Agent

GROUP = "bench"
HOST_PREFIX = "ks"
#: every agent's own connection answers this with an empty reply: the physical floor
FLOOR_SUBJECT = "bench.floor"


def groups_of(_index: int) -> tuple[str, ...]:
    return (GROUP,)


async def answer_floor(agent: Agent) -> None:
    async def reply(msg: Msg) -> None:
        await agent.bus.publish(msg.reply, b"")

    await agent.bus.subscribe(FLOOR_SUBJECT, reply)


@dataclass
class Slice:
    """The worker's agents, which of them are offline, and the TaskGroup they run in."""

    cfg: dict[str, Any]
    fleet: SimFleet
    tg: asyncio.TaskGroup | None = None
    offline: list[SimAgent] = field(default_factory=list)

    def running(self) -> list[Agent]:
        return [s.agent for s in self.fleet.agents if s.running and s.agent is not None]

    async def setup(self, tg: asyncio.TaskGroup) -> dict[str, Any]:
        self.tg = tg
        started = await self.fleet.start(tg, timeout_s=float(self.cfg["start_timeout_s"]))
        agents = self.running()
        await asyncio.gather(*(answer_floor(a) for a in agents))
        if self.cfg["gc_freeze"]:
            self.fleet.freeze_gc()
        followers = [f for a in agents for f in (a.convergence.follower, a.config.follower,
                                                 a.plugin_state.follower)]  # fmt: skip
        return {
            **started,
            "hosts": [a.settings.host_id for a in agents],
            "watch_keys": sum(len(f.keys) for f in followers if f.watch),
            "desired_watch_keys": sum(
                len(a.convergence.follower.keys) for a in agents if a.convergence.follower.watch
            ),
            "rss_mb": rss_mb(),
        }

    async def go_offline(self, _req: dict[str, Any]) -> dict[str, Any]:
        up = [s for s in self.fleet.agents if s.running]
        k = min(int(self.cfg["offline"]), len(up))
        self.offline = up[len(up) - k :] if k else []
        await self.fleet.stop(self.offline)
        return {
            "online": [s.host for s in self.fleet.agents if s.running],
            "offline": [s.host for s in self.offline],
        }

    async def reconnect(self, _req: dict[str, Any]) -> dict[str, Any]:
        """The offline hosts come back: each a fresh Agent (state file, start read, ack)."""
        assert self.tg is not None
        t0 = time.perf_counter()
        back = await self.fleet.start(self.tg, self.offline,
                                      timeout_s=float(self.cfg["start_timeout_s"]))  # fmt: skip
        self.offline = [s for s in self.offline if not s.running]
        return {**back, "worker_s": round(time.perf_counter() - t0, 3)}

    async def stats(self, _req: dict[str, Any]) -> dict[str, Any]:
        agents = self.running()
        return {
            **self.fleet.stats(),
            "modes": dict(Counter(a.mode.value for a in agents)),
            "resyncs": sum(a.convergence.resyncs for a in agents),
            "restarts": sum(s.starts - 1 for s in self.fleet.agents),
        }

    async def close(self) -> None:
        await self.fleet.stop()

    def ops(self) -> dict[str, Op]:
        return {"offline": self.go_offline, "reconnect": self.reconnect, "stats": self.stats}


async def run(cfg: dict[str, Any]) -> None:
    spec = FleetSpec(
        nats_url=cfg["nats_url"], etcd_endpoints=tuple(cfg["etcd_endpoints"]),
        trusted_keys=(cfg["trusted_key"],), data_root=Path(cfg["data_root"]),
        host_prefix=HOST_PREFIX, heartbeat_s=float(cfg["heartbeat_s"]), watch=bool(cfg["watch"]),
    )  # fmt: skip
    await serve_fleet(cfg, spec, groups_of, Slice)


if __name__ == "__main__":
    sys.exit(worker_main(run))
