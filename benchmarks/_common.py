"""Small helpers shared by the benchmark scripts (errors, units, output, etcd metrics)."""

from __future__ import annotations

import sys
import urllib.request
from typing import Any


class BenchError(Exception):
    """The benchmark could not run as specified (a worker died, a phase timed out)."""


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def fmt(value: Any, unit: str = "ms") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.1f} {unit}".rstrip()
    return f"{value:,} {unit}".rstrip()


def etcd_watchers(endpoint: str) -> int:
    """etcd's gauge of open watchers (`/metrics` on the client URL)."""
    with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=2) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("etcd_debugging_mvcc_watcher_total "):
                return int(float(line.split()[1]))
    return 0
