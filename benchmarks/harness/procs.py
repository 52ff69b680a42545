"""The run's processes as the coordinator sees them: CPU time each one spent over a phase
(nats-server, etcd, the workers, the coordinator), and what the workers logged."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .report import machine_busy_s


def process_cpu_s(pid: int) -> float | None:
    """utime + stime of a process, from /proc (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU milliseconds of named processes between `sample` and `since`."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)

    def sample(self) -> dict[str, float | None]:
        return {name: process_cpu_s(pid) for name, pid in self.pids.items()}

    def since(self, before: Mapping[str, float | None]) -> dict[str, float | None]:
        """Per process, plus `workers_total` (every `worker-*`) and `all`."""
        out: dict[str, float | None] = {}
        for name, t in self.sample().items():
            t0 = before.get(name)
            out[name] = None if t is None or t0 is None else round((t - t0) * 1000, 1)
        known = {k: v for k, v in out.items() if v is not None}
        out["workers_total"] = round(sum(v for k, v in known.items() if k.startswith("worker")), 1)
        out["all"] = round(sum(known.values()), 1)
        return out


def log_events(logs: Iterable[Path]) -> dict[str, int]:
    """What worker processes logged: JSON lines by level and event, other lines by their start
    (etcd3aio logs through the standard library, Python prints unhandled task errors)."""
    counts: Counter[str] = Counter()
    for log in logs:
        with contextlib.suppress(OSError), open(log, errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    if line.strip():
                        counts[f"text:{line.strip()[:70]}"] += 1
                    continue
                if isinstance(rec, dict):
                    counts[f"{rec.get('level', '?')}:{rec.get('event', '?')}"] += 1
    return dict(counts)


@dataclass
class MachineShare:
    """What the machine did over a phase besides this benchmark's processes (`meter`'s):
    busy_pct of every core, benchmark_cpu_pct and foreign_cpu_pct (100 = one core), so a
    phase that other work slowed down can be told apart (and run again)."""

    meter: CpuMeter
    t0: float = 0.0
    busy0: float = 0.0
    cpu0: dict[str, float | None] = field(default_factory=dict)

    def start(self) -> MachineShare:
        self.t0, self.busy0, self.cpu0 = time.monotonic(), machine_busy_s(), self.meter.sample()
        return self

    def figures(self) -> dict[str, float]:
        wall = max(1e-9, time.monotonic() - self.t0)
        busy = (machine_busy_s() - self.busy0) / wall * 100
        ours = (self.meter.since(self.cpu0)["all"] or 0.0) / 1000 / wall * 100
        return {"busy_pct": round(busy / (os.cpu_count() or 1), 1),
                "benchmark_cpu_pct": round(ours, 1),
                "foreign_cpu_pct": round(max(0.0, busy - ours), 1)}  # fmt: skip


async def wait_for_quiet(meter: CpuMeter, quiet_pct: float, limit_s: float) -> float:
    """Wait (at most `limit_s`) until other processes use under `quiet_pct` of a core over
    2 s; returns the seconds waited (other work on a small machine shows as our latency)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        share = MachineShare(meter).start()
        await asyncio.sleep(2.0)
        if share.figures()["foreign_cpu_pct"] <= quiet_pct:
            break
    return round(time.monotonic() - t0, 1)
