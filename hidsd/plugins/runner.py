"""One plugin's child process: start, pipes, frames, restarts with backoff, crash loops.

Each plugin runs in its own process group with PR_SET_PDEATHSIG (no orphan survives the
agent, even a SIGKILLed one). Stop = SHUTDOWN frame and close stdin, wait, SIGTERM the group,
wait, SIGKILL the group. A plugin that exits is restarted after an exponential backoff with
jitter; one that dies `crash_limit` times within `crash_window_s` is parked and reported, not
restarted forever, until its config changes or an operator restarts it. Garbage on a
plugin's stdout (bad magic, oversized frame, EOF mid-frame) is counted and the plugin is
restarted: a byte stream cannot be resynchronised.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
import psutil
import structlog

from hidsd.base.aio import wait_timeout
from hidsd.base.errors import ProtocolError
from hidsd.base.proc import with_pdeathsig
from hidsd.base.storage import StorageHealth, describe
from hidsd.bus.transport import backoff_delay
from hidsd.plugins.pluginlog import PluginLog
from hidsd.plugins.telemetry import Pipeline, PipelineLimits
from hidsd.wire import frames
from hidsd.wire.heartbeat import PluginReport

if TYPE_CHECKING:
    from hidsd.plugins.cgroups import ResourceControl

#: always reported, zero or not, so a missing key never hides a count
RUNNER_COUNTERS = ("starts", "records", "bad_frames", "truncated_frames", "parked",
                   "task_pipe_broken", "runner_errors", "start_failed")  # fmt: skip


class StartFailed(Exception):
    """The plugin could not be spawned for lack of a resource (descriptors, processes,
    memory): not the plugin's fault, so it is retried with backoff and never parked."""

    def __init__(self, exc: OSError) -> None:
        if exc.errno not in errno.errorcode:
            # uvloop's socketpair failure arrives as errno -1: find out whether it was ours
            try:
                os.close(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError as probe:
                exc = OSError(probe.errno, f"{probe.strerror} (spawning the plugin)")
        super().__init__(describe(exc))
        self.exc = exc


class PluginState(StrEnum):
    STOPPED = "stopped"
    RUNNING = "running"
    BACKOFF = "backoff"
    PARKED = "parked"


@dataclass(frozen=True)
class PluginSpec:
    name: str
    argv: tuple[str, ...]
    params: dict[str, Any]
    limits: PipelineLimits
    priority: int = 50

    @classmethod
    def builtin(cls, name: str, conf: dict[str, Any], telemetry: dict[str, Any]) -> PluginSpec:
        limits = PipelineLimits(
            rate_per_s=float(conf.get("rate_per_s", telemetry["rate_per_s"])),
            burst=float(conf.get("burst", telemetry["burst"])),
            batch_max_records=int(telemetry["batch_max_records"]),
            batch_max_ms=int(telemetry["batch_max_ms"]),
            policy=str(conf.get("policy", "block")),
            spool_max_bytes=int(telemetry.get("spool_max_bytes", 64 << 20)),
        )
        return cls(
            name=name,
            argv=(sys.executable, "-m", f"hidsd.plugins.builtin.{name}"),
            params=dict(conf.get("params", {})),
            limits=limits,
            priority=int(conf.get("priority", 50)),
        )


@dataclass
class PluginRunner:
    """One plugin: its process, its pipe reader and its telemetry pipeline."""

    spec: PluginSpec
    pipeline: Pipeline
    log_dir: Path
    max_frame_bytes: int = frames.DEFAULT_MAX_FRAME_BYTES
    crash_limit: int = 5
    crash_window_s: float = 60.0
    stop_grace_s: float = 3.0
    state: PluginState = PluginState.STOPPED
    counters: Counter[str] = field(default_factory=Counter)
    exits: deque[float] = field(default_factory=lambda: deque(maxlen=32))
    last_exit: str = ""
    proc: asyncio.subprocess.Process | None = None
    #: the circuit breaker's resource control: puts the plugin in its cgroup
    resources: ResourceControl | None = None
    #: niceness while the breaker throttles (0 = normal)
    nice: int = 0
    #: frames of these data types go to a callback (plugin name, frame) instead of telemetry
    routes: dict[int, Callable[[str, bytes], None]] = field(default_factory=dict)
    health: StorageHealth | None = None
    #: when the running process started (monotonic; 0 = not running yet)
    started_at: float = 0.0
    _ps: Any = None
    _rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.log: Any = structlog.get_logger("hidsd.plugins").bind(plugin=self.spec.name)
        self._restart_now = asyncio.Event()
        self.stderr_log = PluginLog(self.log_dir / f"{self.spec.name}.log", health=self.health)

    async def update(self, spec: PluginSpec) -> None:
        """Hot reload of params (sent as a CONFIG task) and telemetry limits."""
        params_changed = spec.params != self.spec.params
        self.spec = spec
        self.pipeline.set_limits(spec.limits)
        if params_changed and self.proc is not None and self.proc.returncode is None:
            await self._send(frames.TaskType.CONFIG, spec.params)
        self.log.info("plugin_reconfigured", params_changed=params_changed,
                      rate_per_s=spec.limits.rate_per_s, policy=spec.limits.policy)  # fmt: skip

    def set_nice(self, nice: int) -> None:
        """The breaker's throttle: the whole process group gets `nice` (0 = back to normal).
        Lowering it again needs root (CAP_SYS_NICE); a failure is counted, not fatal."""
        self.nice = nice
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            os.setpriority(os.PRIO_PGRP, self.proc.pid, nice)
        except OSError:
            self.counters["renice_failed"] += 1

    def restart(self) -> None:
        """Operator restart: also un-parks."""
        self.exits.clear()
        self._restart_now.set()
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    async def run(self) -> None:
        """Keep the plugin running until cancelled; cancellation stops it cleanly."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.pipeline.run())
            tg.create_task(self._lifecycle())

    async def _lifecycle(self) -> None:
        failures = 0
        while True:
            started = time.monotonic()
            try:
                await self._run_once()
            except StartFailed as exc:
                self.counters["start_failed"] += 1
                self.last_exit = f"cannot start: {exc}"
                if self.health is not None:
                    self.health.failed(f"plugin:{self.spec.name}", self.spec.argv[0], exc.exc)
                failures += 1
                self.state = PluginState.BACKOFF
                delay = backoff_delay(failures, 0.5, 30.0, self._rng)
                self.log.error("plugin_start_failed", error=str(exc), retry_in_s=round(delay, 2))
                self._restart_now.clear()
                with contextlib.suppress(TimeoutError):
                    await wait_timeout(self._restart_now.wait(), delay)
                continue
            except Exception as exc:
                # A fault in one plugin's plumbing must not take the agent down: count it
                # and treat it as an exit (restart per policy).
                self.counters["runner_errors"] += 1
                self.last_exit = f"supervisor error: {type(exc).__name__}: {exc}"
                self.log.exception("plugin_runner_error")
            finally:
                if self.proc is not None and self.proc.returncode is None:
                    await asyncio.shield(self._stop_process())
            self.exits.append(time.monotonic())
            recent = [t for t in self.exits if time.monotonic() - t < self.crash_window_s]
            if len(recent) >= self.crash_limit:
                self.state = PluginState.PARKED
                self.counters["parked"] += 1
                self.log.error("plugin_parked", exits=len(recent), window_s=self.crash_window_s,
                               last_exit=self.last_exit)  # fmt: skip
                self._restart_now.clear()
                await self._restart_now.wait()
                failures = 0
                continue
            failures = 0 if time.monotonic() - started > self.crash_window_s else failures + 1
            self.state = PluginState.BACKOFF
            delay = backoff_delay(failures, 0.5, 30.0, self._rng)
            self.log.warning("plugin_restart_scheduled", in_s=round(delay, 2),
                             last_exit=self.last_exit)  # fmt: skip
            self._restart_now.clear()
            with contextlib.suppress(TimeoutError):
                await wait_timeout(self._restart_now.wait(), delay)

    async def _run_once(self) -> None:
        join = self.resources.plugin_join_paths(self.spec.name) if self.resources else []
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *with_pdeathsig(self.spec.argv, os.getpid(), join),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,  # the agent keeps the log (PluginLog)
                start_new_session=True,  # its own process group: stop kills the whole tree
            )
        except OSError as exc:
            raise StartFailed(exc) from exc
        if self.health is not None:
            self.health.ok(f"plugin:{self.spec.name}")
        assert self.proc.stderr is not None
        async with asyncio.TaskGroup() as tg:
            pump = tg.create_task(self.stderr_log.pump(self.proc.stderr),
                                  name=f"plugin-log:{self.spec.name}")  # fmt: skip
            try:
                await self._run_started()
            finally:
                # EOF once the group is gone; a daemonised grandchild may keep the pipe open
                _done, pending = await asyncio.wait([pump], timeout=1.0)
                for t in pending:
                    t.cancel()

    async def _run_started(self) -> None:
        assert self.proc is not None
        self._ps = None
        self.started_at = time.monotonic()
        self.state = PluginState.RUNNING
        self.counters["starts"] += 1
        if self.resources is not None:
            self.resources.plugin_started(self.spec.name, self.proc.pid)
        if self.nice:
            self.set_nice(self.nice)
        lim = self.pipeline.limits
        self.log.info("plugin_started", pid=self.proc.pid, rate_per_s=lim.rate_per_s,
                      burst=lim.burst, policy=lim.policy)  # fmt: skip
        await self._send(frames.TaskType.CONFIG, self.spec.params)
        try:
            await self._read_frames()
        finally:
            rc = await self._reap()
            if rc is None:
                self.last_exit = "unknown"
            elif rc >= 0:
                self.last_exit = f"exit code {rc}"
            else:
                self.last_exit = f"signal {-rc}"
            self.log.info("plugin_exited", how=self.last_exit)

    async def _send(self, task: int, payload: Any) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        body = msgpack.packb(payload, use_bin_type=True) if payload is not None else b""
        try:
            self.proc.stdin.write(frames.frame(task, body, time.time_ns()))
            await self.proc.stdin.drain()
        except (OSError, RuntimeError):  # the plugin is gone (uvloop: closed transport)
            self.counters["task_pipe_broken"] += 1

    async def _read_frames(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        out = self.proc.stdout
        while True:
            try:
                head = await out.readexactly(frames.HEADER_SIZE)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    self.counters["truncated_frames"] += 1
                    self.log.warning("plugin_died_mid_frame", got=len(exc.partial))
                return
            try:
                hdr = frames.unpack_header(head, self.max_frame_bytes)
            except ProtocolError as exc:
                self.counters["bad_frames"] += 1
                self.log.error("plugin_garbage", error=exc.message)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)  # no grace for a corrupt stream
                return
            try:
                payload = await out.readexactly(hdr.length)
            except asyncio.IncompleteReadError:
                self.counters["truncated_frames"] += 1
                self.log.warning("plugin_died_mid_frame", want=hdr.length)
                return
            self.counters["records"] += 1
            route = self.routes.get(hdr.data_type)
            if route is not None:
                self.counters["routed"] += 1
                route(self.spec.name, head + payload)
                continue
            await self.pipeline.offer(head + payload)

    async def _reap(self) -> int | None:
        assert self.proc is not None
        if self.proc.returncode is None:
            await self._stop_process()
        return self.proc.returncode

    async def _stop_process(self) -> None:
        """SHUTDOWN and close stdin, wait; SIGTERM the group, wait; SIGKILL the group."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None and not proc.stdin.is_closing():
            await self._send(frames.TaskType.SHUTDOWN, None)
            proc.stdin.close()
        if proc.stdout is not None:
            # A busy plugin may be blocked writing to us: keep its pipe moving so it sees
            # SHUTDOWN and exits in time. What it still writes now is counted, not kept.
            with contextlib.suppress(TimeoutError, OSError):
                async with asyncio.timeout(self.stop_grace_s):
                    while chunk := await proc.stdout.read(1 << 16):
                        self.counters["bytes_discarded_at_stop"] += len(chunk)
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
            try:
                await wait_timeout(proc.wait(), self.stop_grace_s)
                break
            except TimeoutError:
                continue
        # a plugin that ignored its stdin may have forked: clear the group anyway
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def stats(self) -> PluginReport:
        cpu, rss, fds = 0.0, 0, 0
        if self.proc is not None and self.proc.returncode is None:
            try:
                if self._ps is None:
                    self._ps = psutil.Process(self.proc.pid)
                    self._ps.cpu_percent(None)
                cpu = self._ps.cpu_percent(None)
                rss = self._ps.memory_info().rss
                fds = self._ps.num_fds()  # a plugin leaking descriptors shows here
            except (psutil.Error, OSError):  # gone, or out of descriptors: no figure now
                pass
        tel = self.pipeline.stats()
        return PluginReport(
            state=self.state.value,
            pid=self.proc.pid if self.proc and self.proc.returncode is None else None,
            cpu_pct=round(cpu, 2),
            rss_bytes=rss,
            fds=fds,
            last_exit=self.last_exit,
            nice=self.nice,
            rate_factor=self.pipeline.rate_factor,
            counters={
                **{k: self.counters.get(k, 0) for k in RUNNER_COUNTERS},
                **dict(self.counters),
                **self.stderr_log.stats(),
            },
            telemetry={k: int(v) for k, v in tel.items()},
        )
