"""The host's CPU and memory pressure, for the circuit breaker: is the host hurting?

Read every ~2 s by an idle agent, so it is three or four plain file reads (no psutil).
PSI (/proc/pressure, Linux >= 4.20 with psi enabled) measures waiting directly; without it
the CPU figure is derived from the load average. It never raises: a file that is missing or
garbled yields neutral values (no CPU pressure, all memory available) and
`source="unavailable"`, because a breaker that tripped on a broken /proc would stop every
plugin for good, while one that sees "unavailable" can log it and still act on the agent's
own usage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HostPressure", "read_host_pressure"]


@dataclass(frozen=True, slots=True)
class HostPressure:
    """One reading. Percentages are 0-100."""

    #: PSI cpu "some avg10" (share of the last 10 s in which some runnable task waited for a
    #: CPU); without PSI, max(0, 1 - ncpu / load1) * 100 (the share of runnable tasks waiting)
    cpu_pct: float
    #: MemAvailable / MemTotal * 100 from /proc/meminfo
    mem_available_pct: float
    #: PSI memory "some avg10"; None without PSI
    mem_pressure_pct: float | None
    #: "psi", "loadavg", or "unavailable" when the CPU or the memory figure could not be read
    #: (that figure is then neutral: cpu_pct 0, mem_available_pct 100)
    source: str


def _read(path: Path) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except (OSError, ValueError):
        # psi=0 kernels have the files but reading them fails with EOPNOTSUPP.
        return None


def _psi_some_avg10(text: str | None) -> float | None:
    """The "some avg10=" figure of a /proc/pressure file, or None if absent or garbled."""
    if text is None:
        return None
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind != "some":
            continue
        for field in rest.split():
            key, _, value = field.partition("=")
            if key == "avg10":
                try:
                    v = float(value)
                except ValueError:
                    return None
                return v if 0.0 <= v <= 100.0 else None
    return None


def _load_cpu_pct(text: str | None, cpus: int) -> float | None:
    if text is None:
        return None
    try:
        load1 = float(text.split()[0])
    except (IndexError, ValueError):
        return None
    if load1 < 0:
        return None
    if load1 <= cpus:
        return 0.0
    return (1.0 - cpus / load1) * 100.0


def _mem_available_pct(text: str | None) -> float | None:
    if text is None:
        return None
    kb: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            try:
                kb[key] = int(rest.split()[0])
            except (IndexError, ValueError):
                return None
    total, avail = kb.get("MemTotal"), kb.get("MemAvailable")
    if not total or avail is None or total <= 0 or avail < 0:
        return None
    return min(100.0, avail / total * 100.0)


def read_host_pressure(proc_root: Path = Path("/proc"), cpus: int | None = None) -> HostPressure:
    """Read the host's pressure now. Never raises (see the module docstring).

    `cpus` is the number of CPUs the load average is compared with (default: all online CPUs,
    since the load average counts the whole host).
    """
    ncpu = cpus if cpus is not None and cpus > 0 else (os.cpu_count() or 1)
    cpu = _psi_some_avg10(_read(proc_root / "pressure" / "cpu"))
    mem_pressure: float | None = None
    source = "psi"
    if cpu is None:
        source = "loadavg"
        cpu = _load_cpu_pct(_read(proc_root / "loadavg"), ncpu)
    else:
        mem_pressure = _psi_some_avg10(_read(proc_root / "pressure" / "memory"))
    avail = _mem_available_pct(_read(proc_root / "meminfo"))
    if cpu is None or avail is None:
        source = "unavailable"
    return HostPressure(
        cpu_pct=0.0 if cpu is None else cpu,
        mem_available_pct=100.0 if avail is None else avail,
        mem_pressure_pct=mem_pressure,
        source=source,
    )
