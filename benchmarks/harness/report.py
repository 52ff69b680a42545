"""Units, percentiles, machine facts and the result file every benchmark writes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import msgpack
import uvloop

from hidsd.base import logging as hidsd_logging
from hidsd.base.errors import HidsError
from hidsd.dev.devstack import find_binary

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


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


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


def rss_mb() -> float:
    """Current resident set size of this process, in MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return round(pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20), 1)


def maxrss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def raise_nofile_limit() -> int:
    """Raise the soft open-files limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard or hard == resource.RLIM_INFINITY:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


async def bounded_gather(
    items: Sequence[Any], fn: Callable[[Any], Awaitable[Any]], limit: int
) -> list[Any]:
    """Run `fn` over `items` with at most `limit` in flight; results in order."""
    sem = asyncio.Semaphore(limit)

    async def one(item: Any) -> Any:
        async with sem:
            return await fn(item)

    return list(await asyncio.gather(*(one(item) for item in items)))


def etcd_watchers(endpoint: str) -> int:
    """etcd's gauge of open watchers (`/metrics` on the client URL)."""
    with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=2) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("etcd_debugging_mvcc_watcher_total "):
                return int(float(line.split()[1]))
    return 0


async def wait_etcd_watchers(endpoint: str, target: int, timeout: float) -> tuple[int, float]:
    """Poll etcd's watcher gauge until it reaches `target`; (watchers, seconds waited)."""
    t0 = time.monotonic()
    seen = 0
    while time.monotonic() - t0 < timeout:
        seen = await asyncio.to_thread(etcd_watchers, endpoint)
        if seen >= target:
            break
        await asyncio.sleep(0.2)
    return seen, round(time.monotonic() - t0, 2)


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (from /proc/stat). Over a phase, minus
    what the benchmark's own processes used, it is what other work took from us."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    mem_gib = None
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        mem_gib = round(int(f.readline().split()[1]) / (1 << 20), 1)

    def version(name: str, env: str) -> str:
        try:
            out = subprocess.run([find_binary(name, env), "--version"], capture_output=True,
                                 text=True, timeout=10, check=False)  # fmt: skip
        except (OSError, HidsError, subprocess.SubprocessError):
            return "?"
        return (out.stdout or out.stderr).strip().splitlines()[0]

    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": mem_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "nats_server": version("nats-server", "HIDSD_NATS_SERVER_BIN"),
        "etcd": version("etcd", "HIDSD_ETCD_BIN"),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def code_state() -> dict[str, Any]:
    """Which code a figure was measured with: the commit, and whether the tree had changes."""

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True,
                                 text=True, timeout=10, check=False)  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(git("status", "--porcelain")),
    }


def add_common_args(p: argparse.ArgumentParser, out: Path) -> None:
    """`--out` and `--quick`, which every benchmark has."""
    p.add_argument("--out", type=Path, default=out, help=f"result JSON (default {out})")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a small, fast run to check the benchmark works (figures not comparable)",
    )


def run_benchmark(
    name: str,
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace], Awaitable[dict[str, Any]]],
    summary: Callable[[dict[str, Any]], None],
) -> int:
    """The main tail of every benchmark: run, stamp, print, write; exit 1 if it failed."""
    hidsd_logging.configure("warning")
    started = time.time()
    t0 = time.monotonic()
    try:
        result = uvloop.run(run(args))
    except BenchError as exc:
        print(f"{name} failed: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; stack and workers stopped", file=sys.stderr)
        return 130
    result = {
        "benchmark": name,
        "quick": bool(getattr(args, "quick", False)),
        **result,
        "started_at": round(started, 1),
        "duration_s": round(time.monotonic() - t0, 1),
        "machine": {**machine_info(), **result.get("machine", {})},
        "code": code_state(),
    }
    summary(result)
    print(f"\n{name}: {result['duration_s']:.0f} s in all")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


#: a numeric option of a benchmark: (flag, type, default, help); `add_options` appends the default
Option = tuple[str, type, float, str]


def add_options(p: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    """Numeric options from a table, so a benchmark lists its knobs once, defaults in the help."""
    for flag, typ, default, text in options:
        p.add_argument(flag, type=typ, default=typ(default), help=f"{text} (default {default})")


def quick_defaults(args: argparse.Namespace, full: dict[str, Any], quick: dict[str, Any]) -> None:
    """Fill options left unset (None) with the full run's value, or the quick one's under
    `--quick`, so one flag shrinks a run and an explicit flag still wins."""
    chosen = quick if getattr(args, "quick", False) else full
    for key, value in {**full, **chosen}.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


class Budget:
    """The run's time budget: phases ask before they start whether they still fit, so a full
    run ends inside its 10 minutes with what it measured rather than being killed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.cut: list[str] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def fits(self, phase: str, needs_s: float) -> bool:
        """True if `phase` (about `needs_s` long) ends before the deadline; else it is noted as
        cut (the result's `cut` list) and the caller skips it."""
        if needs_s <= self.left():
            return True
        warn(f"{phase!r} would overrun the time budget ({needs_s:.0f} s, {self.left():.0f} s left)")
        self.cut.append(phase)
        return False

    def share(self, fraction: float, floor_s: float = 1.0) -> float:
        """A timeout that is `fraction` of what is left, never below `floor_s`."""
        return max(floor_s, self.left() * fraction)


def print_rows(title: str, rows: Sequence[tuple[str, str]], quick: bool = False) -> None:
    """A summary as aligned `label  value` lines under a title."""
    width = max((len(k) for k, _ in rows), default=10)
    print(f"\n{title}" + (" (quick: figures not comparable)" if quick else ""))
    print("-" * (width + 16))
    for k, v in rows:
        print(f"{k:<{width}}  {v:>12}")
    print("-" * (width + 16))
