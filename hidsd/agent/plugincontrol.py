"""Operator control of plugins (R12): start/stop as signed desired state, restart as a one-off.

Like the kill switch: `hidsctl plugins stop NAME --host H` writes a signed record under
`plugins/<scope>/<NAME>` in etcd, then broadcasts the signed command with that revision. Per
plugin, the newest revision across fleet, group and host wins and overrides the config's
`enabled`; a command older than what the agent applied for that plugin is `superseded`.
The agent converges from etcd on start, on reconnect, on its period and through watches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from hidsd.agent.control import DETAIL_ALREADY_APPLIED, DETAIL_CONVERGED, ControlPolicy, Decision
from hidsd.agent.follow import Follower
from hidsd.base.errors import CommandRejected, ProtocolError
from hidsd.bus.store import KV, WatchEvent
from hidsd.wire.commands import PLUGIN_ACTIONS, AckStatus, Command, CommandKind, command_plugin
from hidsd.wire.names import KeyLayout

Overrides = dict[str, bool]  # plugin -> wanted running


@dataclass
class PluginControl:
    """Per-plugin revision ordering and the overrides it yields."""

    policy: ControlPolicy
    applied: dict[str, tuple[int, str, bool]] = field(default_factory=dict)  # rev, cmd, run

    def overrides(self) -> Overrides:
        return {name: run for name, (_, _, run) in self.applied.items()}

    def apply_command(self, cmd: Command) -> tuple[Decision, bool]:
        """A bus command; returns the ack decision and whether overrides changed."""
        name = command_plugin(cmd)
        state = self.policy.state
        if cmd.kind in PLUGIN_ACTIONS:
            return Decision(state, False, AckStatus.APPLIED, cmd.id, cmd.rev, cmd.kind.value), False
        rev, cmd_id, _ = self.applied.get(name, (0, "", True))
        if cmd.rev == rev and cmd.id == cmd_id:
            return Decision(
                state, False, AckStatus.APPLIED, cmd.id, cmd.rev, DETAIL_ALREADY_APPLIED
            ), False
        if cmd.rev <= rev:
            self.policy.rejections["stale_revision"] += 1
            detail = f"{name}: revision {cmd.rev} is older than applied {rev}"
            return Decision(state, False, AckStatus.SUPERSEDED, cmd.id, cmd.rev, detail), False
        self.applied[name] = (cmd.rev, cmd.id, cmd.kind is CommandKind.PLUGIN_START)
        return Decision(state, True, AckStatus.APPLIED, cmd.id, cmd.rev, name), True

    def apply_records(self, records: Sequence[tuple[Command, int]]) -> list[Decision]:
        """Records from etcd: per plugin, the newest revision wins if newer than applied."""
        best: dict[str, tuple[Command, int]] = {}
        for cmd, rev in records:
            try:
                name = command_plugin(cmd)
            except ProtocolError:
                self.policy.rejections["malformed"] += 1
                continue
            if name not in best or rev > best[name][1]:
                best[name] = (cmd, rev)
        out = []
        for name, (cmd, rev) in best.items():
            if rev > self.applied.get(name, (0, "", True))[0]:
                self.applied[name] = (rev, cmd.id, cmd.kind is CommandKind.PLUGIN_START)
                out.append(Decision(self.policy.state, True, AckStatus.APPLIED, cmd.id, rev,
                                    f"{name}: {DETAIL_CONVERGED}"))  # fmt: skip
        return out


class PluginControlService:
    """Follows the plugin desired-state prefixes of one agent in etcd."""

    def __init__(
        self,
        store: Any,
        keys: KeyLayout,
        control: PluginControl,
        on_overrides: Callable[[Overrides], None],
        on_ack: Callable[[Decision], Any],
        period_s: Callable[[], float],
        watch: bool = True,
    ) -> None:
        self.store = store
        self.control = control
        self.on_overrides = on_overrides
        self.on_ack = on_ack
        p = control.policy
        self.prefixes = keys.plugin_applicable(p.host, p.groups)
        self.log: Any = structlog.get_logger("hidsd.plugincontrol").bind(host=p.host)
        self.follower = Follower(
            store, self.prefixes, self.resync, self._on_events, period_s, self.log,
            watch=watch, prefixes=True,
        )  # fmt: skip

    def _verify(self, kvs: Sequence[KV]) -> list[tuple[Command, int]]:
        out = []
        for kv in kvs:
            try:
                cmd = self.control.policy.verify_record(kv.value)
            except CommandRejected as exc:
                self.log.error("plugin_state_rejected", key=kv.key, reason=exc.reason)
                continue
            if cmd.kind not in (CommandKind.PLUGIN_START, CommandKind.PLUGIN_STOP):
                self.control.policy.rejections["malformed"] += 1
                continue
            out.append((cmd, kv.mod_revision))
        return out

    async def resync(self, why: str) -> int:
        kvs, revision = await self.store.get_prefixes(self.prefixes)
        await self._apply(self._verify(kvs))
        return int(revision)

    async def _on_events(self, events: list[WatchEvent]) -> None:
        del events  # re-read the prefixes at one revision: simple and consistent
        await self.resync("watch")

    async def _apply(self, records: list[tuple[Command, int]]) -> None:
        decisions = self.control.apply_records(records)
        if decisions:
            self.on_overrides(self.control.overrides())
        for d in decisions:
            await self.on_ack(d)

    async def run(self) -> None:
        await self.follower.run()
