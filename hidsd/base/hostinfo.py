"""Host facts for the heartbeat (E4) and the agent's own resource use (E1)."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
from pathlib import Path
from typing import Any

import psutil


def host_facts() -> dict[str, Any]:
    """Facts that change rarely: collected at start and sent in every heartbeat."""
    ips: list[str] = []
    for name, addrs in psutil.net_if_addrs().items():
        if name == "lo":
            continue
        ips.extend(a.address for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6))
    os_release = read_os_release()
    return {
        "hostname": socket.gethostname(),
        "os": os_release.get("PRETTY_NAME", platform.system()),
        "os_id": os_release.get("ID", ""),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "ips": sorted(set(ips)),
        "boot_time": psutil.boot_time(),
        "cpus": os.cpu_count() or 0,
        "python": platform.python_version(),
    }


def read_os_release(path: str = "/etc/os-release") -> dict[str, str]:
    """KEY=value pairs of os-release(5); {} if it cannot be read."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip().strip('"')
    return out


class SelfUsage:
    """The agent's own CPU (percent of one core since the last call) and RSS.

    Reading them opens /proc files: out of descriptors, the last figures are reported again
    (a heartbeat must go out whatever /proc says)."""

    def __init__(self) -> None:
        self._proc = psutil.Process()
        self._last = (0.0, 0)
        self.failures = 0
        with contextlib.suppress(psutil.Error, OSError):
            self._proc.cpu_percent(None)

    def sample(self) -> tuple[float, int]:
        try:
            cpu = self._proc.cpu_percent(None)
            rss = self._proc.memory_info().rss
        except (psutil.Error, OSError):
            self.failures += 1
            return self._last
        self._last = (cpu, int(rss))
        return self._last
