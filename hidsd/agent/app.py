"""The agent: one `Agent.run()` owns every task through one TaskGroup.

Lifecycle, as uvicorn does it: startup (state file, bus, store), main loop (services in the
TaskGroup), bounded shutdown (a `bye` heartbeat, flush, close) when `should_exit` is set; a
second signal sets `force_exit` and skips the graceful part.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
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
from hidsd.agent.plugincontrol import PluginControl, PluginControlService
from hidsd.agent.settings import AgentSettings
from hidsd.agent.statefile import StateFile
from hidsd.base.aio import wait_timeout
from hidsd.base.errors import BusUnavailable, ProtocolError
from hidsd.base.hostinfo import SelfUsage, host_facts
from hidsd.base.storage import FdReserve, StorageHealth, StorageStatus
from hidsd.bus.store import Store
from hidsd.bus.transport import Bus, BusOptions
from hidsd.plugins.supervisor import Supervisor
from hidsd.plugins.telemetry import LatestPublisher
from hidsd.wire.commands import AckStatus, Command, CommandKind, RunMode, command_plugin
from hidsd.wire.heartbeat import Heartbeat, encode_heartbeat
from hidsd.wire.names import KeyLayout, Subjects
from hidsd.wire.rpc import encode_event
from hidsd.wire.signing import TrustStore


class WorkGate:
    """Whether HIDS work may run. The kill switch closes it; work waits on `wait_running`."""

    def __init__(self, running: bool) -> None:
        self._running = asyncio.Event()
        if running:
            self._running.set()

    @property
    def running(self) -> bool:
        return self._running.is_set()

    def set(self, running: bool) -> None:
        if running:
            self._running.set()
        else:
            self._running.clear()

    async def wait_running(self) -> None:
        await self._running.wait()


class HeartbeatService:
    """Publishes a jittered heartbeat (E1, E4), and one at once when the run mode changes."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.seq = 0
        self._now = asyncio.Event()
        self._usage = SelfUsage()
        self._facts = host_facts()
        self._rng = random.Random()
        self.failures = 0

    def poke(self) -> None:
        self._now.set()

    def build(self, bye: bool = False) -> Heartbeat:
        a = self.agent
        cpu, rss = self._usage.sample()
        self.seq += 1
        state = a.policy.state
        rejections = a.policy.counters()
        rejections.update({f"bus.{k}": v for k, v in a.bus.counters.items()})
        return Heartbeat(
            host=a.settings.host_id,
            version=__version__,
            groups=a.settings.groups,
            mode=a.mode,
            applied_rev=state.applied_rev,
            held=state.held,
            interval_s=a.heartbeat_s,
            seq=self.seq,
            sent_at=time.time(),
            uptime_s=round(time.monotonic() - a.started, 3),
            cpu_pct=round(cpu, 2),
            rss_bytes=rss,
            facts={**self._facts, "store_ok": a.convergence.store_ok},
            rejections=rejections,
            bye=bye,
            config=a.config.report(),
            plugins=a.supervisor.stats(),
            breaker=a.breaker.report(),
            outputs={"inventory": a.latest.report()},
            storage=a.health.report(),
            clock=a.policy.clock_report(),
        )

    async def send(self, bye: bool = False) -> None:
        a = self.agent
        a.log.debug("heartbeat", seq=self.seq + 1, mode=a.mode.value, bye=bye)
        if a.bus.connected:
            await a.bus.publish(
                a.subjects.heartbeat(a.settings.host_id), encode_heartbeat(self.build(bye))
            )

    async def run(self) -> None:
        while True:
            self._now.clear()  # before sending: a poke during the send is not lost
            try:
                await self.send()
            except (OSError, BusUnavailable) as exc:
                # out of descriptors or the bus mid-reconnect: the next beat tries again
                self.failures += 1
                self.agent.log.warning("heartbeat_failed", error=str(exc))
            interval = self.agent.heartbeat_s  # hot-reloadable
            with contextlib.suppress(TimeoutError):
                await wait_timeout(self._now.wait(), interval * self._rng.uniform(0.9, 1.1))


class StorageService:
    """Watches the data dir and retries the saves that failed, so storage recovers by itself
    once space (or write access, or descriptors) is back; the heartbeat says what failed."""

    def __init__(self, agent: Agent, period_s: float = 2.0) -> None:
        self.agent = agent
        self.period_s = period_s
        self._reported = StorageStatus.OK

    def tick(self) -> None:
        a = self.agent
        before = self._reported
        a.health.probe()
        a.fd_reserve.take()
        a.state_file.retry()
        a.config.retry_last_good()
        a.breaker.retry_save()
        after = self._reported = a.health.status
        if after is not before:
            r = a.health.report()
            log = a.log.info if after.value == "ok" else a.log.error
            log("storage_status", old=before.value, status=after.value, path=r.path,
                error=r.error)  # fmt: skip
            a.heartbeat.poke()

    async def run(self) -> None:
        while True:
            try:
                self.tick()
            except OSError as exc:  # nothing here may end the agent
                self.agent.log.warning("storage_check_failed", error=str(exc))
            await asyncio.sleep(self.period_s)


class Agent:
    """The hidsd agent process."""

    def __init__(self, settings: AgentSettings, ping_interval_s: int = 20) -> None:
        self.settings = settings
        self.log: Any = structlog.get_logger("hidsd.agent").bind(host=settings.host_id)
        self.should_exit = asyncio.Event()
        self.force_exit = asyncio.Event()
        self.started = time.monotonic()
        self.subjects = Subjects(settings.subject_prefix)
        self.keys = KeyLayout(settings.key_prefix)
        self.health = StorageHealth(settings.data_dir)
        self.fd_reserve = FdReserve()
        self.state_file = StateFile(
            settings.data_dir, settings.runtime_dir, self.health, self.fd_reserve,
            host=settings.host_id, log=self.log.warning,
        )  # fmt: skip
        self.policy = ControlPolicy(
            host=settings.host_id,
            groups=settings.groups,
            trust=TrustStore.from_b64(list(settings.trusted_keys)),
            max_command_bytes=settings.max_command_bytes,
        )
        self._load_state()
        self.gate = WorkGate(self.policy.state.mode is RunMode.RUNNING)
        self.exiting = False
        n = settings.nats
        self.bus = Bus(
            BusOptions(
                servers=n.servers,
                name=f"hidsd:{settings.host_id}",
                user=n.user,
                password=n.password,
                token=n.token,
                reconnect_base_s=n.reconnect_base_s,
                reconnect_max_s=n.reconnect_max_s,
                connect_timeout_s=n.connect_timeout_s,
                ping_interval_s=ping_interval_s,
            ),
            on_reconnect=self._on_reconnect,
        )
        e = settings.etcd
        self.store = Store(e.endpoints, e.user, e.password, e.timeout_s)
        self.plugin_control = PluginControl(self.policy)
        self.commands = CommandService(
            self.bus,
            self.policy,
            self.subjects,
            self._on_change,
            self._on_plugin_command,
            self._on_time_refusal,
        )
        self.convergence = ConvergenceService(
            self.store,
            self.policy,
            self.keys,
            settings.resync_s,
            self._on_store_decision,
            watch=settings.watch,
        )
        self.heartbeat_s = settings.heartbeat_s
        from hidsd.wire.records import DataType

        self.latest = LatestPublisher(settings.host_id, self._publish_telemetry)
        inv_subject = self.subjects.inventory(settings.host_id)
        self.supervisor = Supervisor(
            settings.host_id,
            lambda name: self.subjects.telemetry(settings.host_id, name),
            settings.data_dir,
            self._publish_telemetry,
            routes={DataType.PACKAGES_STATE: lambda plugin, frame: self.latest.offer(
                inv_subject, plugin, frame)},
            health=self.health,
        )  # fmt: skip
        self.supervisor.set_allowed(self.gate.running)
        self.breaker = BreakerService(
            self.supervisor, settings.data_dir, settings.cgroups, settings.cgroup_name,
            self._on_breaker_event, self._on_breaker_exit,
        )  # fmt: skip
        self.exit_code = 0
        self._events_seq = 0
        self._events_epoch = time.time_ns()
        # built early: services poke it (it reads the agent only when a heartbeat is built)
        self.heartbeat = HeartbeatService(self)
        self.config = ConfigService(
            self.store, self.keys, settings.host_id, settings.groups, settings.data_dir,
            base={"log_level": settings.log_level, "heartbeat_s": settings.heartbeat_s,
                  "resync_s": settings.resync_s},
            on_apply=self._apply_config, on_reject=self._publish_event,
            period_s=lambda: self.convergence.resync_s, watch=settings.watch,
            on_status=self.heartbeat.poke,
        )  # fmt: skip
        self.plugin_state = PluginControlService(
            self.store, self.keys, self.plugin_control, self.supervisor.set_overrides,
            self._on_plugin_store_decision, lambda: self.convergence.resync_s,
            watch=settings.watch,
        )  # fmt: skip
        self._unsent_ack: Decision | None = None
        self.config.health = self.health
        self.breaker.health = self.health
        self.config.load_last_good()
        self.storage = StorageService(self)

    @property
    def mode(self) -> RunMode:
        return RunMode.EXITING if self.exiting else self.policy.state.mode

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
        self.gate.set(state.mode is RunMode.RUNNING)
        self.supervisor.set_allowed(state.mode is RunMode.RUNNING)
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
        if self.bus.connected:
            from hidsd.wire import frames
            from hidsd.wire.records import DataType

            self._events_seq += 1
            body = frames.frame(DataType.AGENT_EVENT, msgpack.packb(event), time.time_ns())
            headers = frames.batch_headers(self.settings.host_id, "agent", self._events_epoch,
                                           self._events_seq, 1)  # fmt: skip
            await self.bus.js_publish(
                self.subjects.telemetry(self.settings.host_id, "agent"), body, headers
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
        await self._send_unsent_ack()
        self.log.info("bus_ready", mode=self.mode.value)
        await self.heartbeat.run()

    async def run(self) -> int:
        """Run until `should_exit`; returns the process exit code."""
        await self.store.open()
        self.breaker.setup()
        self.log.info("starting", version=__version__, groups=list(self.settings.groups),
                      mode=self.mode.value, servers=list(self.settings.nats.servers))  # fmt: skip
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self.convergence.run(), name="convergence"),
                    tg.create_task(self.config.run(), name="config"),
                    tg.create_task(self.supervisor.run(), name="plugins"),
                    tg.create_task(self.plugin_state.run(), name="plugin-state"),
                    tg.create_task(self.breaker.run(), name="breaker"),
                    tg.create_task(self.latest.run(), name="inventory-out"),
                    tg.create_task(self.storage.run(), name="storage"),
                    tg.create_task(self._bus_service(), name="bus"),
                ]
                self.log.info("running", mode=self.mode.value)
                await self.should_exit.wait()
                self.exiting = True
                if self.bus.connected:
                    await self._graceful()
                for t in tasks:
                    t.cancel()
        finally:
            self.breaker.teardown()  # plugins are stopped by now
            self.fd_reserve.close()
            await self._close()
        self.log.info("stopped", exit_code=self.exit_code)
        return self.exit_code

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
        try:
            async with asyncio.timeout(timeout):
                await self.store.close()
        except TimeoutError:
            self.log.warning("close_timed_out", what="etcd", timeout_s=timeout)
