"""hidsd.agent.control: the control policy's ordering, replay, targeting and hold rules."""

from __future__ import annotations

import itertools
import math
from typing import Any

import msgpack
import pytest

from hidsd.agent.control import (
    DETAIL_ALREADY_APPLIED,
    DETAIL_CONVERGED,
    REPLAY_CACHE_SIZE,
    ControlPolicy,
    ControlState,
    DesiredRecord,
    TimeRefusal,
)
from hidsd.base.errors import CommandRejected, ProtocolError
from hidsd.wire.commands import (
    CLOCK_TOLERANCE_S,
    MAX_COMMAND_BYTES,
    MAX_COMMAND_TTL_S,
    AckStatus,
    Command,
    CommandKind,
    RunMode,
    encode_command_body,
)
from hidsd.wire.names import FLEET_TARGET, Scope
from hidsd.wire.signing import OperatorKey, RejectReason, TrustStore, encode_public_key

NOW = 1_000_000.0
HOST = "web-1"
GROUPS = ("web", "eu")

KEY = OperatorKey.generate()
_ids = itertools.count(1)


def cmd(
    kind: CommandKind = CommandKind.STOP,
    rev: int = 1,
    scope: Scope = Scope.FLEET,
    target: str = FLEET_TARGET,
    issued_at: float = NOW,
    ttl: float = 60.0,
    cmd_id: str | None = None,
    args: dict[str, Any] | None = None,
) -> Command:
    return Command(
        id=cmd_id or f"c-{next(_ids)}",
        kind=kind,
        scope=scope,
        target=target,
        rev=rev,
        issued_at=issued_at,
        expires_at=issued_at + ttl,
        args=args or {},
    )


def sign(c: Command) -> bytes:
    return KEY.sign_command(c)


def policy(host: str = HOST, groups: tuple[str, ...] = GROUPS) -> ControlPolicy:
    trust = TrustStore.from_b64([encode_public_key(KEY.public_key)])
    return ControlPolicy(host=host, groups=groups, trust=trust, max_command_bytes=MAX_COMMAND_BYTES)


def reject_reason(p: ControlPolicy, data: bytes, now: float = NOW) -> str:
    with pytest.raises(CommandRejected) as ei:
        p.accept(data, now=now)
    return ei.value.reason


def record(c: Command, mod_revision: int) -> DesiredRecord:
    return DesiredRecord(command=c, mod_revision=mod_revision)


# --------------------------------------------------------------------------- bus path


def test_accept_and_apply_stop() -> None:
    p = policy()
    c = cmd(CommandKind.STOP, rev=5)
    accepted = p.accept(sign(c), now=NOW)
    assert accepted == c
    d = p.apply_command(accepted)
    assert d.ack_status is AckStatus.APPLIED
    assert d.changed
    assert d.cmd_id == c.id
    assert d.rev == 5
    assert d.state.mode is RunMode.STOPPED
    assert p.state == ControlState(mode=RunMode.STOPPED, applied_rev=5, applied_cmd=c.id)
    assert sum(p.counters().values()) == 0


def test_resume_with_higher_revision_runs() -> None:
    p = policy()
    p.apply_command(p.accept(sign(cmd(CommandKind.STOP, rev=5)), now=NOW))
    resume = cmd(CommandKind.RESUME, rev=6)
    d = p.apply_command(p.accept(sign(resume), now=NOW))
    assert d.ack_status is AckStatus.APPLIED
    assert d.changed
    assert p.state.mode is RunMode.RUNNING
    assert p.state.applied_rev == 6
    assert p.state.applied_cmd == resume.id
    assert p.describe() == {"mode": "running", "applied_rev": 6, "held": False}


@pytest.mark.parametrize("older_rev", [4, 5])
def test_older_or_equal_revision_is_superseded(older_rev: int) -> None:
    p = policy()
    p.apply_command(p.accept(sign(cmd(CommandKind.STOP, rev=5)), now=NOW))
    old = cmd(CommandKind.RESUME, rev=older_rev)
    d = p.apply_command(p.accept(sign(old), now=NOW))
    assert d.ack_status is AckStatus.SUPERSEDED
    assert not d.changed
    assert d.rev == older_rev
    assert "older than applied 5" in d.detail
    assert p.state.mode is RunMode.STOPPED
    assert p.state.applied_rev == 5
    assert p.counters()[RejectReason.STALE_REVISION] == 1


def test_replayed_id_via_bus() -> None:
    p = policy()
    data = sign(cmd(CommandKind.STOP, rev=5))
    p.apply_command(p.accept(data, now=NOW))
    assert reject_reason(p, data) == RejectReason.REPLAYED
    assert p.counters()[RejectReason.REPLAYED] == 1
    # The rejection is about the id, even when the bytes differ (re-signed copy).
    again = cmd(CommandKind.RESUME, rev=9, cmd_id=p.state.applied_cmd)
    assert reject_reason(p, sign(again)) == RejectReason.REPLAYED
    assert p.counters()[RejectReason.REPLAYED] == 2
    assert p.state.mode is RunMode.STOPPED


def test_rejected_command_is_not_remembered_as_seen() -> None:
    p = policy()
    c = cmd(CommandKind.STOP, rev=5, scope=Scope.HOST, target="other")
    assert reject_reason(p, sign(c)) == RejectReason.WRONG_TARGET
    assert reject_reason(p, sign(c)) == RejectReason.WRONG_TARGET
    assert p.counters()[RejectReason.REPLAYED] == 0


def test_replay_cache_is_bounded() -> None:
    p = policy()
    first = sign(cmd(rev=1))
    second = sign(cmd(rev=2))
    p.accept(first, now=NOW)
    p.accept(second, now=NOW)
    for i in range(REPLAY_CACHE_SIZE - 1):
        p.accept(sign(cmd(rev=3 + i)), now=NOW)
    # The oldest id fell out of the cache; the second is still remembered.
    assert reject_reason(p, second) == RejectReason.REPLAYED
    again = p.accept(first, now=NOW)
    # Evicted from the cache, a replay is still refused by revision ordering.
    p.apply_command(cmd(rev=10))
    d = p.apply_command(again)
    assert d.ack_status is AckStatus.SUPERSEDED
    assert p.state.applied_rev == 10


def test_store_applied_then_bus_same_rev_and_id_is_already_applied() -> None:
    p = policy()
    c = cmd(CommandKind.STOP, rev=12)
    first = p.apply_desired([record(cmd(CommandKind.STOP, rev=0, cmd_id=c.id), 12)])
    assert first is not None
    assert first.changed
    assert first.detail == DETAIL_CONVERGED == "converged from etcd"
    d = p.apply_command(p.accept(sign(c), now=NOW))
    assert d.ack_status is AckStatus.APPLIED
    assert d.detail == DETAIL_ALREADY_APPLIED == "already applied"
    assert not d.changed
    assert d.rev == 12
    assert p.counters()[RejectReason.STALE_REVISION] == 0


def test_same_rev_other_id_is_superseded() -> None:
    p = policy()
    p.apply_desired([record(cmd(CommandKind.STOP, rev=0), 12)])
    d = p.apply_command(p.accept(sign(cmd(CommandKind.RESUME, rev=12)), now=NOW))
    assert d.ack_status is AckStatus.SUPERSEDED
    assert p.state.mode is RunMode.STOPPED


def test_expired_command() -> None:
    p = policy()
    c = cmd(issued_at=NOW - 120, ttl=60)
    with pytest.raises(CommandRejected, match=r"expired 60\.0s ago") as ei:
        p.accept(sign(c), now=NOW)
    assert ei.value.reason == RejectReason.EXPIRED
    assert p.counters()[RejectReason.EXPIRED] == 1
    assert p.state == ControlState()


def test_not_yet_expired_at_the_deadline() -> None:
    p = policy()
    c = cmd(issued_at=NOW - 60, ttl=60)
    assert p.accept(sign(c), now=NOW) == c


def test_validity_window_too_long() -> None:
    p = policy()
    c = cmd(ttl=MAX_COMMAND_TTL_S + 1)
    with pytest.raises(CommandRejected, match="too long") as ei:
        p.accept(sign(c), now=NOW)
    assert ei.value.reason == RejectReason.EXPIRED
    assert p.accept(sign(cmd(ttl=MAX_COMMAND_TTL_S)), now=NOW).expires_at == NOW + 3600


@pytest.mark.parametrize(
    ("issued_at", "expires_at"), [(NOW, math.nan), (math.nan, math.nan), (math.inf, math.inf)]
)
def test_non_finite_validity_window(issued_at: float, expires_at: float) -> None:
    # Non-finite times would make every expiry comparison false: refused at decode.
    p = policy()
    c = Command("c-nan", CommandKind.STOP, Scope.FLEET, "*", 1, issued_at, expires_at, {})
    assert reject_reason(p, sign(c), now=NOW + 10 * MAX_COMMAND_TTL_S) == RejectReason.MALFORMED


@pytest.mark.parametrize(
    ("scope", "target"),
    [
        (Scope.GROUP, "db"),
        (Scope.HOST, "web-2"),
        (Scope.HOST, "web"),  # a group name is not a host
        (Scope.GROUP, HOST),  # the host name is not a group
    ],
)
def test_wrong_target(scope: Scope, target: str) -> None:
    p = policy()
    with pytest.raises(CommandRejected) as ei:
        p.accept(sign(cmd(scope=scope, target=target)), now=NOW)
    assert ei.value.reason == RejectReason.WRONG_TARGET
    assert p.counters()[RejectReason.WRONG_TARGET] == 1


def test_fleet_target_other_than_star_is_not_addressed_to_me() -> None:
    # The decoder refuses such bytes (MALFORMED); the policy refuses the object too.
    p = policy()
    assert not p.addressed_to_me(cmd(scope=Scope.FLEET, target="web-1"))
    assert p.addressed_to_me(cmd(scope=Scope.FLEET, target=FLEET_TARGET))
    assert reject_reason(p, sign(cmd(scope=Scope.FLEET, target="web-1"))) == (
        RejectReason.MALFORMED
    )


@pytest.mark.parametrize(
    ("scope", "target"),
    [(Scope.FLEET, FLEET_TARGET), (Scope.GROUP, "web"), (Scope.GROUP, "eu"), (Scope.HOST, HOST)],
)
def test_matching_target_accepted(scope: Scope, target: str) -> None:
    p = policy()
    c = cmd(CommandKind.STOP, rev=3, scope=scope, target=target)
    assert p.apply_command(p.accept(sign(c), now=NOW)).state.mode is RunMode.STOPPED


def test_group_command_needs_membership() -> None:
    p = policy(groups=())
    assert reject_reason(p, sign(cmd(scope=Scope.GROUP, target="web"))) == (
        RejectReason.WRONG_TARGET
    )


def test_verify_failures_are_counted_by_reason() -> None:
    p = policy()
    stranger = OperatorKey.generate()
    assert reject_reason(p, stranger.sign_command(cmd())) == RejectReason.UNKNOWN_KEY
    assert reject_reason(p, encode_command_body(cmd())) == RejectReason.UNSIGNED
    assert reject_reason(p, b"\xc1") == RejectReason.MALFORMED
    assert reject_reason(p, b"\x90" * (MAX_COMMAND_BYTES + 1)) == RejectReason.OVERSIZED
    counters = p.counters()
    for reason in (
        RejectReason.UNKNOWN_KEY,
        RejectReason.UNSIGNED,
        RejectReason.MALFORMED,
        RejectReason.OVERSIZED,
    ):
        assert counters[reason] == 1
    assert counters[RejectReason.BAD_SIGNATURE] == 0


def test_counters_has_every_reason() -> None:
    p = policy()
    counters = p.counters()
    assert set(counters) == set(RejectReason.ALL)
    assert all(v == 0 for v in counters.values())


# --------------------------------------------------------------------------- store path


def test_apply_desired_newest_revision_wins_across_scopes() -> None:
    p = policy()
    fleet_stop = record(cmd(CommandKind.STOP, rev=0), 10)
    host_resume = record(cmd(CommandKind.RESUME, rev=0, scope=Scope.HOST, target=HOST), 12)
    d = p.apply_desired([fleet_stop, host_resume])
    assert d is not None
    assert d.state.mode is RunMode.RUNNING
    assert d.rev == 12
    assert d.cmd_id == host_resume.command.id
    assert p.state.applied_rev == 12
    assert p.state.applied_cmd == host_resume.command.id

    later_stop = record(cmd(CommandKind.STOP, rev=0), 15)
    d = p.apply_desired([later_stop, host_resume])
    assert d is not None
    assert d.changed
    assert p.state.mode is RunMode.STOPPED
    assert p.state.applied_rev == 15


def test_apply_desired_order_of_records_does_not_matter() -> None:
    a = record(cmd(CommandKind.STOP, rev=0), 10)
    b = record(cmd(CommandKind.RESUME, rev=0, scope=Scope.GROUP, target="web"), 12)
    p1, p2 = policy(), policy()
    d1, d2 = p1.apply_desired([a, b]), p2.apply_desired([b, a])
    assert d1 is not None
    assert d2 is not None
    assert p1.state == p2.state
    assert p1.state.mode is RunMode.RUNNING


def test_apply_desired_ignores_old_and_equal_revisions() -> None:
    p = policy()
    assert p.apply_desired([]) is None
    p.apply_desired([record(cmd(CommandKind.STOP, rev=0), 10)])
    before = p.state
    assert p.apply_desired([record(cmd(CommandKind.RESUME, rev=0), 10)]) is None
    assert p.apply_desired([record(cmd(CommandKind.RESUME, rev=0), 9)]) is None
    assert p.state == before
    assert p.state.mode is RunMode.STOPPED


def test_bus_command_older_than_store_state_is_superseded() -> None:
    p = policy()
    p.apply_desired([record(cmd(CommandKind.RESUME, rev=0), 20)])
    d = p.apply_command(p.accept(sign(cmd(CommandKind.STOP, rev=19)), now=NOW))
    assert d.ack_status is AckStatus.SUPERSEDED
    assert p.state.mode is RunMode.RUNNING


def test_desired_same_mode_newer_revision_is_not_a_change_of_mode() -> None:
    p = policy()
    p.apply_desired([record(cmd(CommandKind.RESUME, rev=0), 3)])
    d = p.apply_desired([record(cmd(CommandKind.RESUME, rev=0), 4)])
    assert d is not None
    assert d.changed  # the revision moved, so the state to persist changed
    assert d.state.mode is RunMode.RUNNING
    assert d.state.applied_rev == 4


# --------------------------------------------------------------------------- emergency hold


def unrecorded(kind: CommandKind = CommandKind.STOP, issued_at: float = NOW) -> Command:
    return cmd(kind, rev=0, issued_at=issued_at, args={"unrecorded": True})


def held_policy(applied_rev: int = 10) -> tuple[ControlPolicy, Command]:
    p = policy()
    p.apply_desired([record(cmd(CommandKind.RESUME, rev=0, issued_at=NOW - 500), applied_rev)])
    stop = unrecorded()
    d = p.apply_command(p.accept(sign(stop), now=NOW))
    assert d.ack_status is AckStatus.APPLIED
    assert d.rev == 0
    assert "held" in d.detail
    return p, stop


def test_unrecorded_stop_is_held() -> None:
    p, stop = held_policy(applied_rev=10)
    assert p.state.held
    assert p.state.mode is RunMode.STOPPED
    assert p.state.applied_rev == 10
    assert p.state.held_cmd == stop.id
    assert p.state.held_issued_at == stop.issued_at
    assert p.describe()["held"] is True


def test_desired_newer_rev_issued_before_hold_does_not_release() -> None:
    p, _ = held_policy(applied_rev=10)
    old_resume = record(cmd(CommandKind.RESUME, rev=0, issued_at=NOW - 1), 11)
    assert p.apply_desired([old_resume]) is None
    assert p.state.held
    assert p.state.mode is RunMode.STOPPED
    assert p.state.applied_rev == 10


def test_desired_issued_after_hold_releases() -> None:
    p, _ = held_policy(applied_rev=10)
    new_resume = record(cmd(CommandKind.RESUME, rev=0, issued_at=NOW + 5), 11)
    d = p.apply_desired([new_resume])
    assert d is not None
    assert not p.state.held
    assert p.state.mode is RunMode.RUNNING
    assert p.state.applied_rev == 11
    assert p.state.held_cmd == ""


def test_desired_issued_after_hold_but_old_revision_does_not_release() -> None:
    p, _ = held_policy(applied_rev=10)
    assert p.apply_desired([record(cmd(CommandKind.RESUME, rev=0, issued_at=NOW + 5), 10)]) is None
    assert p.state.held


def test_bus_command_issued_before_hold_is_superseded() -> None:
    p, _ = held_policy(applied_rev=10)
    resume = cmd(CommandKind.RESUME, rev=11, issued_at=NOW - 1)
    d = p.apply_command(p.accept(sign(resume), now=NOW))
    assert d.ack_status is AckStatus.SUPERSEDED
    assert "emergency stop" in d.detail
    assert p.state.held
    assert p.counters()[RejectReason.STALE_REVISION] == 1


def test_bus_command_issued_after_hold_releases() -> None:
    p, _ = held_policy(applied_rev=10)
    resume = cmd(CommandKind.RESUME, rev=11, issued_at=NOW + 1)
    d = p.apply_command(p.accept(sign(resume), now=NOW + 1))
    assert d.ack_status is AckStatus.APPLIED
    assert not p.state.held
    assert p.state.mode is RunMode.RUNNING


def test_unrecorded_resume_is_rejected() -> None:
    p = policy()
    p.apply_command(p.accept(sign(cmd(CommandKind.STOP, rev=4)), now=NOW))
    before = p.state
    d = p.apply_command(p.accept(sign(unrecorded(CommandKind.RESUME)), now=NOW))
    assert d.ack_status is AckStatus.REJECTED
    assert not d.changed
    assert p.state == before
    assert p.counters()[RejectReason.MALFORMED] == 1


def test_unrecorded_flag_with_a_revision_is_an_ordinary_command() -> None:
    p = policy()
    c = cmd(CommandKind.STOP, rev=3, args={"unrecorded": True})
    p.apply_command(p.accept(sign(c), now=NOW))
    assert not p.state.held
    assert p.state.applied_rev == 3


# --------------------------------------------------------------------------- verify_record


def test_verify_record_accepts_signed_value_without_expiry_check() -> None:
    p = policy()
    c = cmd(CommandKind.STOP, rev=0, issued_at=NOW - 10 * MAX_COMMAND_TTL_S)
    assert p.verify_record(sign(c)) == c
    # A record is not a bus command: it does not enter the replay cache.
    assert p.accept(sign(c), now=c.issued_at) == c


def test_verify_record_rejects_unsigned_and_counts() -> None:
    p = policy()
    with pytest.raises(CommandRejected) as ei:
        p.verify_record(encode_command_body(cmd(rev=0)))
    assert ei.value.reason == RejectReason.UNSIGNED
    assert p.counters()[RejectReason.UNSIGNED] == 1


def test_verify_record_rejects_wrong_target_and_counts() -> None:
    p = policy()
    with pytest.raises(CommandRejected) as ei:
        p.verify_record(sign(cmd(rev=0, scope=Scope.HOST, target="web-9")))
    assert ei.value.reason == RejectReason.WRONG_TARGET
    assert p.counters()[RejectReason.WRONG_TARGET] == 1


# --------------------------------------------------------------------------- persisted state


@pytest.mark.parametrize(
    "state",
    [
        ControlState(),
        ControlState(RunMode.STOPPED, 42, "c-42", True, "c-held", 123.5),
    ],
)
def test_control_state_round_trip(state: ControlState) -> None:
    assert ControlState.from_bytes(state.to_bytes()) == state


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"garbage that is not msgpack \xff",
        msgpack.packb([1, 2, 3]),
        msgpack.packb({}),
        msgpack.packb({"mode": "paused"}),
        msgpack.packb(
            {
                "mode": "stopped",
                "applied_rev": "x",
                "applied_cmd": "",
                "held": False,
                "held_cmd": "",
                "held_issued_at": 0.0,
            }
        ),
        ControlState().to_bytes()[:-3],
    ],
)
def test_control_state_from_garbage(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="corrupt"):
        ControlState.from_bytes(data)


def test_persisted_exiting_mode_loads_as_running() -> None:
    data = ControlState(mode=RunMode.EXITING, applied_rev=7, applied_cmd="c").to_bytes()
    state = ControlState.from_bytes(data)
    assert state.mode is RunMode.RUNNING
    assert state.applied_rev == 7


def test_policy_resumes_from_persisted_state() -> None:
    saved = ControlState(mode=RunMode.STOPPED, applied_rev=30, applied_cmd="c-30")
    p = policy()
    p.state = ControlState.from_bytes(saved.to_bytes())
    d = p.apply_command(p.accept(sign(cmd(CommandKind.RESUME, rev=29)), now=NOW))
    assert d.ack_status is AckStatus.SUPERSEDED
    assert p.state.mode is RunMode.STOPPED


# --------------------------------------------------------------------------- clock skew


def test_clock_ahead_refuses_as_expired_and_names_the_command() -> None:
    """A host 10 min ahead: the command is verified, refused by the clock, and the refusal
    carries the command (the agent acks it and reads etcd) and the observed skew."""
    p = policy()
    c = cmd(rev=7, issued_at=NOW, ttl=300)
    with pytest.raises(TimeRefusal) as ei:
        p.accept(sign(c), now=NOW + 600)
    assert ei.value.reason == RejectReason.EXPIRED and ei.value.command == c
    assert "by this host's clock" in ei.value.message
    report = p.clock_report()
    assert report.command_skew_s == 600.0 and report.refused_expired == 1
    assert c.id in report.last_refusal
    assert p.state == ControlState()  # nothing applied from the bus


def test_clock_behind_refuses_as_not_yet_valid() -> None:
    p = policy()
    c = cmd(rev=7, issued_at=NOW, ttl=300)
    with pytest.raises(TimeRefusal) as ei:
        p.accept(sign(c), now=NOW - 600)
    assert ei.value.reason == RejectReason.NOT_YET_VALID
    assert p.clock_report().command_skew_s == -600.0
    assert p.clock_report().refused_not_yet_valid == 1
    # within the tolerance a slightly fast issuer is fine
    c2 = cmd(rev=8, issued_at=NOW + CLOCK_TOLERANCE_S - 1)
    assert p.accept(sign(c2), now=NOW) == c2


def test_time_refusal_still_needs_signature_target_and_no_replay() -> None:
    p = policy()
    c = cmd(rev=7, issued_at=NOW, ttl=300, scope=Scope.HOST, target="other-host")
    assert reject_reason(p, sign(c), now=NOW + 600) == RejectReason.WRONG_TARGET
    mine = cmd(rev=8, issued_at=NOW, ttl=300)
    with pytest.raises(TimeRefusal):
        p.accept(sign(mine), now=NOW + 600)
    assert reject_reason(p, sign(mine), now=NOW + 600) == RejectReason.REPLAYED


def test_skew_is_not_taken_from_an_old_command() -> None:
    """An old signed command replayed would show a skew that is not there."""
    p = policy()
    p.apply_command(p.accept(sign(cmd(rev=10, issued_at=NOW)), now=NOW + 0.01))
    assert p.clock_report().command_skew_s == 0.01
    old = cmd(rev=3, issued_at=NOW - 3000, ttl=60)
    with pytest.raises(TimeRefusal):
        p.accept(sign(old), now=NOW)
    assert p.clock_report().command_skew_s == 0.01
