"""The acks of a command as its issuer sees them: each host counted once (its first `applied`
ack), timed on arrival, with the path that reached the host first read from the ack's detail.

A real agent can ack one command twice: issued through `hidsctl`, the desired state is in
etcd before the broadcast leaves, so an agent that watches etcd often applies it from the
watch ("converged from etcd") and then acks the broadcast too ("already applied"). The log
keeps the first ack per host for the figures and counts the others by path.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg

from hidsd.agent.control import DETAIL_ALREADY_APPLIED, DETAIL_CONVERGED
from hidsd.base.errors import ProtocolError
from hidsd.wire.commands import Ack, AckStatus, decode_ack

from .report import ms, percentile

#: the paths an ack can report: the broadcast applied, a desired state read from etcd (watch
#: or resync), the broadcast of something etcd's copy applied first, anything else
PATHS = ("bus", "etcd", "bus_repeat", "other")


def ack_path(ack: Ack) -> str:
    """Which path brought the command to the host, from what the agent put in `detail`."""
    if ack.detail == DETAIL_CONVERGED:
        return "etcd"
    if ack.detail == DETAIL_ALREADY_APPLIED:
        return "bus_repeat"
    return "bus" if not ack.detail else "other"


@dataclass
class AckLog:
    """Acks on one subscription. `cmd_id` may be set after the acks start (a command whose id
    its issuer makes up): until then every ack is kept, and `bind` sorts them."""

    cmd_id: str | None = None
    #: host -> (arrival on perf_counter, its first applied ack)
    applied: dict[str, tuple[float, Ack]] = field(default_factory=dict)
    #: host -> status of its first ack that was not applied (rejected, superseded)
    refused: dict[str, str] = field(default_factory=dict)
    repeats: Counter[str] = field(default_factory=Counter)
    other_cmds: int = 0
    bad: int = 0
    _early: list[tuple[float, Ack]] = field(default_factory=list)
    _waiting: set[str] = field(default_factory=set)
    _done: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_msg(self, msg: Msg) -> None:
        t = time.perf_counter()
        try:
            ack = decode_ack(msg.data)
        except ProtocolError:
            self.bad += 1
            return
        self.add(ack, t)

    def add(self, ack: Ack, t: float | None = None) -> None:
        """One ack (also the callback of `issue_command`'s own subscription)."""
        t = time.perf_counter() if t is None else t
        if self.cmd_id is None:
            self._early.append((t, ack))
            return
        if ack.cmd_id != self.cmd_id:
            self.other_cmds += 1
            return
        if ack.host in self.applied:
            self.repeats[ack_path(ack)] += 1
            return
        if ack.status is not AckStatus.APPLIED:
            self.refused.setdefault(ack.host, ack.status.value)
            return
        self.applied[ack.host] = (t, ack)
        if ack.host in self._waiting:
            self._waiting.discard(ack.host)
            if not self._waiting:
                self._done.set()

    def bind(self, cmd_id: str) -> None:
        self.cmd_id = cmd_id
        early, self._early = self._early, []
        for t, ack in early:
            self.add(ack, t)

    async def wait_for(self, hosts: set[str], timeout: float) -> bool:
        """Until every host in `hosts` acked `applied`; False on timeout."""
        self._waiting = hosts - self.applied.keys()
        self._done = asyncio.Event()
        if not self._waiting:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._done.wait()
        except TimeoutError:
            return False
        return True

    def summary(self, hosts: set[str], t0: float,
                worker_of: dict[str, int] | None = None) -> dict[str, Any]:  # fmt: skip
        """Figures for the first acks of `hosts`, in ms after `t0` (perf_counter)."""
        got = {h: self.applied[h] for h in hosts if h in self.applied}
        lat = [t - t0 for t, _ in got.values()]
        by_worker: dict[int, list[float]] = {}
        for h, (t, _) in got.items():
            by_worker.setdefault(worker_of.get(h, -1) if worker_of else 0, []).append(t - t0)
        missing = sorted(hosts - got.keys())
        statuses = Counter("applied" if h in got else self.refused.get(h, "missing") for h in hosts)
        last = max(lat) if lat else None
        return {
            "expected": len(hosts), "acked": len(got),
            "first_ack_ms": ms(min(lat)) if lat else None,
            "p50_ms": ms(percentile(lat, 50)), "p99_ms": ms(percentile(lat, 99)),
            "all_acked_ms": ms(last) if hosts and not missing else None,
            "last_ack_ms": ms(last),
            "percentiles_ms": {str(p): ms(percentile(lat, p)) for p in (10, 25, 50, 75, 90, 99)},
            "first_ack_path": dict(Counter(ack_path(a) for _, a in got.values())),
            "later_acks_path": dict(self.repeats),
            "by_worker": {str(w): {"acked": len(v), "first_ms": ms(min(v)), "last_ms": ms(max(v))}
                          for w, v in sorted(by_worker.items())},
            "statuses": dict(statuses), "missing_hosts": missing[:20], "missing": len(missing),
            "unexpected_acks": len(self.applied.keys() - hosts),
            "duplicate_acks": sum(self.repeats.values()), "bad_acks": self.bad,
        }  # fmt: skip
