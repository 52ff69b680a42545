"""The agent: one `Agent.run()` owns every task through one TaskGroup.

Lifecycle, as uvicorn does it: `startup` (store, cgroups), `main_loop` (every service a named
task of one TaskGroup, until `should_exit`), `shutdown` (a bounded graceful part: a `bye`
heartbeat and a flush; then close). A second signal sets `force_exit` and skips the graceful
part. The services are built here and talk to each other only through the callbacks wired
below; the heartbeat reads them through `HeartbeatSources`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import msgpack
import structlog

from hidsd import __version__
from hidsd.agent.breaker import Transition
from hidsd.agent.breakersvc import EXIT_TRIPPED, BreakerService
from hidsd.agent.commands import CommandService
from hidsd.agent.configsvc import ConfigService
from hidsd.agent.control import ControlPolicy, ControlState, Decision
from hidsd.agent.convergence import ConvergenceService
from hidsd.agent.heartbeat import HeartbeatService, HeartbeatSources, local_facts
from hidsd.agent.plugincontrol import PluginControl, PluginControlService
from hidsd.agent.runmode import RunModeHolder
from hidsd.agent.settings import AgentSettings
from hidsd.agent.statefile import StateFile
from hidsd.agent.storagesvc import StorageService
from hidsd.base.aio import wait_timeout
from hidsd.base.errors import BusUnavailable, ProtocolError
from hidsd.base.storage import FdReserve, StorageHealth
from hidsd.bus.store import Store
from hidsd.bus.transport import Bus, BusOptions
from hidsd.plugins.spool import Spool
from hidsd.plugins.supervisor import Supervisor
from hidsd.plugins.telemetry import LatestPublisher, Pipeline
from hidsd.wire import frames
from hidsd.wire.commands import AckStatus, Command, CommandKind, RunMode, command_plugin
from hidsd.wire.heartbeat import OutputReport
from hidsd.wire.limits import PipelineLimits
from hidsd.wire.names import KeyLayout, Subjects
from hidsd.wire.records import DataType
from hidsd.wire.rpc import encode_event
from hidsd.wire.signing import TrustStore

#: the agent's own telemetry (breaker transitions) goes out as plugin "agent"
AGENT_EVENTS = "agent"


class Agent:
    """The hidsd agent process.

    `store` may be given (a benchmark's simulated fleet shares one etcd channel between the
    agents of one process); the agent then neither opens nor closes it.
    """

    def __init__(
        self, settings: AgentSettings, ping_interval_s: int = 20, store: Store | None = None
    ) -> None:
        self.settings = settings
        host = settings.host_id
        self.log: Any = structlog.get_logger("hidsd.agent").bind(host=host)
        self.should_exit = asyncio.Event()
        self.force_exit = asyncio.Event()
        #: set once connected and subscribed to its command subjects (tests, benchmarks)
        self.bus_ready = asyncio.Event()
        self.subjects = Subjects(settings.subject_prefix)
        self.keys = KeyLayout(settings.key_prefix)
        self.health = StorageHealth(settings.data_dir)
        self.fd_reserve = FdReserve()
        self.state_file = StateFile(
            settings.data_dir, settings.runtime_dir, self.health, self.fd_reserve,
            host=host, log=self.log.warning,
        )  # fmt: skip
        self.policy = ControlPolicy(
            host=host,
            groups=settings.groups,
            trust=TrustStore.from_b64(list(settings.trusted_keys)),
            max_command_bytes=settings.max_command_bytes,
        )
        self._load_state()
        self.run_mode = RunModeHolder(self.policy)
        n = settings.nats
        self.bus = Bus(
            BusOptions(
                servers=n.servers, name=f"hidsd:{host}", user=n.user, password=n.password,
                token=n.token, reconnect_base_s=n.reconnect_base_s,
                reconnect_max_s=n.reconnect_max_s, connect_timeout_s=n.connect_timeout_s,
                ping_interval_s=ping_interval_s,
            ),
            on_reconnect=self._on_reconnect,
        )  # fmt: skip
        e = settings.etcd
        self._owns_store = store is None
        self.store = store or Store(e.endpoints, e.user, e.password, e.timeout_s)
        self.plugin_control = PluginControl(self.policy)
        self.commands = CommandService(
            self.bus, self.policy, self.subjects, self._on_change, self._on_plugin_command,
            self._on_time_refusal,
        )  # fmt: skip
        self.convergence = ConvergenceService(
            self.store, self.policy, self.keys, settings.resync_s, self._on_store_decision,
            watch=settings.watch,
        )  # fmt: skip
        self.heartbeat_s = settings.heartbeat_s
        self.latest = LatestPublisher(host, self._publish_telemetry)
        inv_subject = self.subjects.inventory(host)
        self.supervisor = Supervisor(
            host,
            lambda name: self.subjects.telemetry(host, name),
            settings.data_dir,
            self._publish_telemetry,
            routes={DataType.PACKAGES_STATE: lambda plugin, frame: self.latest.offer(
                inv_subject, plugin, frame)},
            health=self.health,
        )  # fmt: skip
        self.run_mode.follow(self.supervisor.set_allowed)
        # the agent's own records: spooled like a plugin's, so a transition is never lost
        # to a NATS outage; "drop" so a stuck bus can never stall the breaker
        limits = PipelineLimits(policy="drop")
        self.events = Pipeline(
            host=host, plugin=AGENT_EVENTS, subject=self.subjects.telemetry(host, AGENT_EVENTS),
            publish=self._publish_telemetry, limits=limits,
            spool=Spool(settings.data_dir / "spool" / AGENT_EVENTS, limits.spool_max_bytes,
                        self.health),
        )  # fmt: skip
        self.breaker = BreakerService(
            self.supervisor, settings.data_dir, settings.cgroups, settings.cgroup_name,
            self._on_breaker_event, self._on_breaker_exit,
        )  # fmt: skip
        self.breaker.health = self.health
        self.exit_code = 0
        self.config = ConfigService(
            self.store, self.keys, host, settings.groups, settings.data_dir,
            base={"log_level": settings.log_level, "heartbeat_s": settings.heartbeat_s,
                  "resync_s": settings.resync_s},
            on_apply=self._apply_config, on_reject=self._publish_event,
            period_s=lambda: self.convergence.resync_s, watch=settings.watch,
            on_status=self._poke,
        )  # fmt: skip
        self.config.health = self.health
        self.plugin_state = PluginControlService(
            self.store, self.keys, self.plugin_control, self.supervisor.set_overrides,
            self._on_plugin_store_decision, lambda: self.convergence.resync_s,
            watch=settings.watch,
        )  # fmt: skip
        self.heartbeat = HeartbeatService(
            HeartbeatSources(
                host=host, groups=settings.groups, mode=lambda: self.run_mode.mode,
                control=lambda: self.policy.state, interval_s=lambda: self.heartbeat_s,
                rejections=self._rejections, store_ok=lambda: self.convergence.store_ok,
                config=self.config.report, storage=self.health.report,
                clock=self.policy.clock_report, plugins=self.supervisor.stats,
                breaker=self.breaker.report, outputs=self._outputs, facts=local_facts(),
            ),
            lambda body: self.bus.publish(self.subjects.heartbeat(host), body),
            lambda: self.bus.connected,
            self.log,
        )  # fmt: skip
        self._unsent_ack: Decision | None = None
        self.config.load_last_good()
        self.storage = StorageService(
            self.health, self.fd_reserve,
            (self.state_file.retry, self.config.retry_last_good, self.breaker.retry_save),
            self._poke, self.log,
        )  # fmt: skip

    @property
    def mode(self) -> RunMode:
        return self.run_mode.mode

    def _poke(self) -> None:
        self.heartbeat.poke()

    def _rejections(self) -> dict[str, int]:
        counts = self.policy.counters()
        counts.update({f"bus.{k}": v for k, v in self.bus.counters.items()})
        return counts

    def _outputs(self) -> dict[str, OutputReport]:
        ev = self.events
        events = OutputReport(dict(ev.counters), len(ev.spool), ev.last_error)
        return {"inventory": self.latest.report(), "events": events}

    def _load_state(self) -> None:
        self.state_file.prepare()  # reserve the slots while there is space
        try:
            state = self.state_file.load()
        except ProtocolError as exc:
            # Start from scratch: etcd re-delivers the desired state on the first resync.
            self.log.error("state_file_corrupt", path=str(self.state_file.path), error=exc.message)
            state = None
        if state is not None:
            self.policy.state = state
            self.log.info("state_loaded", mode=state.mode.value, applied_rev=state.applied_rev,
                          held=state.held)  # fmt: skip

    def _on_change(self, state: ControlState, decision: Decision) -> None:
        """Run-mode change: persist first, then open or close the work gate, then report."""
        if not self.state_file.save(state):
            # applied anyway (the stop holds in memory); retried until a copy takes it
            self.log.error("state_not_persisted", mode=state.mode.value, held=state.held,
                           storage=self.health.status.value)  # fmt: skip
        self.run_mode.changed()
        self.log.info("mode_changed", mode=state.mode.value, rev=state.applied_rev,
                      cmd_id=decision.cmd_id, held=state.held, detail=decision.detail)  # fmt: skip
        self.heartbeat.poke()

    def _on_time_refusal(self, cmd: Command) -> None:
        """A signed command our clock refused: the recorded state in etcd applies anyway."""
        del cmd
        self.convergence.request_resync()
        self.plugin_state.follower.request()
        self.heartbeat.poke()

    def _on_plugin_command(self, cmd: Command) -> Decision:
        decision, changed = self.plugin_control.apply_command(cmd)
        name = command_plugin(cmd)
        if cmd.kind is CommandKind.PLUGIN_CLEAR:
            if self.breaker.clear(name):
                return replace(decision, detail=f"{name} cleared from the breaker's denylist")
            return replace(decision, detail=f"{name} was not denylisted")
        if cmd.kind is CommandKind.PLUGIN_RESTART:
            if not self.supervisor.restart(name):
                return replace(
                    decision, ack_status=AckStatus.REJECTED, detail=f"{name} not running"
                )
            self.log.info("plugin_restart_requested", plugin=name, cmd_id=cmd.id)
        elif changed:
            self.supervisor.set_overrides(self.plugin_control.overrides())
            self.log.info("plugin_override", plugin=name, kind=cmd.kind.value, rev=cmd.rev)
        return decision

    async def _on_plugin_store_decision(self, decision: Decision) -> None:
        if self.bus.connected:
            await self.commands.ack(decision)

    async def _on_store_decision(self, decision: Decision) -> None:
        if decision.changed:
            self._on_change(decision.state, decision)
        if self.bus.connected:
            await self.commands.ack(decision)
        else:
            self._unsent_ack = decision  # sent once the bus is up: the issuer's ledger wants it

    async def _send_unsent_ack(self) -> None:
        decision, self._unsent_ack = self._unsent_ack, None
        if decision is not None:
            await self.commands.ack(decision)

    def _apply_config(self, effective: dict[str, Any]) -> None:
        """Hot reload: what takes effect without a restart."""
        from hidsd.base.logging import set_level

        level = effective["log_level"]
        set_level(level)
        self.heartbeat_s = float(effective["heartbeat_s"])
        self.convergence.resync_s = float(effective["resync_s"])
        self.supervisor.configure(effective.get("plugins", {}), effective["telemetry"])
        self.breaker.configure(effective["breaker"])
        self.log.info("config_hot_reloaded", log_level=level, heartbeat_s=self.heartbeat_s,
                      resync_s=self.convergence.resync_s)  # fmt: skip
        self.heartbeat.poke()

    async def _publish_telemetry(self, subject: str, body: bytes, headers: dict[str, str]) -> None:
        if not self.bus.connected:
            raise BusUnavailable("NATS is not connected")
        await self.bus.js_publish(subject, body, headers)

    async def _on_breaker_event(self, t: Transition) -> None:
        """A breaker state change: an operator event, a durable telemetry record, a heartbeat."""
        event = t.to_event()
        await self._publish_event(event)
        await self.events.offer(
            frames.frame(DataType.AGENT_EVENT, msgpack.packb(event), time.time_ns())
        )

    def _on_breaker_exit(self, reason: str) -> None:
        self.log.error("breaker_exit", reason=reason, exit_code=EXIT_TRIPPED)
        self.exit_code = EXIT_TRIPPED
        self.should_exit.set()

    async def _publish_event(self, event: dict[str, Any]) -> None:
        if self.bus.connected:
            data = encode_event(self.settings.host_id, event, time.time())
            await self.bus.publish(self.subjects.event(self.settings.host_id), data)
        self.heartbeat.poke()

    async def _on_reconnect(self) -> None:
        await self._send_unsent_ack()
        self.supervisor.kick()
        self.latest.kick()
        self.events.kick()
        self.convergence.request_resync()
        self.config.follower.request()
        self.plugin_state.follower.request()
        self.heartbeat.poke()

    async def _bus_service(self) -> None:
        """Connect (retrying with jittered backoff), subscribe, then heartbeat.

        It runs beside convergence, so an agent whose NATS is unreachable still converges to
        the desired state in etcd.
        """
        try:
            await self.bus.connect(stop=self.should_exit)
        except BusUnavailable:
            return  # shutting down before NATS was reachable
        await self.commands.subscribe()
        self.bus_ready.set()
        await self._send_unsent_ack()
        self.log.info("bus_ready", mode=self.mode.value)
        await self.heartbeat.run()

    async def _events_service(self) -> None:
        try:
            await self.events.run()
        finally:
            self.events.save_unsent()  # queued records wait in the spool for the next start

    async def run(self) -> int:
        """Run until `should_exit`; returns the process exit code."""
        try:
            await self.startup()
            async with asyncio.TaskGroup() as tg:
                await self.main_loop(tg)
        finally:
            await self.shutdown()
        self.log.info("stopped", exit_code=self.exit_code)
        return self.exit_code

    async def startup(self) -> None:
        if self._owns_store:
            await self.store.open()
        self.breaker.setup()
        self.log.info("starting", version=__version__, groups=list(self.settings.groups),
                      mode=self.mode.value, servers=list(self.settings.nats.servers))  # fmt: skip

    async def main_loop(self, tg: asyncio.TaskGroup) -> None:
        """Every service as a named task; on `should_exit`, the bounded goodbye, then cancel."""
        services = {
            "convergence": self.convergence.run,
            "config": self.config.run,
            "plugins": self.supervisor.run,
            "plugin-state": self.plugin_state.run,
            "breaker": self.breaker.run,
            "inventory-out": self.latest.run,
            "events-out": self._events_service,
            "storage": self.storage.run,
            "bus": self._bus_service,
        }
        tasks = [tg.create_task(run(), name=name) for name, run in services.items()]
        self.log.info("running", mode=self.mode.value)
        await self.should_exit.wait()
        self.run_mode.exit()
        if self.bus.connected:
            await self._graceful()
        for t in tasks:
            t.cancel()

    async def shutdown(self) -> None:
        """After every task ended (plugins are stopped by now): cgroups, descriptors, clients."""
        self.breaker.teardown()
        self.fd_reserve.close()
        await self._close()

    async def _graceful(self) -> None:
        """Say goodbye so the controller marks us offline at once; bounded by the deadline.

        A second signal cancels the task running `run()` (see main), which skips this.
        """
        try:
            await wait_timeout(self._say_bye(), self.settings.shutdown_timeout_s)
        except TimeoutError:
            self.log.warning("bye_timed_out")

    async def _say_bye(self) -> None:
        try:
            await self.heartbeat.send(bye=True)
            await self.bus.flush(timeout=self.settings.shutdown_timeout_s)
        except Exception as exc:
            self.log.warning("bye_failed", error=str(exc))

    async def _close(self) -> None:
        timeout = 0.5 if self.force_exit.is_set() else self.settings.shutdown_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await self.bus.close(timeout)
        except TimeoutError:
            self.log.warning("close_timed_out", what="nats", timeout_s=timeout)
        if not self._owns_store:
            return
        try:
            async with asyncio.timeout(timeout):
                await self.store.close()
        except TimeoutError:
            self.log.warning("close_timed_out", what="etcd", timeout_s=timeout)
