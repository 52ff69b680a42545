"""Real controller processes for a benchmark run: `python -m hidsd.controller.main`, as an
operator starts one, against the run's `local_stack`, and what the coordinator asks them.

`ControllerSet` spawns them (PR_SET_PDEATHSIG, JSON logs to a file each), stops one (SIGTERM,
then SIGKILL), fails the run with the log's tail if one exits, and reads them through the
wire's own verbs: `ctl.controllers` (`CONTROLLERS`, what `hidsctl controllers list` asks, any
member answers and scatters) and `ctlpeer.<id>.stats` (`PEER_STATS`, one member directly:
under load a member can take longer than the scatter waits for it).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hidsd.base.errors import HidsError
from hidsd.base.proc import with_pdeathsig
from hidsd.bus.transport import Bus
from hidsd.ctl.killswitch import fetch_expected
from hidsd.dev.devstack import stop_process
from hidsd.wire.names import FLEET_TARGET, Scope, Subjects
from hidsd.wire.rpc import Verb, encode_request
from hidsd.wire.status import StatsShare
from hidsd.wire.verbs import CONTROLLERS, PEER_STATS

from .procs import log_events, process_cpu_s
from .report import ROOT, BenchError, Option
from .stack import Stack


@dataclass
class Controller:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    started: float

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_s(self) -> float | None:
        return process_cpu_s(self.proc.pid)

    def rss_mb(self) -> float | None:
        try:
            with open(f"/proc/{self.proc.pid}/statm") as f:
                pages = int(f.read().split()[1])
        except OSError:
            return None
        return round(pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20), 1)


def log_summary(path: Path) -> dict[str, int]:
    """What a controller logged above info (JSON lines by level:event, other lines by start)."""
    return {k: v for k, v in log_events([path]).items() if not k.startswith(("info:", "debug:"))}


def quiet_options(what: str) -> list[Option]:
    """The options of a benchmark that runs a `what` again when other work disturbed it."""
    return [("--quiet-pct", float, 25.0, f"a {what} during which other processes used more "
             "CPU than this (%% of one core) is run again"),
            ("--budget-s", float, 540.0,
             "phases that would end later than this are cut")]  # fmt: skip


@dataclass
class ControllerSet:
    """The run's controllers (all of the queue group `hidsd-ingest`)."""

    stack: Stack
    env: dict[str, str] = field(default_factory=dict)
    running: list[Controller] = field(default_factory=list)
    stopped: list[Controller] = field(default_factory=list)
    subjects: Subjects = field(default_factory=Subjects)
    #: controller name -> cluster member id (from `wait_members`)
    ids: dict[str, str] = field(default_factory=dict)

    def start(self, name: str) -> Controller:
        log = self.stack.workdir / f"controller-{name}.log"
        cmd = [sys.executable, "-m", "hidsd.controller.main", "--nats", self.stack.nats_url,
               "--etcd", ",".join(self.stack.etcd_endpoints), "--name", name,
               "--log-format", "json"]  # fmt: skip
        with open(log, "ab") as out:
            proc = subprocess.Popen(with_pdeathsig(cmd, os.getpid()), stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **self.env}, cwd=ROOT)  # fmt: skip
        c = Controller(name, proc, log, time.perf_counter())
        self.running.append(c)
        return c

    def stop(self, c: Controller) -> None:
        stop_process(c.proc, timeout=10)
        self.running.remove(c)
        self.stopped.append(c)

    def stop_all(self) -> None:
        for c in list(self.running):
            try:
                self.stop(c)
            except Exception as exc:  # every one is stopped, whatever one does
                print(f"warning: stopping controller {c.name}: {exc!r}", file=sys.stderr)

    def check_alive(self) -> None:
        for c in self.running:
            if c.proc.poll() is not None:
                tail = c.log.read_text(errors="replace")[-3000:]
                raise BenchError(f"controller {c.name} exited with {c.proc.returncode}:\n{tail}")

    def pids(self) -> dict[str, int]:
        return {c.name: c.pid for c in self.running}

    def logs(self) -> dict[str, dict[str, int]]:
        return {c.name: log_summary(c.log) for c in self.running + self.stopped}

    async def ask(self, verb: Verb[Any], params: dict[str, Any] | None = None,
                  timeout: float = 5.0, subject: str | None = None) -> Any:  # fmt: skip
        """One request on the coordinator's connection, decoded to the verb's reply type."""
        bus: Bus = self.stack.bus
        data = await bus.request(subject or self.subjects.ctl(verb.name),
                                 encode_request(params or {}), timeout)  # fmt: skip
        return verb.decode(data)

    async def wait_members(self, timeout: float = 60.0) -> None:
        """Until `ctl.controllers` lists every running controller, three times in a row."""
        deadline = time.monotonic() + timeout
        good = 0
        while good < 3:
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"the {len(self.running)} controllers did not see each other "
                                 f"within {timeout:.0f}s")  # fmt: skip
            try:
                rows = (await self.ask(CONTROLLERS, timeout=3.0)).controllers
                ok = len(rows) == len(self.running) and all(r.stats is not None for r in rows)
                self.ids = {r.name: r.id for r in rows}
            except HidsError:
                ok = False
            good = good + 1 if ok else 0
            await asyncio.sleep(0.3)

    async def wait_expected(self, hosts: set[str], timeout: float) -> tuple[int, float]:
        """Until the controllers' `expected` (fleet scope: what hidsctl asks before it issues a
        command) lists every one of `hosts` online, or `timeout`; returns how many it listed
        and the seconds waited."""
        t0 = time.monotonic()
        seen = 0
        while time.monotonic() - t0 < timeout:
            self.check_alive()
            got = await fetch_expected(self.stack.bus, self.subjects, Scope.FLEET, FLEET_TARGET,
                                       1.0)  # fmt: skip
            seen = len(hosts.intersection(got.online)) if got is not None else 0
            if seen >= len(hosts):
                break
            await asyncio.sleep(0.5)
        return seen, round(time.monotonic() - t0, 2)

    async def peer_stats(self, timeout: float = 10.0) -> tuple[float, float, dict[str, StatsShare]]:
        """(last reply time, slowest request, stats per controller name), each member asked
        directly (`ctlpeer.<id>.stats`)."""

        async def one(mid: str) -> tuple[float, float, StatsShare]:
            t0 = time.perf_counter()
            st = await self.ask(PEER_STATS, timeout=timeout,
                                subject=self.subjects.ctl_peer(mid, PEER_STATS.name))  # fmt: skip
            t1 = time.perf_counter()
            return t1, t1 - t0, st

        got = await asyncio.gather(*(one(mid) for mid in self.ids.values()))
        return max(g[0] for g in got), max(g[1] for g in got), {g[2].name: g[2] for g in got}

    async def wait_index(self, n: int, t0: float, timeout: float,
                         names: set[str]) -> dict[str, float]:  # fmt: skip
        """Seconds from `t0` (perf_counter) until each named controller's inventory index
        holds `n` hosts (`ctl.controllers`, polled every 0.5 s)."""
        done: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        last = ""
        while set(done) != names:
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"index not complete within {timeout:.0f}s: {last}")
            try:
                rows = (await self.ask(CONTROLLERS, timeout=5.0)).controllers
            except HidsError as exc:
                last = str(exc)
                await asyncio.sleep(0.5)
                continue
            now = time.perf_counter()
            stats = [r.stats for r in rows if r.stats is not None]
            last = ", ".join(f"{s.name}={s.inventory_hosts}" for s in stats)
            for s in stats:
                if s.name in names and s.inventory_hosts >= n:
                    done.setdefault(s.name, round(now - t0, 2))
            await asyncio.sleep(0.5)
        return done
