"""The plugin supervisor: which plugins run, started and stopped as the config, the kill
switch, operators and the circuit breaker decide; each one a `PluginRunner`
(`hidsd.plugins.runner`: its process, pipes, restarts and crash loops).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from hidsd.base.storage import StorageHealth
from hidsd.plugins.runner import (
    RUNNER_COUNTERS,
    PluginRunner,
    PluginSpec,
    PluginState,
    StartFailed,
)
from hidsd.plugins.telemetry import Pipeline, Publish, Spool
from hidsd.wire.heartbeat import PluginReport
from hidsd.wire.records import BUILTIN

if TYPE_CHECKING:
    from hidsd.plugins.cgroups import ResourceControl

#: the runner's names stay importable from here (benchmarks build runners directly)
__all__ = ["RUNNER_COUNTERS", "PluginRunner", "PluginSpec", "PluginState", "StartFailed",
           "Supervisor"]  # fmt: skip


class Supervisor:
    """Runs the plugins the dynamic config enables, while the agent's work gate is open."""

    def __init__(
        self,
        host: str,
        subject_for: Any,
        data_dir: Path,
        publish: Publish,
        spool_max_bytes: int = 64 << 20,
        resources: ResourceControl | None = None,
        routes: dict[int, Callable[[str, bytes], None]] | None = None,
        health: StorageHealth | None = None,
    ) -> None:
        self.host = host
        self.subject_for = subject_for
        self.data_dir = data_dir
        self.publish = publish
        self.spool_max_bytes = spool_max_bytes
        self.wanted: dict[str, PluginSpec] = {}
        self.overrides: dict[str, bool] = {}  # operator start/stop, newer than config
        self.telemetry: dict[str, Any] = {}
        self.running: dict[str, tuple[PluginRunner, asyncio.Task[None]]] = {}
        self.allowed = True
        self.resources = resources
        self.routes = routes or {}
        self.health = health
        #: plugins the circuit breaker holds stopped (shed, tripped or denylisted)
        self.blocked: frozenset[str] = frozenset()
        self.rate_factor = 1.0
        self.nice = 0
        self._changed = asyncio.Event()
        self.log: Any = structlog.get_logger("hidsd.plugins").bind(host=host)

    def configure(self, plugins: dict[str, Any], telemetry: dict[str, Any]) -> None:
        """Hot reload: the plugins section of the effective config."""
        self.plugins_conf = plugins
        self.telemetry = telemetry
        self._recompute()

    def set_overrides(self, overrides: dict[str, bool]) -> None:
        """Operator start/stop (signed, in etcd): wins over the config's `enabled`."""
        self.overrides = dict(overrides)
        self._recompute()

    def _recompute(self) -> None:
        from hidsd.wire.dynconfig import DEFAULTS

        telemetry = self.telemetry or DEFAULTS["telemetry"]
        confs = getattr(self, "plugins_conf", {})
        wanted: dict[str, PluginSpec] = {}
        for name in sorted(set(confs) | set(self.overrides)):
            conf = confs.get(name, {})
            run = self.overrides.get(name, bool(conf.get("enabled", False)))
            if not run:
                continue
            if name not in BUILTIN:
                self.log.error("plugin_unknown", plugin=name, known=list(BUILTIN))
                continue
            wanted[name] = PluginSpec.builtin(name, conf, telemetry)
        self.wanted = wanted
        self._changed.set()

    def set_allowed(self, allowed: bool) -> None:
        """The kill switch: False stops every plugin; True brings the wanted ones back."""
        self.allowed = allowed
        self._changed.set()

    def set_blocked(self, names: set[str] | frozenset[str]) -> None:
        """The circuit breaker: these wanted plugins stay stopped until released."""
        if frozenset(names) != self.blocked:
            self.blocked = frozenset(names)
            self._changed.set()

    def set_throttle(self, rate_factor: float, nice: int) -> None:
        """The circuit breaker's throttle, on every running plugin and on those started later."""
        if (rate_factor, nice) == (self.rate_factor, self.nice):
            return
        self.rate_factor, self.nice = rate_factor, nice
        for runner, _ in self.running.values():
            runner.pipeline.set_rate_factor(rate_factor)
            runner.set_nice(nice)

    def wanted_priorities(self) -> dict[str, int]:
        """What would run were it not for the breaker (nothing while the kill switch holds)."""
        if not self.allowed:
            return {}
        return {name: spec.priority for name, spec in self.wanted.items()}

    def restart(self, name: str) -> bool:
        entry = self.running.get(name)
        if entry is None:
            return False
        entry[0].restart()
        return True

    def kick(self) -> None:
        for runner, _ in self.running.values():
            runner.pipeline.kick()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            try:
                while True:
                    await self._changed.wait()
                    self._changed.clear()
                    await self._reconcile(tg)
            finally:
                await self._stop_all()

    async def _reconcile(self, tg: asyncio.TaskGroup) -> None:
        target = (
            {n: spec for n, spec in self.wanted.items() if n not in self.blocked}
            if self.allowed
            else {}
        )
        for name in list(self.running):
            runner, _task = self.running[name]
            if name not in target:
                await self._stop(name)
            elif target[name] != runner.spec:
                new = target[name]
                if (
                    replace(new, params=runner.spec.params, limits=runner.spec.limits)
                    == runner.spec
                ):
                    # params and telemetry limits change in place: no restart
                    await runner.update(new)
                else:
                    await self._stop(name)
        for name, spec in sorted(target.items(), key=lambda kv: -kv[1].priority):
            if name in self.running:
                continue
            pipeline = Pipeline(
                host=self.host,
                plugin=name,
                subject=self.subject_for(name),
                publish=self.publish,
                spool=Spool(
                    self.data_dir / "spool" / name, spec.limits.spool_max_bytes, self.health
                ),
                limits=spec.limits,
                rate_factor=self.rate_factor,
            )
            runner = PluginRunner(spec, pipeline, self.data_dir / "plugin-logs",
                                  resources=self.resources, nice=self.nice,
                                  routes=self.routes, health=self.health)  # fmt: skip
            self.running[name] = (runner, tg.create_task(runner.run(), name=f"plugin:{name}"))

    async def _stop(self, name: str) -> None:
        runner, task = self.running.pop(name)
        for _ in range(5):
            task.cancel()
            # its own CancelledError stays in it; ours still propagates
            done, _pending = await asyncio.wait([task], timeout=runner.stop_grace_s * 3 + 1)
            if done:
                break
            self.log.warning("plugin_stop_slow", plugin=name)  # cancel again: bounded stop
        runner.pipeline.save_unsent()
        if self.resources is not None:
            self.resources.plugin_stopped(name)
        self.log.info("plugin_stopped", plugin=name, **runner.pipeline.stop_report)

    async def _stop_all(self) -> None:
        for name in list(self.running):
            await asyncio.shield(self._stop(name))

    def stats(self) -> dict[str, PluginReport]:
        return {name: runner.stats() for name, (runner, _) in self.running.items()}
