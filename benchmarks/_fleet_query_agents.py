"""Worker process for `benchmarks/fleet_query.py`: what a slice of N agents sends a controller.

An agent's part in a fleet query is two messages: its PACKAGES_STATE record on the inventory
stream and its heartbeats (so the controllers know it is online, or that it shut down). This
worker sends both for its slice of hosts over one NATS connection (hosts need not be separate
connections for this: the controllers see subjects and headers, not connections):

1. one heartbeat per host (seq 1), paced at ~2,500/s;
2. each host's PACKAGES_STATE frame (`_fleet_query_data.packages_state_frame`), published
   with `Bus.js_publish` on `<prefix>.inv.<host>` with the headers `LatestPublisher` sets,
   `--inflight` at a time, each waiting for its JetStream ack like the agent does;
3. a `bye` heartbeat for the last `offline` hosts of the slice, which then fall silent
   (answered from their last inventory);
4. a heartbeat every `interval_s` (spread over the interval) for the others, until SIGTERM.

After step 3 it publishes a summary on `DONE_SUBJECT`. Run as
``python benchmarks/_fleet_query_agents.py '<json config>'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import msgpack
import uvloop
from _fleet_query_data import Fleet, agent_heartbeat, inventory_headers, packages_state_frame

from hidsd.base import logging as hidsd_logging
from hidsd.bus.transport import Bus, BusOptions
from hidsd.wire.heartbeat import encode_heartbeat
from hidsd.wire.names import Subjects

#: a worker's summary once its inventories are stored and its offline hosts said bye
DONE_SUBJECT = "bench.fq.done"


def host_id(index: int) -> str:
    return f"bench-{index:06d}"


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    index: int
    nats_url: str
    prefix: str
    first: int
    count: int
    offline: int
    seed: int
    interval_s: float
    inflight: int

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


class Worker:
    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self.subjects = Subjects(cfg.prefix)
        self.bus = Bus(BusOptions(servers=(cfg.nats_url,), name=f"bench-fq-{cfg.index}"))
        self.fleet = Fleet(cfg.seed)
        self.hosts = [host_id(i) for i in range(cfg.first, cfg.first + cfg.count)]
        n_off = min(cfg.offline, len(self.hosts))
        self.online = self.hosts[: len(self.hosts) - n_off]
        self.offline = self.hosts[len(self.hosts) - n_off :]
        self.seq: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.heartbeats_sent = 0

    async def heartbeat(self, host: str, bye: bool = False) -> None:
        self.seq[host] += 1
        hb = agent_heartbeat(host, self.seq[host], self.cfg.interval_s, bye, self.cfg.seed)
        await self.bus.publish(self.subjects.heartbeat(host), encode_heartbeat(hb))
        self.heartbeats_sent += 1

    async def publish_inventories(self) -> dict[str, Any]:
        """Every host's package set into the inventory stream, `inflight` at a time."""
        sem = asyncio.Semaphore(self.cfg.inflight)
        sizes: list[int] = []
        rows: list[int] = []
        groups: Counter[str] = Counter()
        lagging: Counter[str] = Counter()
        gen_s = 0.0

        async def one(i: int, host: str) -> None:
            nonlocal gen_s
            t = time.perf_counter()
            inv = self.fleet.inventory(i, host)
            frame, _ = packages_state_frame(inv)
            gen_s += time.perf_counter() - t
            sizes.append(len(frame))
            rows.append(len(inv.rows))
            groups[inv.group.key] += 1
            lagging["none" if not inv.lagging_sources else "1-8" if inv.lagging_sources <= 8
                    else "40-150"] += 1  # fmt: skip
            for attempt in range(3):
                try:
                    await self.bus.js_publish(
                        self.subjects.inventory(host),
                        frame,
                        inventory_headers(host, frame),
                        timeout=10.0,
                    )
                    return  # fmt: skip
                except Exception as exc:  # counted; retried like LatestPublisher does
                    self.errors[f"inventory.{type(exc).__name__}"] += 1
                    await asyncio.sleep(0.5 * (attempt + 1))
            self.errors["inventory.gave_up"] += 1

        async def guarded(i: int, host: str) -> None:
            async with sem:
                await one(i, host)

        t0 = time.perf_counter()
        # a frame is built only once its task holds a slot: at most `inflight` in memory
        await asyncio.gather(*(guarded(self.cfg.first + j, h) for j, h in enumerate(self.hosts)))
        return {
            "published": len(sizes) - self.errors["inventory.gave_up"],
            "publish_s": round(time.perf_counter() - t0, 3),
            "generate_s": round(gen_s, 3),
            "frame_bytes_total": sum(sizes),
            "frame_bytes_max": max(sizes, default=0),
            "packages_min": min(rows, default=0),
            "packages_max": max(rows, default=0),
            "packages_total": sum(rows),
            "os_groups": dict(groups),
            "lagging": dict(lagging),
        }

    async def heartbeat_loop(self) -> None:
        """One heartbeat per online host every interval, spread evenly (as N agents would)."""
        hosts = self.online
        if not hosts:
            return
        step = self.cfg.interval_s / len(hosts)
        start = time.monotonic()
        k = 0
        while True:
            for host in hosts:
                await self.heartbeat(host)
                k += 1
                delay = start + k * step - time.monotonic()
                if delay > 0.002:
                    await asyncio.sleep(delay)

    async def run(self, stop: asyncio.Event) -> None:
        await self.bus.connect(attempts=5)
        try:
            for i, host in enumerate(self.hosts):  # paced, ~2,500/s: agents do not start
                await self.heartbeat(host)  # in lockstep (a burst is controller_scale's job)
                if i % 50 == 49:
                    await asyncio.sleep(0.02)
            await self.bus.flush()
            result = await self.publish_inventories()
            for host in self.offline:
                await self.heartbeat(host, bye=True)
            await self.bus.flush()
            summary = {"worker": self.cfg.index, "pid": os.getpid(), **result,
                       "online": len(self.online), "offline": self.offline,
                       "errors": dict(self.errors)}  # fmt: skip
            await self.bus.publish(DONE_SUBJECT, msgpack.packb(summary, use_bin_type=True))
            await self.bus.flush()
            beat = asyncio.ensure_future(self.heartbeat_loop())
            await stop.wait()
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        finally:
            with contextlib.suppress(Exception):
                await self.bus.close(timeout=2.0)


async def amain(cfg: WorkerConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await Worker(cfg).run(stop)


def main(argv: list[str]) -> int:
    # Ctrl-C goes to the whole process group: the coordinator decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    hidsd_logging.configure("warning", "json")
    cfg = WorkerConfig(**json.loads(argv[1]))
    uvloop.run(amain(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
