"""Issuing a control command: record in etcd, broadcast on NATS, count acks.

The emergency path has no single point of failure:
* controller down: the stop is still recorded and broadcast; acks are counted here, and the
  result says the expected set is unknown;
* etcd down: refused by default (a stop that is not recorded would be undone by the next
  resync of an agent that missed it); with `allow_unrecorded` it is broadcast anyway as an
  emergency hold that agents keep until a newer desired state is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg

from hidsd.base.aio import wait_timeout
from hidsd.base.errors import NoResponse, NotRecorded, ProtocolError, StoreUnavailable
from hidsd.bus.store import Store
from hidsd.bus.transport import Bus
from hidsd.wire.commands import (
    CLOCK_TOLERANCE_S,
    Ack,
    AckStatus,
    AuditEntry,
    Command,
    CommandKind,
    decode_ack,
    encode_audit_entry,
)
from hidsd.wire.names import KeyLayout, Scope, Subjects
from hidsd.wire.replies import Expected
from hidsd.wire.rpc import ExpectedRequest, encode_request
from hidsd.wire.signing import OperatorKey, RejectReason
from hidsd.wire.verbs import EXPECTED

DEFAULT_TTL_S = 300.0
#: a host whose ack shows a clock this far from ours is named in the summary
CLOCK_SKEW_WARN_S = 2.0
#: ack reasons that mean the host's clock refused the command
TIME_REASONS = (RejectReason.EXPIRED, RejectReason.NOT_YET_VALID)


def new_command_id() -> str:
    """Time-ordered and unique: milliseconds, then 48 random bits."""
    return f"{int(time.time() * 1000):x}-{secrets.token_hex(6)}"


@dataclass(slots=True)
class IssueResult:
    cmd_id: str
    kind: str
    scope: str
    target: str
    rev: int
    recorded: bool
    store_error: str | None
    expected: list[str] | None
    expected_offline: list[str]
    acks: dict[str, Ack] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    first_ack_ms: float | None = None
    elapsed_ms: float = 0.0
    record_ms: float = 0.0
    bad_acks: int = 0
    broadcast: bool = False
    bus_error: str | None = None
    #: hosts whose clock refused the broadcast (expired / not yet valid): host -> why. A
    #: recorded command still reaches them from etcd; their later ack replaces the refusal.
    clock_refused: dict[str, str] = field(default_factory=dict)
    #: each acking host's clock minus ours, from the ack's sent_at (latency included)
    clock_skew: dict[str, float] = field(default_factory=dict)

    @property
    def acked(self) -> list[str]:
        return sorted(h for h, a in self.acks.items() if a.status is not AckStatus.REJECTED)

    @property
    def rejected(self) -> list[str]:
        return sorted(h for h, a in self.acks.items() if a.status is AckStatus.REJECTED)

    @property
    def superseded(self) -> list[str]:
        return sorted(h for h, a in self.acks.items() if a.status is AckStatus.SUPERSEDED)

    def skewed(self) -> dict[str, float]:
        return {h: v for h, v in sorted(self.clock_skew.items()) if abs(v) > CLOCK_SKEW_WARN_S}

    @property
    def missing(self) -> list[str] | None:
        if self.expected is None:
            return None
        return sorted(set(self.expected) - set(self.acks))

    @property
    def complete(self) -> bool:
        """Every expected host acked (not rejected), and the state is in etcd."""
        return (
            self.recorded
            and self.broadcast
            and self.expected is not None
            and not self.missing
            and not self.rejected
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "cmd_id": self.cmd_id,
            "kind": self.kind,
            "scope": self.scope,
            "target": self.target,
            "rev": self.rev,
            "recorded": self.recorded,
            "store_error": self.store_error,
            "broadcast": self.broadcast,
            "bus_error": self.bus_error,
            "expected_known": self.expected is not None,
            "expected": len(self.expected) if self.expected is not None else None,
            "expected_hosts": self.expected,
            "offline_hosts": self.expected_offline,
            "acked": len(self.acked),
            "acked_hosts": self.acked,
            "superseded_hosts": self.superseded,
            "rejected_hosts": self.rejected,
            "missing_hosts": self.missing,
            "unexpected_hosts": sorted(self.unexpected),
            "statuses": {h: a.status.value for h, a in sorted(self.acks.items())},
            "first_ack_ms": self.first_ack_ms,
            "elapsed_ms": round(self.elapsed_ms, 2),
            "record_ms": round(self.record_ms, 2),
            "bad_acks": self.bad_acks,
            "clock_refused_hosts": dict(sorted(self.clock_refused.items())),
            "clock_skewed_hosts": self.skewed(),
            "complete": self.complete,
        }


async def fetch_expected(
    bus: Bus, subjects: Subjects, scope: Scope, target: str, timeout: float
) -> Expected | None:
    """Ask any controller which hosts should ack; None if no controller answered (or its answer
    is malformed). A controller that dies with the request in flight leaves no reply: ask
    again (another one answers)."""
    params = encode_request(ExpectedRequest(scope, target).to_params())
    for _ in range(3):
        try:
            return EXPECTED.decode(await bus.request(subjects.ctl(EXPECTED.name), params, timeout))
        except NoResponse:
            continue
        except ProtocolError:
            return None
    return None


AckCallback = Callable[[Ack, IssueResult], None]


async def issue_command(
    *,
    kind: CommandKind,
    scope: Scope,
    target: str,
    key: OperatorKey,
    bus: Bus | None,
    store: Store,
    subjects: Subjects,
    keys: KeyLayout,
    wait_s: float,
    allow_unrecorded: bool = False,
    controller_timeout_s: float = 1.0,
    ttl_s: float = DEFAULT_TTL_S,
    on_ack: AckCallback | None = None,
    author: str = "",
    args: dict[str, Any] | None = None,
    desired_key: str | None = "",
) -> IssueResult:
    """Record, broadcast and count. Raises NotRecorded when etcd is down and not allowed.

    With `bus=None` (NATS unreachable) the desired state is only recorded: agents converge
    through their etcd watch or on their next reconnect/resync, and nothing is counted.
    `desired_key` defaults to the run-mode key of the scope; None records the command in the
    audit log only (one-off actions such as a plugin restart).
    """
    cmd_args = dict(args or {})
    if desired_key == "":
        desired_key = keys.desired(scope, target)
    cmd_id = new_command_id()
    issued_at = time.time()
    done = asyncio.Event()
    result = IssueResult(
        cmd_id=cmd_id, kind=kind.value, scope=scope.value, target=target, rev=0,
        recorded=False, store_error=None, expected=None, expected_offline=[],
    )  # fmt: skip
    t_publish = 0.0
    expected_set: set[str] | None = None
    remaining: set[str] = set()

    async def on_msg(msg: Msg) -> None:
        try:
            ack = decode_ack(msg.data)
        except ProtocolError:
            result.bad_acks += 1
            return
        if ack.cmd_id != cmd_id:
            result.bad_acks += 1
            return
        if result.first_ack_ms is None and t_publish:
            result.first_ack_ms = round((time.perf_counter() - t_publish) * 1000, 2)
        first = ack.host not in result.acks
        if ack.reason in TIME_REASONS:  # refused by its clock (then maybe applied from etcd)
            result.clock_refused[ack.host] = f"{ack.reason}: {ack.detail}"
        if ack.sent_at:
            skew = round(ack.sent_at - time.time(), 3)
            result.clock_skew[ack.host] = skew
            # its verdict on the broadcast may come after its ack from etcd's copy: name it
            # from its clock (the broadcast was issued just now, valid for ttl_s)
            verdict = ""
            if skew > ttl_s:
                verdict = RejectReason.EXPIRED
            elif -skew > CLOCK_TOLERANCE_S:
                verdict = RejectReason.NOT_YET_VALID
            if verdict and ack.host not in result.clock_refused:
                result.clock_refused[ack.host] = (
                    f"{verdict}: this host's clock is {skew:+.1f} s off ours"
                )
        clock_refusal = ack.status is AckStatus.REJECTED and ack.reason in TIME_REASONS
        if not (clock_refusal and not first):
            # a refusal of the broadcast never hides an ack the host sent from etcd's copy
            result.acks[ack.host] = ack
        if expected_set is not None:
            if clock_refusal and result.recorded:
                pass  # the host re-reads etcd and acks again: keep waiting for it
            elif ack.host in remaining:
                remaining.discard(ack.host)
            elif first and ack.host not in expected_set:
                result.unexpected.append(ack.host)
        if on_ack is not None:
            on_ack(ack, result)
        if expected_set is not None and not remaining:
            done.set()

    sub = await bus.subscribe(subjects.ack(cmd_id), on_msg) if bus is not None else None
    try:
        expected = None
        if bus is not None:
            expected = await fetch_expected(bus, subjects, scope, target, controller_timeout_s)
        if expected is not None:
            result.expected = list(expected.online)
            result.expected_offline = list(expected.offline)
            # O(1) per ack: at fleet scale a list scan per ack is quadratic.
            expected_set = set(result.expected)
            remaining = expected_set - set(result.acks)

        t0 = time.perf_counter()
        stored = Command(cmd_id, kind, scope, target, 0, issued_at, issued_at + ttl_s, cmd_args)
        try:
            audit = encode_audit_entry(
                AuditEntry(cmd_id, kind, scope, target, issued_at, key.key_id, author, cmd_args)
            )
            puts = {keys.command_log(cmd_id): audit}
            if desired_key is not None:
                puts[desired_key] = key.sign_command(stored)
            result.rev = await store.put_all(puts, absent=[keys.command_log(cmd_id)])
            result.recorded = True
        except StoreUnavailable as exc:
            result.store_error = exc.message
            if not allow_unrecorded or kind is not CommandKind.STOP:
                raise NotRecorded(
                    f"etcd is unreachable, so the {kind.value} could not be recorded; agents "
                    "that resync would not keep it. Fix etcd, or for an emergency stop pass "
                    "--allow-unrecorded to broadcast anyway.",
                    store_error=exc.message,
                ) from exc
        result.record_ms = (time.perf_counter() - t0) * 1000
        if bus is None:
            return result

        bus_args = dict(cmd_args) if result.recorded else {**cmd_args, "unrecorded": True}
        issued_at = time.time()
        cmd = Command(
            cmd_id, kind, scope, target, result.rev, issued_at, issued_at + ttl_s, bus_args
        )
        envelope = key.sign_command(cmd)
        t_publish = time.perf_counter()
        await bus.publish(subjects.cmd_for(scope, target), envelope)
        await bus.flush()
        result.broadcast = True
        if result.expected is not None and not result.expected:
            done.set()
        with contextlib.suppress(TimeoutError):
            await wait_timeout(done.wait(), wait_s)
        result.elapsed_ms = (time.perf_counter() - t_publish) * 1000
    finally:
        if sub is not None:
            await sub.unsubscribe()
    return result
