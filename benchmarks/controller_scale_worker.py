"""Load generator for `benchmarks/controller_scale.py`: heartbeats and acks, as fast as allowed.

Each generator owns a slice of the simulated hosts. Every host's heartbeat is the agent's own:
`harness.agentreports.SimHost`, whose `HeartbeatService.build()` gives the `Heartbeat` (facts,
config report, procmon and inventory plugin reports, breaker, outputs, storage, clock) once at
setup; each message is that heartbeat with the next `seq` and the current `sent_at`
(`dataclasses.replace`) encoded by the wire's `encode_heartbeat`, and each ack an `Ack`
(status applied, the agent's fields, `sent_at` now) encoded by `encode_ack`: nothing is
hand-made bytes. (A whole `build()` per message would add psutil and storage reads that cost
the generator more than the controllers' share of the machine can spare.)

Operations (`harness.workers.serve`):

* `warm_up`: one heartbeat per host, paced (~5,000/s), so every controller knows every host
  before a phase (a forwarded batch stays under NATS's max_payload);
* `phase`: from `start_at` to `stop_at` (wall clock) publish `<prefix>.hb.<host>` heartbeats
  and, every `hb_per_ack` heartbeats, an ack on `<prefix>.ack.<cmd>`, cycling through the
  hosts, as fast as the connection allows or at `rate` msgs/s; flushed every `flush_every`.

Flow control: NATS gives a publisher no signal when subscribers fall behind (the server
buffers, then cuts a slow consumer off), so the coordinator watches the controllers' pending
bytes at the server and publishes `pause` / `resume` on `CTL_SUBJECT`; the generator checks
that flag every `check_every` messages.
Run as ``python benchmarks/controller_scale_worker.py '<json config>'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.agentreports import HostKit
from harness.workers import serve, worker_main
from nats.aio.msg import Msg

from hidsd.bus.transport import Bus, BusOptions
from hidsd.wire.commands import Ack, AckStatus, RunMode, encode_ack
from hidsd.wire.heartbeat import Heartbeat, encode_heartbeat
from hidsd.wire.names import Subjects

CTL_SUBJECT = "bench.cs.ctl"  # b"pause" | b"resume"
COMMANDS = 16
HOST_PREFIX = "cs"
OS = ("Debian GNU/Linux 12 (bookworm)", "debian")


def host_id(index: int) -> str:
    return f"{HOST_PREFIX}-{index:06d}"


def cmd_id(c: int) -> str:
    return f"bench-cmd-{c:02d}"


def encode_applied(c: int, host: str, now: float) -> bytes:
    """Command `c` applied, as the agent's `CommandService.ack` sends it (an `Ack`)."""
    return encode_ack(Ack(cmd_id(c), host, AckStatus.APPLIED, 100 + c, "", RunMode.RUNNING, "",
                          now))  # fmt: skip


async def unused(*_: Any) -> None:
    raise RuntimeError("the generator loop publishes; a template host does not")


class Generator:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.subjects = Subjects()
        self.bus = Bus(BusOptions(servers=(cfg["nats_url"],), name=f"bench-cs-load-{cfg['index']}"))
        self.hosts = [host_id(i) for i in range(int(cfg["first"]), cfg["first"] + cfg["count"])]
        self.hb_subjects = [self.subjects.heartbeat(h) for h in self.hosts]
        self.ack_subjects = [self.subjects.ack(cmd_id(c)) for c in range(COMMANDS)]
        self.heartbeats: list[Heartbeat] = []
        self.paused = asyncio.Event()
        self.pauses = 0
        self.sent = 0  # heartbeats in all phases: the host/command rotation goes on

    async def on_ctl(self, msg: Msg) -> None:
        if msg.data == b"pause":
            self.pauses += not self.paused.is_set()
            self.paused.set()
        elif msg.data == b"resume":
            self.paused.clear()

    async def setup(self, _tg: asyncio.TaskGroup) -> dict[str, Any]:
        data_dir = Path(self.cfg["data_root"]) / f"gen-{self.cfg['index']}"
        data_dir.mkdir(parents=True, exist_ok=True)
        await self.bus.connect(attempts=5)
        await self.bus.subscribe(CTL_SUBJECT, self.on_ctl)

        kit = HostKit(data_dir, unused, unused, lambda: True, float(self.cfg["interval_s"]))
        first = int(self.cfg["first"])
        sims = [kit.host(h, first + i, ("bench", "web"), *OS) for i, h in enumerate(self.hosts)]
        self.heartbeats = [s.heartbeat.build() for s in sims]
        return {"hosts": len(self.hosts), "hb_bytes": len(encode_heartbeat(self.heartbeats[0])),
                "ack_bytes": len(encode_applied(0, self.hosts[0], time.time()))}  # fmt: skip

    def heartbeat(self, i: int, now: float) -> bytes:
        hb = self.heartbeats[i]
        hb = self.heartbeats[i] = replace(hb, seq=hb.seq + 1, sent_at=now)
        return encode_heartbeat(hb)

    async def warm_up(self, _req: dict[str, Any]) -> dict[str, Any]:
        for i in range(len(self.hosts)):
            await self.bus.publish(self.hb_subjects[i], self.heartbeat(i, time.time()))
            if i % 50 == 49:
                await self.bus.flush()
                await asyncio.sleep(0.01)
        await self.bus.flush()
        return {"warmed_up": len(self.hosts)}

    async def phase(self, req: dict[str, Any]) -> dict[str, Any]:
        """Publish until `stop_at`: as fast as allowed, or `rate` msgs/s if rate > 0."""
        start_at, stop_at, rate = float(req["start_at"]), float(req["stop_at"]), float(req["rate"])
        check_every, flush_every = int(self.cfg["check_every"]), int(self.cfg["flush_every"])
        hb_per_ack, n, bus = int(self.cfg["hb_per_ack"]), len(self.hosts), self.bus
        self.pauses = 0
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.time()
        hb = ack = unflushed = 0
        paused_s = 0.0
        # paced: bursts of ~10 ms of the rate, so a 1 s sample sees the rate, not bursts
        burst = check_every if rate <= 0 else max(1, min(check_every, int(rate / 100)))
        while (now := time.time()) < stop_at:
            for _ in range(burst):
                i = self.sent % n
                await bus.publish(self.hb_subjects[i], self.heartbeat(i, now))
                self.sent += 1
                hb += 1
                unflushed += 1
                if self.sent % hb_per_ack == 0:
                    c = (self.sent // n) % COMMANDS
                    await bus.publish(self.ack_subjects[c], encode_applied(c, self.hosts[i], now))
                    ack += 1
                    unflushed += 1
                if unflushed >= flush_every:
                    await bus.flush(timeout=10.0)  # the server has what we sent
                    unflushed = 0
            ahead = t0 + (hb + ack) / rate - time.time() if rate > 0 else 0.0
            await asyncio.sleep(max(0.0, min(ahead, stop_at - time.time())))
            if self.paused.is_set():
                p0 = time.time()
                while self.paused.is_set() and time.time() < stop_at:
                    await asyncio.sleep(0.002)
                paused_s += time.time() - p0
        await bus.flush(timeout=10.0)
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        return {"heartbeats": hb, "acks": ack, "elapsed_s": round(time.time() - t0, 3),
                "cpu_s": round(cpu, 3), "paused_s": round(paused_s, 3), "pauses": self.pauses,
                "started_late_s": round(t0 - start_at, 4), "rate": rate}  # fmt: skip

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.bus.close(timeout=2.0)


async def run(cfg: dict[str, Any]) -> None:
    gen = Generator(cfg)
    await serve(cfg, gen.setup, {"warm_up": gen.warm_up, "phase": gen.phase}, gen.close)


if __name__ == "__main__":
    sys.exit(worker_main(run))
