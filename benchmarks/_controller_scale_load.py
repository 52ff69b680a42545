"""Load generator for `benchmarks/controller_scale.py`: heartbeats and acks, as fast as allowed.

Each generator owns a slice of the simulated hosts. Before the run it encodes one heartbeat
per host (`_fleet_query_data.agent_heartbeat`: the maps a real agent fills, ~1.8 KB) and
patches only `seq` and `sent_at` per message (seq is kept in msgpack's fixed 4-byte form, so
the bytes are the encoding `encode_heartbeat` gives), and one ack per (command, host)
(`encode_ack`, status applied). It sends one warm-up heartbeat per host (so the controllers
know every host before the measurement) and announces itself. Each `go` is a phase: from
`start_at` to `stop_at` it publishes `<prefix>.hb.<host>` heartbeats and, every `hb_per_ack`
heartbeats, an ack on `<prefix>.ack.<cmd>`, cycling through its hosts, as fast as nats-py
allows or at `rate` msgs/s; then it reports on `DONE_SUBJECT`.

Flow control: NATS gives a publisher no signal when subscribers fall behind; the server
buffers, then cuts a slow consumer off. So the coordinator watches the controllers' pending
bytes at the server and publishes `pause`/`resume` on `CTL_SUBJECT`; the generator checks
that flag every `check_every` messages (and flushes to the server every `flush_every`).
Run as ``python benchmarks/_controller_scale_load.py '<json config>'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import signal
import struct
import sys
import time
from dataclasses import dataclass
from typing import Any

import msgpack
import nats
import uvloop
from _fleet_query_data import agent_heartbeat
from nats.aio.msg import Msg

from hidsd.wire.commands import Ack, AckStatus, encode_ack
from hidsd.wire.heartbeat import encode_heartbeat
from hidsd.wire.names import Subjects

READY_SUBJECT = "bench.cs.ready"
GO_SUBJECT = "bench.cs.go"
CTL_SUBJECT = "bench.cs.ctl"  # b"pause" | b"resume"
DONE_SUBJECT = "bench.cs.done"
#: seq values from here on encode as msgpack uint32 (0xce + 4 bytes): patchable in place
SEQ_BASE = 1 << 20
COMMANDS = 16


def host_id(index: int) -> str:
    return f"bench-{index:06d}"


@dataclass(frozen=True, slots=True)
class LoadConfig:
    index: int
    nats_url: str
    prefix: str
    first: int
    count: int
    hb_per_ack: int
    interval_s: float
    flush_every: int
    check_every: int

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


class Template:
    """One host's encoded heartbeat with `seq` and `sent_at` patched in place."""

    def __init__(self, host: str, interval_s: float) -> None:
        raw = encode_heartbeat(agent_heartbeat(host, SEQ_BASE, interval_s))
        self.buf = bytearray(raw)
        seq_at = raw.find(b"\xa3seq\xce")
        sent_at = raw.find(b"\xa7sent_at\xcb")
        if seq_at < 0 or sent_at < 0:
            raise RuntimeError("heartbeat layout changed: seq/sent_at not found")
        self.seq_off = seq_at + 5
        self.sent_off = sent_at + 9
        self.seq = SEQ_BASE

    def next(self, now: float) -> bytes:
        self.seq += 1
        struct.pack_into(">I", self.buf, self.seq_off, self.seq)
        struct.pack_into(">d", self.buf, self.sent_off, now)
        return bytes(self.buf)


class Generator:
    """One generator: its hosts' templates and acks, one NATS connection, phases on `go`."""

    def __init__(self, cfg: LoadConfig) -> None:
        self.cfg = cfg
        subjects = Subjects(cfg.prefix)
        hosts = [host_id(i) for i in range(cfg.first, cfg.first + cfg.count)]
        self.templates = [Template(h, cfg.interval_s) for h in hosts]
        self.hb_subjects = [subjects.heartbeat(h) for h in hosts]
        cmds = [f"bench-cmd-{c:02d}" for c in range(COMMANDS)]
        self.ack_subjects = [subjects.ack(c) for c in cmds]
        self.acks = [[encode_ack(Ack(c, h, AckStatus.APPLIED, 100 + j, "")) for h in hosts]
                     for j, c in enumerate(cmds)]  # fmt: skip
        self.paused = asyncio.Event()
        self.pauses = 0
        self.plans: asyncio.Queue[dict[str, float]] = asyncio.Queue()
        self.stop = asyncio.Event()
        self.hb = 0  # heartbeats sent in all phases: the host/command rotation goes on
        self.nc: Any = None

    async def on_ctl(self, msg: Msg) -> None:
        if msg.data == b"pause":
            if not self.paused.is_set():
                self.pauses += 1
            self.paused.set()
        elif msg.data == b"resume":
            self.paused.clear()

    async def on_go(self, msg: Msg) -> None:
        self.plans.put_nowait(msgpack.unpackb(msg.data))

    async def warm_up(self) -> None:
        """Every host known to every controller before a phase, paced (~5,000/s per
        generator) so that no controller's forwarded batch outgrows NATS's max_payload."""
        for i, t in enumerate(self.templates):
            await self.nc.publish(self.hb_subjects[i], t.next(time.time()))
            if i % 50 == 49:
                await self.nc.flush()
                await asyncio.sleep(0.01)
        await self.nc.flush()

    async def phase(self, start_at: float, stop_at: float, rate: float) -> dict[str, Any]:
        """Publish until `stop_at`: as fast as allowed, or `rate` msgs/s if rate > 0."""
        nc, cfg = self.nc, self.cfg
        self.pauses = 0
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.time()
        hb = ack = unflushed = 0
        paused_s = 0.0
        n = len(self.templates)
        while True:
            now = time.time()
            if now >= stop_at or self.stop.is_set():
                break
            for _ in range(cfg.check_every):
                i = self.hb % n
                await nc.publish(self.hb_subjects[i], self.templates[i].next(now))
                self.hb += 1
                hb += 1
                unflushed += 1
                if self.hb % cfg.hb_per_ack == 0:
                    c = (self.hb // n) % COMMANDS
                    await nc.publish(self.ack_subjects[c], self.acks[c][i])
                    ack += 1
                    unflushed += 1
                if unflushed >= cfg.flush_every:
                    await nc.flush()  # the server has what we sent: bounded in flight
                    unflushed = 0
            ahead = t0 + (hb + ack) / rate - time.time() if rate > 0 else 0.0
            await asyncio.sleep(max(0.0, min(ahead, stop_at - time.time())))
            if self.paused.is_set():
                p0 = time.time()
                while self.paused.is_set() and time.time() < stop_at and not self.stop.is_set():
                    await asyncio.sleep(0.002)
                paused_s += time.time() - p0
        await nc.flush()
        elapsed = time.time() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        return {
            "worker": cfg.index, "heartbeats": hb, "acks": ack, "elapsed_s": round(elapsed, 3),
            "cpu_s": round(cpu, 3), "paused_s": round(paused_s, 3), "pauses": self.pauses,
            "hb_bytes": len(self.templates[0].buf), "ack_bytes": len(self.acks[0][0]),
            "started_late_s": round(t0 - start_at, 4), "rate": rate,
        }  # fmt: skip

    async def run(self) -> None:
        cfg = self.cfg
        self.nc = await nats.connect(cfg.nats_url, name=f"bench-cs-load-{cfg.index}",
                                     pending_size=8 << 20)  # fmt: skip
        await self.nc.subscribe(CTL_SUBJECT, cb=self.on_ctl)
        await self.nc.subscribe(GO_SUBJECT, cb=self.on_go)
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self.stop.set)
        try:
            await self.warm_up()
            ready = {"worker": cfg.index, "pid": os.getpid()}
            await self.nc.publish(READY_SUBJECT, msgpack.packb(ready))
            await self.nc.flush()
            while not self.stop.is_set():
                get = asyncio.ensure_future(self.plans.get())
                halt = asyncio.ensure_future(self.stop.wait())
                await asyncio.wait({get, halt}, return_when=asyncio.FIRST_COMPLETED)
                halt.cancel()
                if not get.done():
                    get.cancel()
                    break
                plan = get.result()
                if plan.get("warm_up"):
                    await self.warm_up()
                    result: dict[str, Any] = {"worker": cfg.index, "warmed_up": True}
                else:
                    result = await self.phase(plan["start_at"], plan["stop_at"],
                                              float(plan.get("rate", 0.0)))  # fmt: skip
                await self.nc.publish(DONE_SUBJECT, msgpack.packb(result))
                await self.nc.flush()
        finally:
            with contextlib.suppress(Exception):
                await self.nc.close()


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides when we stop
    uvloop.run(Generator(LoadConfig(**json.loads(argv[1]))).run())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
