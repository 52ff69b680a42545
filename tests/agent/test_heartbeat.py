"""The heartbeat service, built from its sources alone (no agent, no bus)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
import structlog

from hidsd.agent.control import ControlState
from hidsd.agent.heartbeat import HeartbeatService, HeartbeatSources, local_facts
from hidsd.base.errors import BusUnavailable
from hidsd.base.storage import StorageHealth
from hidsd.wire.commands import RunMode
from hidsd.wire.heartbeat import ClockReport, ConfigReport, HostFacts, decode_heartbeat


def sources(tmp_path: Path, interval: list[float], store_ok: list[bool]) -> HeartbeatSources:
    health = StorageHealth(tmp_path)
    return HeartbeatSources(
        host="web-1", groups=("web",), mode=lambda: RunMode.STOPPED,
        control=lambda: ControlState(mode=RunMode.STOPPED, applied_rev=7, held=True),
        interval_s=lambda: interval[0], rejections=lambda: {"expired": 2},
        store_ok=lambda: store_ok[0], config=ConfigReport, storage=health.report,
        clock=ClockReport, facts=HostFacts(hostname="web-1", cpus=2),
    )  # fmt: skip


def test_build_reads_every_source_at_build_time(tmp_path: Path) -> None:
    interval, store_ok = [10.0], [True]
    svc = HeartbeatService(sources(tmp_path, interval, store_ok), _never, lambda: True, _log())
    first = svc.build()
    interval[0], store_ok[0] = 2.5, False
    second = svc.build(bye=True)
    assert (first.seq, second.seq) == (1, 2)
    assert first.mode is RunMode.STOPPED and first.applied_rev == 7 and first.held
    assert first.facts == HostFacts(hostname="web-1", cpus=2, store_ok=True)
    assert second.facts.store_ok is False and second.interval_s == 2.5 and second.bye
    assert second.rejections == {"expired": 2} and second.plugins == {} and second.breaker is None


def test_local_facts_are_this_host() -> None:
    facts = local_facts()
    assert facts.hostname and facts.cpus >= 1 and facts.store_ok is None


async def test_run_beats_at_once_when_poked_and_survives_a_bus_error(tmp_path: Path) -> None:
    sent: list[bytes] = []
    fail = [True]

    async def publish(body: bytes) -> None:
        if fail[0]:
            fail[0] = False
            raise BusUnavailable("reconnecting")
        sent.append(body)

    svc = HeartbeatService(sources(tmp_path, [60.0], [True]), publish, lambda: True, _log())
    task = asyncio.ensure_future(svc.run())
    try:
        await asyncio.sleep(0.05)
        assert svc.failures == 1 and sent == []  # the first beat failed; the loop goes on
        svc.poke()
        await asyncio.sleep(0.05)
        assert len(sent) == 1 and decode_heartbeat(sent[0]).host == "web-1"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_send_is_skipped_while_disconnected(tmp_path: Path) -> None:
    svc = HeartbeatService(sources(tmp_path, [1.0], [True]), _never, lambda: False, _log())
    await svc.send()
    assert svc.seq == 0


async def _never(body: bytes) -> None:
    pytest.fail("published while it should not")


def _log() -> object:
    return structlog.get_logger("test")
