"""Heartbeats as the coordinator sees them: who is heartbeating, and when each host first sent
one that shows what a round waits for.

A benchmark subscribes `HeartbeatLog.on_msg` to the heartbeat subjects (`Subjects.heartbeat_all`);
every message is decoded with the wire's own `decode_heartbeat` (an undecodable one is counted,
never raised). A round calls `begin` just before the change it times, then `expect` once it
knows what to look for (a config write returns its version only when done): heartbeats that
arrived in between are offered to it too, so none is lost to the order of the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg

from hidsd.base.errors import ProtocolError
from hidsd.wire.heartbeat import Heartbeat, decode_heartbeat

from .report import ms, percentile


@dataclass(frozen=True, slots=True)
class Arrival:
    """A host's first heartbeat that showed the change: arrival on the coordinator's monotonic
    clock, and the heartbeat (its `sent_at` is the agent's wall clock when it built it)."""

    at: float
    heartbeat: Heartbeat


@dataclass
class Expectation:
    """The first heartbeat of each expected host for which `want` holds."""

    want: Callable[[Heartbeat], bool]
    expected: set[str]
    arrivals: dict[str, Arrival] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._pending = set(self.expected)
        if not self._pending:
            self.done.set()

    def offer(self, at: float, hb: Heartbeat) -> None:
        if hb.host in self.arrivals or hb.host not in self._pending or not self.want(hb):
            return
        self.arrivals[hb.host] = Arrival(at, hb)
        self._pending.discard(hb.host)
        if not self._pending:
            self.done.set()

    @property
    def missing(self) -> list[str]:
        return sorted(self._pending)

    async def wait(self, timeout: float) -> bool:
        """Until every expected host showed it; False on timeout."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), max(timeout, 0.0))
        return self.done.is_set()

    def summary(self, t0: float, worker_of: Mapping[str, int]) -> dict[str, Any]:
        """Latencies (ms after `t0`, the coordinator's monotonic clock): `all_converged_ms`
        only when every expected host showed it; first and last per worker process."""
        lat = [a.at - t0 for a in self.arrivals.values()]
        by_worker: dict[int, list[float]] = {}
        for h, a in self.arrivals.items():
            by_worker.setdefault(worker_of[h], []).append(a.at - t0)
        missing = self.missing
        return {
            "expected": len(self.expected), "converged": len(lat),
            "first_ms": ms(min(lat)) if lat else None,
            **{f"p{p}_ms": ms(percentile(lat, p)) for p in (50, 90, 99)},
            "all_converged_ms": ms(max(lat)) if lat and not missing else None,
            "last_ms": ms(max(lat)) if lat else None,
            "missing": len(missing), "missing_hosts": missing[:20],
            "by_worker": {str(w): {"converged": len(v), "first_ms": ms(min(v)),
                                   "last_ms": ms(max(v))} for w, v in sorted(by_worker.items())},
        }  # fmt: skip


@dataclass
class HeartbeatLog:
    """Every heartbeat received: counts, first sighting and the latest per host, and the one
    expectation being timed."""

    received: int = 0
    bad: int = 0
    byes: int = 0
    first_seen: dict[str, float] = field(default_factory=dict)
    latest: dict[str, Heartbeat] = field(default_factory=dict)
    _buffer: list[tuple[float, Heartbeat]] | None = None
    _expecting: Expectation | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_msg(self, msg: Msg) -> None:
        at = time.monotonic()
        try:
            hb = decode_heartbeat(msg.data)
        except ProtocolError:
            self.bad += 1
            return
        self.received += 1
        self.byes += hb.bye
        self.latest[hb.host] = hb
        if hb.host not in self.first_seen:
            self.first_seen[hb.host] = at
            self._changed.set()
        if self._expecting is not None:
            self._expecting.offer(at, hb)
        elif self._buffer is not None:
            self._buffer.append((at, hb))

    def begin(self) -> None:
        """Keep heartbeats from now on, for the `expect` that follows."""
        self._expecting, self._buffer = None, []

    def expect(self, want: Callable[[Heartbeat], bool], hosts: set[str]) -> Expectation:
        """Time `want` over `hosts`, counting what arrived since `begin`."""
        exp = Expectation(want, set(hosts))
        for at, hb in self._buffer or []:
            exp.offer(at, hb)
        self._expecting, self._buffer = exp, None
        return exp

    def end(self) -> None:
        self._expecting = self._buffer = None

    async def wait_seen(self, hosts: set[str], timeout: float) -> bool:
        """Until every host in `hosts` has sent a heartbeat; False on timeout."""
        deadline = time.monotonic() + timeout
        while not hosts <= self.first_seen.keys():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
        return True
