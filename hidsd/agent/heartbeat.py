"""The heartbeat (E1, E4): who the agent is, what it applied, and every service's report.

The service reads the agent through `HeartbeatSources`, a tuple of small report providers, so
it can be built (by the agent, a test or a benchmark's simulated fleet) from exactly the
services that report, not from the whole agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from hidsd import __version__
from hidsd.agent.control import ControlState
from hidsd.base.aio import wait_timeout
from hidsd.base.errors import BusUnavailable
from hidsd.base.hostinfo import SelfUsage, host_facts
from hidsd.base.storage import StorageReport
from hidsd.wire.commands import RunMode
from hidsd.wire.heartbeat import (
    BreakerReport,
    ClockReport,
    ConfigReport,
    Heartbeat,
    HostFacts,
    OutputReport,
    PluginReport,
    encode_heartbeat,
)


def local_facts() -> HostFacts:
    """This host's facts, collected once at start."""
    f = host_facts()
    return HostFacts(hostname=f["hostname"], os=f["os"], os_id=f["os_id"], kernel=f["kernel"],
                     arch=f["arch"], ips=tuple(f["ips"]), boot_time=float(f["boot_time"]),
                     cpus=int(f["cpus"]), python=f["python"])  # fmt: skip


def _nothing() -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class HeartbeatSources:
    """Where each part of a heartbeat comes from. Every provider is called once per beat."""

    host: str
    groups: tuple[str, ...]
    mode: Callable[[], RunMode]
    control: Callable[[], ControlState]
    #: the heartbeat period now (hot-reloadable)
    interval_s: Callable[[], float]
    rejections: Callable[[], dict[str, int]]
    store_ok: Callable[[], bool]
    config: Callable[[], ConfigReport]
    storage: Callable[[], StorageReport]
    clock: Callable[[], ClockReport]
    plugins: Callable[[], dict[str, PluginReport]] = _nothing
    breaker: Callable[[], BreakerReport | None] = lambda: None
    outputs: Callable[[], dict[str, OutputReport]] = _nothing
    facts: HostFacts = field(default_factory=HostFacts)


class HeartbeatService:
    """Publishes a jittered heartbeat, and one at once when poked (a run mode, config or
    storage change), so the fleet view never waits a whole period for news."""

    def __init__(
        self,
        sources: HeartbeatSources,
        publish: Callable[[bytes], Awaitable[None]],
        connected: Callable[[], bool],
        log: Any,
    ) -> None:
        self.sources = sources
        self._publish = publish
        self._connected = connected
        self.log = log
        self.seq = 0
        self.failures = 0
        self.started = time.monotonic()
        self._now = asyncio.Event()
        self._usage = SelfUsage()
        self._rng = random.Random()

    def poke(self) -> None:
        self._now.set()

    def build(self, bye: bool = False) -> Heartbeat:
        s = self.sources
        cpu, rss = self._usage.sample()
        self.seq += 1
        state = s.control()
        return Heartbeat(
            host=s.host,
            version=__version__,
            groups=s.groups,
            mode=s.mode(),
            applied_rev=state.applied_rev,
            held=state.held,
            interval_s=s.interval_s(),
            seq=self.seq,
            sent_at=time.time(),
            uptime_s=round(time.monotonic() - self.started, 3),
            cpu_pct=round(cpu, 2),
            rss_bytes=rss,
            facts=replace(s.facts, store_ok=s.store_ok()),
            rejections=s.rejections(),
            bye=bye,
            config=s.config(),
            plugins=s.plugins(),
            breaker=s.breaker(),
            outputs=s.outputs(),
            storage=s.storage(),
            clock=s.clock(),
        )

    async def send(self, bye: bool = False) -> None:
        self.log.debug("heartbeat", seq=self.seq + 1, bye=bye)
        if self._connected():
            await self._publish(encode_heartbeat(self.build(bye)))

    async def run(self) -> None:
        while True:
            self._now.clear()  # before sending: a poke during the send is not lost
            try:
                await self.send()
            except (OSError, BusUnavailable) as exc:
                # out of descriptors or the bus mid-reconnect: the next beat tries again
                self.failures += 1
                self.log.warning("heartbeat_failed", error=str(exc))
            interval = self.sources.interval_s()  # hot-reloadable
            with contextlib.suppress(TimeoutError):
                await wait_timeout(self._now.wait(), interval * self._rng.uniform(0.9, 1.1))
