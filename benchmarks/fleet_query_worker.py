"""Worker for `benchmarks/fleet_query.py`: what a slice of N hosts sends for a fleet query.

An agent's part in a fleet query is two things: its PACKAGES_STATE record on the inventory
stream and its heartbeats (so the controllers know it is online, or that it shut down). Every
simulated host here is `harness.agentreports.SimHost`: the agent's own `HeartbeatService`
(its `run` loop: a beat at once, then every `heartbeat_s` jittered 0.9-1.1) and the agent's
inventory route (`LatestPublisher`: the agent's headers and message id, JetStream publish,
retried until acked); the record is the inventory plugin's own (`Inventory.report_state`)
over the host's packages from `fleet_query_data.Fleet`. The hosts of a worker share one NATS
connection and one event loop (the controllers see subjects and headers, not connections).

Setup: connect, build the hosts, start their inventory publishers and heartbeat loops (50
at a time, 20 ms apart: agents do not start in lockstep). Operations (`harness.workers.serve`):

* `inventories`: each host's record built and offered to its `LatestPublisher`, `inflight` at
  a time (a record is built only once its host holds a slot), each until JetStream acked it;
* `bye`: the slice's last `offline` hosts stop as an agent does (its heartbeat loop ends, one
  `bye` heartbeat) and fall silent: the controllers answer for them from their last record;
* `stats`: heartbeats sent and failed, the inventory publishers' counters.

Run as ``python benchmarks/fleet_query_worker.py '<json config>'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from fleet_query_data import OS_GROUPS, Fleet
from harness.agentreports import HostKit, SimHost, packages_state_frame
from harness.report import bounded_gather, maxrss_mb, rss_mb
from harness.workers import serve, worker_main

from hidsd.bus.transport import Bus, BusOptions
from hidsd.wire.heartbeat import encode_heartbeat
from hidsd.wire.names import Subjects

HOST_PREFIX = "fq"
ROLES = ("web", "db", "batch", "edge")
#: seconds a host's record may take to be stored (the agent retries every 5 s until then)
STORE_TIMEOUT_S = 300.0


def host_id(index: int) -> str:
    return f"{HOST_PREFIX}-{index:06d}"


class Slice:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.first, self.count = int(cfg["first"]), int(cfg["count"])
        self.subjects = Subjects()
        self.bus = Bus(BusOptions(servers=(cfg["nats_url"],), name=f"bench-fq-{cfg['index']}"))
        self.data_dir = Path(cfg["data_root"]) / f"worker-{cfg['index']}"
        self.fleet = Fleet(int(cfg["seed"]))
        self.hosts: list[SimHost] = []
        self.stored: dict[str, asyncio.Event] = {}
        self.errors: Counter[str] = Counter()
        self.os_release: dict[str, Path] = {}
        self.js_timeout_s = float(cfg["js_timeout_s"])

    async def publish_heartbeat(self, host: str, body: bytes) -> None:
        await self.bus.publish(self.subjects.heartbeat(host), body)

    async def publish_latest(self, subject: str, body: bytes, headers: dict[str, str]) -> None:
        """The agent's `_publish_telemetry` (JetStream, acked); marks the host's record stored."""
        try:
            await self.bus.js_publish(subject, body, headers, timeout=self.js_timeout_s)
        except Exception as exc:  # LatestPublisher counts it and retries, as in the agent
            self.errors[f"inventory.{type(exc).__name__}"] += 1
            raise
        self.stored[subject].set()

    def kit(self) -> HostKit:
        return HostKit(self.data_dir, self.publish_heartbeat, self.publish_latest,
                       lambda: self.bus.connected, float(self.cfg["heartbeat_s"]))  # fmt: skip

    async def setup(self, tg: asyncio.TaskGroup) -> dict[str, Any]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for g in OS_GROUPS:
            path = self.os_release[g.key] = self.data_dir / f"os-release-{g.key}"
            path.write_text(g.os_release())
        await self.bus.connect(attempts=5)
        kit, seed = self.kit(), int(self.cfg["seed"])
        t0 = time.perf_counter()
        for i in range(self.first, self.first + self.count):
            g = self.fleet.group_of(i)
            sim = kit.host(host_id(i), i, ("bench", ROLES[i % len(ROLES)]), g.pretty, g.os_id,
                           seed)  # fmt: skip
            self.stored[self.subjects.inventory(sim.host)] = asyncio.Event()
            tg.create_task(sim.latest.run(), name=f"inv:{sim.host}")
            self.hosts.append(sim)
        probe = kit.host("fq-probe", 0, ("bench", "web"), OS_GROUPS[0].pretty, "debian", seed)
        hb_bytes = len(encode_heartbeat(probe.heartbeat.build()))
        for k, sim in enumerate(self.hosts):
            sim.task = tg.create_task(sim.heartbeat.run(), name=f"hb:{sim.host}")
            if k % 50 == 49:
                await asyncio.sleep(0.02)
        return {"hosts": len(self.hosts), "heartbeat_bytes": hb_bytes,
                "build_s": round(time.perf_counter() - t0, 2), "rss_mb": rss_mb()}  # fmt: skip

    async def inventories(self, _req: dict[str, Any]) -> dict[str, Any]:
        sizes: list[int] = []
        counts: list[int] = []
        groups: Counter[str] = Counter()
        lagging: Counter[str] = Counter()
        gen_s = 0.0

        async def one(k: int) -> bool:
            nonlocal gen_s
            sim, index = self.hosts[k], self.first + k
            t = time.perf_counter()
            inv = self.fleet.inventory(index, sim.host)
            frame = packages_state_frame(inv.packages, self.os_release[inv.group.key])
            gen_s += time.perf_counter() - t
            sizes.append(len(frame))
            counts.append(len(inv.packages))
            groups[inv.group.key] += 1
            lag = inv.lagging_sources
            lagging["none" if not lag else "1-8" if lag <= 8 else "40-150"] += 1
            subject = self.subjects.inventory(sim.host)
            sim.latest.offer(subject, "inventory", frame)
            try:
                await asyncio.wait_for(self.stored[subject].wait(), STORE_TIMEOUT_S)
            except TimeoutError:
                self.errors["inventory.not_stored"] += 1
                return False
            return True

        t0 = time.perf_counter()
        ok = await bounded_gather(range(len(self.hosts)), one, int(self.cfg["inflight"]))
        return {
            "published": sum(ok), "publish_s": round(time.perf_counter() - t0, 3),
            "generate_s": round(gen_s, 3), "frame_bytes_total": sum(sizes),
            "frame_bytes_max": max(sizes, default=0), "packages_min": min(counts, default=0),
            "packages_max": max(counts, default=0), "packages_total": sum(counts),
            "os_groups": dict(groups), "lagging": dict(lagging), "errors": dict(self.errors),
        }  # fmt: skip

    async def bye(self, req: dict[str, Any]) -> dict[str, Any]:
        """The last `offline` hosts stop as the agent does: no more beats, one `bye`."""
        offline = self.hosts[len(self.hosts) - int(req["offline"]) :]
        for sim in offline:
            if sim.task is not None:
                sim.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sim.task
            await sim.heartbeat.send(bye=True)
        await self.bus.flush()
        return {"offline": [s.host for s in offline]}

    async def stats(self, _req: dict[str, Any]) -> dict[str, Any]:
        latest: Counter[str] = Counter()
        for sim in self.hosts:
            latest.update(sim.latest.counters)
        return {
            "hosts": len(self.hosts), "online": sum(1 for s in self.hosts if s.task
                                                    and not s.task.done()),
            "heartbeats_sent": sum(s.heartbeat.seq for s in self.hosts),
            "heartbeat_failures": sum(s.heartbeat.failures for s in self.hosts),
            "inventory_out": dict(latest), "errors": dict(self.errors),
            "bus_counters": dict(self.bus.counters), "rss_mb": rss_mb(),
            "maxrss_mb": maxrss_mb(), "cpu_s": round(time.process_time(), 2), "pid": os.getpid(),
        }  # fmt: skip

    async def close(self) -> None:
        for sim in self.hosts:
            if sim.task is not None:
                sim.task.cancel()
        with contextlib.suppress(Exception):
            await self.bus.close(timeout=2.0)


async def run(cfg: dict[str, Any]) -> None:
    part = Slice(cfg)
    ops = {"inventories": part.inventories, "bye": part.bye, "stats": part.stats}
    await serve(cfg, part.setup, ops, part.close)


if __name__ == "__main__":
    sys.exit(worker_main(run))
