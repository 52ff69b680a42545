"""The command path: receive, verify, apply, persist, ack. Kept lean; it is the kill switch.

The benchmark drives this same class with thousands of in-process agents, so nothing here may
assume it is alone in the process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from nats.aio.msg import Msg

from hidsd.agent.control import ControlPolicy, ControlState, Decision, TimeRefusal
from hidsd.base.errors import CommandRejected, ProtocolError
from hidsd.bus.transport import Bus
from hidsd.wire.commands import PLUGIN_KINDS, Ack, AckStatus, Command, encode_ack
from hidsd.wire.names import Subjects

StateListener = Callable[[ControlState, Decision], None]
PluginHandler = Callable[[Command], Decision]
TimeRefusalHandler = Callable[[Command], None]


class CommandService:
    """Subscribes to the fleet, group and host command subjects of one agent."""

    def __init__(
        self,
        bus: Bus,
        policy: ControlPolicy,
        subjects: Subjects,
        on_change: StateListener,
        on_plugin: PluginHandler | None = None,
        on_time_refusal: TimeRefusalHandler | None = None,
    ) -> None:
        self.on_plugin = on_plugin
        self.on_time_refusal = on_time_refusal
        self.bus = bus
        self.policy = policy
        self.subjects = subjects
        self.on_change = on_change
        self.handled = 0
        self._log: Any = structlog.get_logger("hidsd.commands").bind(host=policy.host)

    def subject_list(self) -> list[str]:
        s = self.subjects
        p = self.policy
        return [s.cmd_all(), *(s.cmd_group(g) for g in p.groups), s.cmd_host(p.host)]

    async def subscribe(self) -> None:
        for subject in self.subject_list():
            await self.bus.subscribe(subject, self.handle)

    async def handle(self, msg: Msg) -> None:
        """One command off the bus. Never raises: bad input is counted and logged."""
        self.handled += 1
        try:
            cmd = self.policy.accept(msg.data)
        except TimeRefusal as exc:
            # Signed and for us, but our clock disagrees. Say so (the issuer names us), and
            # read etcd now: a recorded command applies from there whatever the clock says.
            self._log.warning("command_refused_by_clock", reason=exc.reason, detail=exc.message,
                              cmd_id=exc.command.id, skew_s=self.policy.command_skew_s)  # fmt: skip
            if self.on_time_refusal is not None:
                self.on_time_refusal(exc.command)
            st, c = self.policy.state, exc.command
            if st.applied_cmd == c.id and st.applied_rev == c.rev:  # etcd's copy came first
                detail = f"already applied from etcd (this host's clock: {exc.message})"
                await self.ack(Decision(st, False, AckStatus.APPLIED, c.id, c.rev, detail),
                               exc.reason)  # fmt: skip
                return
            refused = Decision(st, False, AckStatus.REJECTED, c.id, c.rev, exc.message)
            await self.ack(refused, exc.reason)
            return
        except CommandRejected as exc:
            self._log.warning("command_rejected", reason=exc.reason, detail=exc.message,
                              subject=msg.subject)  # fmt: skip
            return
        if cmd.kind in PLUGIN_KINDS:
            if self.on_plugin is None:
                return  # this process runs no plugins (benchmarks' lite agents)
            try:
                decision = self.on_plugin(cmd)
            except ProtocolError as exc:
                self.policy.rejections["malformed"] += 1
                self._log.warning("command_rejected", reason="malformed", detail=exc.message)
                return
            await self.ack(decision)
            return
        decision = self.policy.apply_command(cmd)
        if decision.changed:
            self.on_change(decision.state, decision)
        await self.ack(decision)

    async def ack(self, decision: Decision, reason: str = "") -> None:
        if decision.ack_status is None:
            return
        ack = Ack(
            cmd_id=decision.cmd_id,
            host=self.policy.host,
            status=decision.ack_status,
            rev=decision.rev,
            detail=decision.detail,
            mode=decision.state.mode,
            reason=reason,
            sent_at=self.policy.clock(),
        )
        await self.bus.publish(self.subjects.ack(decision.cmd_id), encode_ack(ack))
