"""The circuit breaker service: samples, feeds the policy, and carries out what it decides.

The policy (`hidsd.agent.breaker`) is pure; this is the I/O around it: usage from the cgroups
or psutil (`hidsd.plugins.cgroups`), host pressure (`hidsd.agent.pressure`), the supervisor's
plugins (held, throttled), kernel limits from config, the denylist on disk (a restart must not
bring an offender back), and an event per state change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from hidsd.agent.breaker import Breaker, BreakerState, PluginLoad, Sample, Transition
from hidsd.agent.pressure import read_host_pressure
from hidsd.base.errors import HidsError
from hidsd.base.files import write_atomic
from hidsd.base.storage import StorageHealth
from hidsd.plugins.cgroups import Accounting, ResourceControl, open_resource_control
from hidsd.plugins.supervisor import Supervisor
from hidsd.wire.heartbeat import AccountingReport, BreakerReport
from hidsd.wire.limits import BreakerConfig, CgroupLimits

DENYLIST_FILE = "breaker-denylist.json"
#: the distinct exit code of an agent whose breaker tripped with `on_trip = "exit"`
EXIT_TRIPPED = 12

OnEvent = Callable[[Transition], Awaitable[None]]


class BreakerService:
    def __init__(
        self,
        supervisor: Supervisor,
        data_dir: Path,
        cgroups: str,
        cgroup_name: str,
        on_event: OnEvent,
        on_exit: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.supervisor = supervisor
        self.path = data_dir / DENYLIST_FILE
        self.cgroups, self.cgroup_name = cgroups, cgroup_name
        self.on_event = on_event
        self.on_exit = on_exit
        self.clock = clock
        self.log: Any = structlog.get_logger("hidsd.breaker")
        self.cfg = BreakerConfig()
        self.limits: CgroupLimits | None = None
        self.limits_error = ""
        self.resources: ResourceControl = open_resource_control("off")
        self.breaker = Breaker(self.cfg, clock())
        self.breaker.denylist = self._load_denylist()
        self._prev: dict[str, tuple[float, float, int]] = {}  # name -> (at, cpu_s, records)
        self._prev_agent: tuple[float, float] | None = None
        self._pending: list[Transition] = []
        self._exited = False
        #: set by the agent: where a failed denylist save is reported
        self.health: StorageHealth | None = None
        self._unsaved = False

    # ------------------------------------------------------------------ setup / config

    def setup(self) -> None:
        """Put the agent (and later each plugin) into cgroups; psutil if that cannot be done."""
        try:
            rc = open_resource_control(self.cgroups, self.cgroup_name)
            rc.setup()
        except (HidsError, OSError) as exc:
            msg = exc.message if isinstance(exc, HidsError) else str(exc)
            rc = open_resource_control("off")
            rc.detail = f"cgroup setup failed, psutil accounting: {msg}"
        self.resources = rc
        self.supervisor.resources = rc
        self.log.info("resource_control", mode=rc.mode.value, detail=rc.detail)
        if self.limits is not None:
            self._apply_limits(self.limits)

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.resources.teardown()

    def configure(self, conf: dict[str, Any]) -> None:
        """Hot reload of thresholds and kernel limits (the `[breaker]` table)."""
        self.cfg = BreakerConfig.from_dict(conf)
        self.breaker.cfg = self.cfg
        self._apply_limits(CgroupLimits.from_dict(conf))

    def _apply_limits(self, limits: CgroupLimits) -> None:
        self.limits = limits
        if self.resources.mode is Accounting.PSUTIL:
            return
        try:
            self.resources.apply_limits(limits)
            self.limits_error = ""
        except (HidsError, OSError) as exc:
            self.limits_error = exc.message if isinstance(exc, HidsError) else str(exc)
            self.log.error("breaker_limits_failed", error=self.limits_error)

    # ------------------------------------------------------------------ operator

    def clear(self, name: str) -> bool:
        """`hidsctl plugins clear NAME`: off the denylist, out of the held set."""
        found = self.breaker.clear(name)
        if found:
            self._save_denylist()
            self.supervisor.set_blocked(self.breaker.blocked(self.supervisor.wanted_priorities()))
            self.log.info("breaker_cleared", plugin=name)
        return found

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        while True:
            try:
                self.tick()
            except (HidsError, OSError) as exc:
                self.log.warning("breaker_sample_failed", error=str(exc))
            for t in self._pending:
                await self._emit(t)
            self._pending.clear()
            if self.breaker.exit_reason is not None and not self._exited:
                self._exited = True
                self.on_exit(self.breaker.exit_reason)
            await asyncio.sleep(self.cfg.interval_s)  # hot-reloadable

    def tick(self) -> list[Transition]:
        """One sample, one policy step, then apply the result. Returns the state changes."""
        sample = self.sample()
        deny_before = dict(self.breaker.denylist)
        changes = self.breaker.step(sample)
        self.supervisor.set_blocked(self.breaker.blocked(sample.wanted))
        if self.breaker.throttled:
            self.supervisor.set_throttle(self.cfg.throttle_rate_factor, self.cfg.throttle_nice)
            self._weights(self.cfg.throttle_rate_factor)
        else:
            self.supervisor.set_throttle(1.0, 0)
            self._weights(1.0)
        if self.breaker.denylist != deny_before:
            self._save_denylist()
        for t in changes:
            self.log.warning("breaker_state", old=t.old.value, state=t.new.value,
                             reason=t.reason, offender=t.offender)  # fmt: skip
        self._pending.extend(changes)
        return changes

    def _cap_pct(self) -> float | None:
        """A plugin's kernel CPU cap now (the plugins' quota, cut while throttled)."""
        if self.resources.mode is Accounting.PSUTIL or self.limits is None:
            return None
        pct = self.limits.cpu_quota_pct
        if pct <= 0:
            return None
        return pct * (self.cfg.throttle_rate_factor if self.breaker.throttled else 1.0)

    def _weights(self, factor: float) -> None:
        if self.resources.mode is Accounting.PSUTIL:
            return
        for name in self.supervisor.running:
            try:
                self.resources.set_plugin_weight(name, factor)
            except (HidsError, OSError) as exc:
                self.log.debug("breaker_weight_failed", plugin=name, error=str(exc))

    def sample(self) -> Sample:
        now, wall = self.clock(), time.time()
        agent = self.resources.agent_usage()
        agent_cpu = 0.0
        if self._prev_agent is not None and now > self._prev_agent[0]:
            agent_cpu = max(0.0, (agent.cpu_s - self._prev_agent[1]) / (now - self._prev_agent[0]))
        self._prev_agent = (now, agent.cpu_s)
        plugins: dict[str, PluginLoad] = {}
        seen: dict[str, tuple[float, float, int]] = {}
        for name, (runner, _task) in self.supervisor.running.items():
            usage = self.resources.plugin_usage(name)
            records = runner.counters.get("records", 0)
            if usage is None:
                continue
            cpu = rate = 0.0
            prev = self._prev.get(name)
            if prev is not None and now > prev[0]:
                dt = now - prev[0]
                # a restart resets both counters: no rate for this sample, not a negative one
                cpu = max(0.0, (usage.cpu_s - prev[1]) / dt)
                rate = max(0.0, (records - prev[2]) / dt)
            seen[name] = (now, usage.cpu_s, records)
            # A plugin's start-up (procmon's first /proc scan, say) may sit at a cap cut by the
            # throttle for a whole window: that is not a burner. The cap counts once the
            # plugin has run a window; every other threshold counts from its first sample.
            young = time.monotonic() - runner.started_at < self.cfg.window_s + self.cfg.interval_s
            cap = None if young else self._cap_pct()
            plugins[name] = PluginLoad(cpu * 100, usage.mem_bytes, rate, cap, settling=young)
        self._prev = seen
        hp = read_host_pressure()
        return Sample(
            at=now,
            wall=wall,
            agent_cpu_pct=agent_cpu * 100,
            agent_mem_bytes=agent.mem_bytes,
            plugins=plugins,
            wanted=self.supervisor.wanted_priorities(),
            host_cpu_pressure_pct=hp.cpu_pct,
            host_mem_available_pct=hp.mem_available_pct,
        )

    async def _emit(self, t: Transition) -> None:
        try:
            await self.on_event(t)
        except Exception as exc:  # NATS away: the heartbeat still carries the state
            self.log.warning("breaker_event_not_sent", error=str(exc))

    # ------------------------------------------------------------------ report / persistence

    def report(self) -> BreakerReport:
        s = self.resources
        return replace(
            self.breaker.report(self.clock(), time.time()),
            accounting=AccountingReport(s.mode.value, s.detail),
            limits_error=self.limits_error,
        )

    @property
    def state(self) -> BreakerState:
        return self.breaker.state

    def _load_denylist(self) -> dict[str, tuple[float, str]]:
        try:
            raw = json.loads(self.path.read_text())
            return {str(k): (float(v[0]), str(v[1])) for k, v in raw["denylist"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            # corrupt: start empty, say so (an offender may come back; the breaker catches it)
            self.log.error("breaker_denylist_corrupt", path=str(self.path), error=str(exc))
            return {}

    def _save_denylist(self) -> bool:
        """Atomic replace; a failure is reported and retried by `retry_save`."""
        data = {"denylist": {k: [u, r] for k, (u, r) in self.breaker.denylist.items()}}
        try:
            write_atomic(self.path, json.dumps(data).encode())
        except OSError as exc:
            if not self._unsaved:
                self.log.error("breaker_denylist_not_saved", path=str(self.path), error=str(exc))
            self._unsaved = True
            if self.health is not None:
                self.health.failed("denylist", self.path, exc, retried=True)
            return False
        self._unsaved = False
        if self.health is not None:
            self.health.ok("denylist")
        return True

    def retry_save(self) -> bool:
        """Write a denylist save that failed (called periodically); True when none is owed."""
        return not self._unsaved or self._save_denylist()
