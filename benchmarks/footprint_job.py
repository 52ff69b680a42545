"""The business job of `benchmarks/footprint.py`: a fixed amount of pure-Python CPU work.

Run as a script (`python -S footprint_job.py MILLIONS`), it does MILLIONS million
iterations of an arithmetic loop and exits. `run_job` starts `procs` of those at once, one per
core, each with PR_SET_PDEATHSIG (so nothing outlives the benchmark), and returns the wall time
until the last one finished and the CPU time they used.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve()


def work(millions: int) -> int:
    """The job: the same instructions every run, no I/O, no allocation that grows."""
    x = 0
    for i in range(millions * 1_000_000):
        x += i * i
    return x


@dataclass(frozen=True)
class JobResult:
    wall_s: float
    cpu_s: float
    procs: int


async def run_job(procs: int, millions: int) -> JobResult:
    """`procs` processes of `millions` million iterations each, started together."""
    from hidsd.base.proc import with_pdeathsig

    argv = with_pdeathsig([sys.executable, "-S", str(HERE), str(millions)], os.getpid())
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    children: list[asyncio.subprocess.Process] = []
    try:
        for _ in range(procs):
            children.append(
                await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
            )
        codes = [await c.wait() for c in children]
    finally:
        for c in children:
            if c.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    c.kill()
                await c.wait()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if any(codes):
        raise RuntimeError(f"business job failed: exit codes {codes}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return JobResult(wall_s=wall, cpu_s=cpu, procs=procs)


if __name__ == "__main__":
    work(int(sys.argv[1]))
