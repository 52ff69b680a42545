"""Control policy: which commands and desired states an agent applies, and in what order.

Pure logic (no I/O), so every rule is testable without a bus. The rules:

* A command must be signed by a trusted key, unexpired, not replayed and addressed to this
  agent; otherwise it is rejected and counted by reason. Validity is judged by the agent's
  own clock, which can be wrong: a verified command refused as expired or not yet valid is a
  `TimeRefusal` (acked as rejected, and the agent re-reads etcd at once, where a recorded
  command needs no clock), and the skew its `issued_at` shows is reported.
* Revisions order everything: the agent applies a command or desired state only if its etcd
  revision is newer than what it has applied. An older one is `superseded` (and counted as
  `stale_revision`); the same one again is acknowledged as applied (the watch or a resync can
  beat the broadcast).
* Across scopes the newest revision wins: a host-level resume written after a fleet stop
  resumes that host; a later fleet stop stops it again.
* An emergency stop broadcast while etcd was down (`unrecorded`) carries no revision. The
  agent holds it until a desired state is written that is both a newer revision and issued
  after the stop, so a resync against an older etcd state cannot undo it.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import msgpack

from hidsd.base.errors import CommandRejected, ProtocolError
from hidsd.wire.commands import (
    CLOCK_TOLERANCE_S,
    MAX_COMMAND_TTL_S,
    AckStatus,
    Command,
    CommandKind,
    RunMode,
    desired_mode,
)
from hidsd.wire.heartbeat import ClockReport
from hidsd.wire.names import FLEET_TARGET, Scope
from hidsd.wire.signing import RejectReason, TrustStore

#: reasons that depend on the agent's clock
TIME_REASONS = (RejectReason.EXPIRED, RejectReason.NOT_YET_VALID)


class TimeRefusal(CommandRejected):
    """A verified command refused by the agent's clock (expired or not yet valid): it names the
    command, so the agent can say so in an ack and look for it in etcd."""

    def __init__(self, reason: str, message: str, command: Command) -> None:
        super().__init__(reason, message, cmd_id=command.id)
        self.command = command


#: an ack's `detail` when the agent applied a desired state it read from etcd (a resync or its
#: watch), and when a broadcast repeats what it already applied (etcd's copy came first):
#: how an issuer tells which path reached a host first
DETAIL_CONVERGED = "converged from etcd"
DETAIL_ALREADY_APPLIED = "already applied"

#: Replay cache bound. Past it the oldest ids go; revision ordering still refuses replays.
REPLAY_CACHE_SIZE = 4096


class Source(StrEnum):
    """Where a decision came from: the NATS fast path or the etcd source of truth."""

    BUS = "bus"
    STORE = "store"


@dataclass(frozen=True, slots=True)
class ControlState:
    """What the agent has applied; persisted so a restart never goes back in time."""

    mode: RunMode = RunMode.RUNNING
    applied_rev: int = 0
    applied_cmd: str = ""
    held: bool = False
    held_cmd: str = ""
    held_issued_at: float = 0.0

    def to_bytes(self) -> bytes:
        data: bytes = msgpack.packb(
            {
                "mode": self.mode.value,
                "applied_rev": self.applied_rev,
                "applied_cmd": self.applied_cmd,
                "held": self.held,
                "held_cmd": self.held_cmd,
                "held_issued_at": self.held_issued_at,
            }
        )
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> ControlState:
        try:
            m = msgpack.unpackb(data, raw=False)
            mode = RunMode(m["mode"])
            if mode is RunMode.EXITING:
                mode = RunMode.RUNNING
            return cls(
                mode=mode,
                applied_rev=int(m["applied_rev"]),
                applied_cmd=str(m["applied_cmd"]),
                held=bool(m["held"]),
                held_cmd=str(m["held_cmd"]),
                held_issued_at=float(m["held_issued_at"]),
            )
        except Exception as exc:
            raise ProtocolError(f"state file is corrupt ({type(exc).__name__})") from exc


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one command or desired state: the new state and what to ack."""

    state: ControlState
    changed: bool
    ack_status: AckStatus | None
    cmd_id: str
    rev: int
    detail: str = ""


@dataclass(slots=True)
class DesiredRecord:
    """A verified desired-state value from etcd, with its key's mod_revision."""

    command: Command
    mod_revision: int


@dataclass(slots=True)
class ControlPolicy:
    """Applies verified commands and desired records to the control state."""

    host: str
    groups: tuple[str, ...]
    trust: TrustStore
    max_command_bytes: int
    state: ControlState = field(default_factory=ControlState)
    rejections: Counter[str] = field(default_factory=Counter)
    clock: Callable[[], float] = time.time
    #: agent clock minus the issuer's, at the newest verified command
    command_skew_s: float | None = None
    last_refusal: str = ""
    _seen: OrderedDict[str, float] = field(default_factory=OrderedDict)

    # ------------------------------------------------------------------ bus path

    def accept(self, data: bytes, now: float | None = None) -> Command:
        """Verify a command from the bus; raises CommandRejected (already counted), a
        TimeRefusal for a verified command that the clock refuses."""
        now = self.clock() if now is None else now
        try:
            cmd = self.trust.verify(data, self.max_command_bytes)
            try:
                self._check_fresh(cmd, now)
            except TimeRefusal:
                self._check_target(cmd)
                self._check_replay(cmd)
                self._observe_skew(cmd, now)
                raise
            self._check_target(cmd)
            self._check_replay(cmd)
            self._observe_skew(cmd, now)
        except CommandRejected as exc:
            self.rejections[exc.reason] += 1
            raise
        return cmd

    def _observe_skew(self, cmd: Command, now: float) -> None:
        """The command's issued_at against our clock, for commands newer than what we have
        applied (an old one replayed would show a skew that is not there)."""
        if cmd.rev >= self.state.applied_rev:
            self.command_skew_s = round(now - cmd.issued_at, 3)

    def _check_fresh(self, cmd: Command, now: float) -> None:
        if cmd.expires_at - cmd.issued_at > MAX_COMMAND_TTL_S:
            raise CommandRejected(
                RejectReason.EXPIRED, "command validity window is too long", cmd_id=cmd.id
            )
        if now > cmd.expires_at:
            self._refuse(cmd, RejectReason.EXPIRED,
                         f"expired {now - cmd.expires_at:.1f}s ago by this host's clock "
                         f"(issued {now - cmd.issued_at:+.1f}s from it)")  # fmt: skip
        if cmd.issued_at - now > CLOCK_TOLERANCE_S:
            self._refuse(cmd, RejectReason.NOT_YET_VALID,
                         f"issued {cmd.issued_at - now:.1f}s in the future by this host's "
                         "clock")  # fmt: skip

    def _refuse(self, cmd: Command, reason: str, message: str) -> None:
        self.last_refusal = f"{cmd.id}: {reason}: {message}"
        raise TimeRefusal(reason, message, cmd)

    def clock_report(self) -> ClockReport:
        return ClockReport(
            command_skew_s=self.command_skew_s,
            refused_expired=self.rejections.get(RejectReason.EXPIRED, 0),
            refused_not_yet_valid=self.rejections.get(RejectReason.NOT_YET_VALID, 0),
            last_refusal=self.last_refusal,
        )

    def addressed_to_me(self, cmd: Command) -> bool:
        if cmd.scope is Scope.FLEET:
            return cmd.target == FLEET_TARGET
        if cmd.scope is Scope.GROUP:
            return cmd.target in self.groups
        return cmd.target == self.host

    def _check_target(self, cmd: Command) -> None:
        if not self.addressed_to_me(cmd):
            raise CommandRejected(
                RejectReason.WRONG_TARGET,
                f"command for {cmd.scope.value} {cmd.target!r} is not addressed to this agent",
                cmd_id=cmd.id,
            )

    def _check_replay(self, cmd: Command) -> None:
        if cmd.id in self._seen:
            raise CommandRejected(RejectReason.REPLAYED, "command id seen before", cmd_id=cmd.id)
        self._seen[cmd.id] = cmd.expires_at
        while len(self._seen) > REPLAY_CACHE_SIZE:
            self._seen.popitem(last=False)

    def apply_command(self, cmd: Command) -> Decision:
        """Apply an accepted run-mode command under revision ordering."""
        s = self.state
        if cmd.unrecorded:
            if cmd.kind is not CommandKind.STOP:
                self.rejections[RejectReason.MALFORMED] += 1
                return Decision(
                    s, False, AckStatus.REJECTED, cmd.id, 0, "only stop may be unrecorded"
                )
            new = replace(
                s, mode=RunMode.STOPPED, held=True, held_cmd=cmd.id, held_issued_at=cmd.issued_at
            )
            return self._decide(
                new, AckStatus.APPLIED, cmd.id, 0, "emergency stop held (not in etcd)"
            )
        if cmd.rev == s.applied_rev and cmd.id == s.applied_cmd:
            return Decision(s, False, AckStatus.APPLIED, cmd.id, cmd.rev, DETAIL_ALREADY_APPLIED)
        if cmd.rev <= s.applied_rev or (s.held and cmd.issued_at < s.held_issued_at):
            self.rejections[RejectReason.STALE_REVISION] += 1
            return Decision(
                s,
                False,
                AckStatus.SUPERSEDED,
                cmd.id,
                cmd.rev,
                f"revision {cmd.rev} is older than applied {s.applied_rev}"
                if cmd.rev <= s.applied_rev
                else "an emergency stop issued later is held",
            )
        new = ControlState(mode=desired_mode(cmd.kind), applied_rev=cmd.rev, applied_cmd=cmd.id)
        return self._decide(new, AckStatus.APPLIED, cmd.id, cmd.rev)

    # ------------------------------------------------------------------ store path

    def verify_record(self, data: bytes) -> Command:
        """Verify a desired-state value read from etcd (signature and target, no expiry)."""
        try:
            cmd = self.trust.verify(data, self.max_command_bytes)
            self._check_target(cmd)
        except CommandRejected as exc:
            self.rejections[exc.reason] += 1
            raise
        return cmd

    def apply_desired(self, records: list[DesiredRecord]) -> Decision | None:
        """Converge to the newest applicable desired state, if it is newer than ours."""
        if not records:
            return None
        best = max(records, key=lambda r: r.mod_revision)
        s = self.state
        cmd = best.command
        if best.mod_revision <= s.applied_rev:
            return None
        if s.held and cmd.issued_at < s.held_issued_at:
            return None
        new = ControlState(
            mode=desired_mode(cmd.kind), applied_rev=best.mod_revision, applied_cmd=cmd.id
        )
        return self._decide(new, AckStatus.APPLIED, cmd.id, best.mod_revision, DETAIL_CONVERGED)

    def _decide(
        self, new: ControlState, status: AckStatus, cmd_id: str, rev: int, detail: str = ""
    ) -> Decision:
        changed = new != self.state
        self.state = new
        return Decision(new, changed, status, cmd_id, rev, detail)

    def counters(self) -> dict[str, int]:
        return {reason: self.rejections.get(reason, 0) for reason in RejectReason.ALL}

    def describe(self) -> dict[str, Any]:
        s = self.state
        return {"mode": s.mode.value, "applied_rev": s.applied_rev, "held": s.held}
