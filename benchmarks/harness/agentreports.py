"""What a simulated host sends about itself, built with the agent's own code, for benchmarks
that need many hosts' messages but not many whole `Agent`s (fleet query, controller scale).

* the heartbeat: the agent's `HeartbeatService` (its `build`, `send` and jittered `run`
  loop) over `HeartbeatSources` that report what an agent with the inventory and procmon
  plugins running reports: `local_facts()` of this machine with the host's name, OS and
  address; the inventory output's `LatestPublisher.report()`; a real `Breaker`'s report
  (accounting cgroup-v2); a real `StorageHealth`'s report (one per worker); `ClockReport()`
  (no command seen yet); per plugin a `PluginReport` whose keys are the runner's
  (`RUNNER_COUNTERS`, the stderr log's) and a real telemetry `Pipeline`'s `stats()`;
* the inventory record: the inventory plugin's own `Inventory.report_state` (rows, digest,
  `encode_packages_state`), its os-release read from a file per OS, framed as the plugin
  SDK frames it and handed to the agent's route (`LatestPublisher.offer`, which publishes
  with the headers and message id the agent uses).

How that differs from N real hosts: no plugin processes run (their reports are fixed per
host, the counters plausible, not counted), every host reports its worker process's CPU and
RSS (`SelfUsage`) and one data dir; hosts of a worker share its NATS connection and event loop.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from hidsd.agent.breaker import Breaker
from hidsd.agent.control import ControlState
from hidsd.agent.heartbeat import HeartbeatService, HeartbeatSources, local_facts
from hidsd.base.storage import StorageHealth
from hidsd.plugins.builtin.inventory import Inventory
from hidsd.plugins.runner import RUNNER_COUNTERS
from hidsd.plugins.spool import Spool
from hidsd.plugins.telemetry import LatestPublisher, Pipeline
from hidsd.wire import frames
from hidsd.wire.commands import RunMode
from hidsd.wire.heartbeat import (
    AccountingReport,
    BreakerReport,
    ClockReport,
    ConfigReport,
    HostFacts,
    OutputReport,
    PluginReport,
)
from hidsd.wire.limits import BreakerConfig
from hidsd.wire.records import DataType

#: what config/fleet.example.toml enables
PLUGINS = ("procmon", "inventory")
Publish = Callable[[str, bytes, dict[str, str]], Awaitable[None]]


async def _never_publish(subject: str, body: bytes, headers: dict[str, str]) -> None:
    raise RuntimeError("a template pipeline publishes nothing")


def pipeline_stats(spool_dir: Path) -> dict[str, int]:
    """A real telemetry `Pipeline`'s stats (every counter and gauge it reports), fresh."""
    spool = Spool(spool_dir, 1 << 20)
    p = Pipeline(host="template", plugin="template", subject="unused", publish=_never_publish,
                 spool=spool)  # fmt: skip
    return {k: int(v) for k, v in p.stats().items()}


def plugin_report(rnd: random.Random, telemetry: dict[str, int]) -> PluginReport:
    """A running plugin as `PluginRunner.stats()` reports it, with plausible counts."""
    records = rnd.randint(10, 500_000)
    batches = records // 50 + 1
    counters = {**{k: 0 for k in RUNNER_COUNTERS}, "starts": 1, "records": records,
                "log_bytes": rnd.randint(0, 4096), "log_bytes_dropped": 0,
                "log_rotations": 0}  # fmt: skip
    tel = {**telemetry, "frames_in": records, "batches": batches, "records_out": records,
           "batches_out": batches, "next_seq": records + 1}  # fmt: skip
    return PluginReport(state="running", pid=rnd.randint(1000, 4_000_000),
                        cpu_pct=round(rnd.random() * 3, 2), rss_bytes=rnd.randint(20, 90) << 20,
                        fds=rnd.randint(5, 40), nice=10, counters=counters,
                        telemetry=tel)  # fmt: skip


def breaker_report() -> BreakerReport:
    """A real breaker in its normal state, cgroup-v2 accounting (as `BreakerService.report`)."""
    now = time.monotonic()
    b = Breaker(BreakerConfig(), started=now - 86400.0)
    return replace(b.report(now, time.time()),
                   accounting=AccountingReport("cgroup-v2", "hidsd.slice"))  # fmt: skip


def host_facts(base: HostFacts, host: str, os_name: str, os_id: str, index: int) -> HostFacts:
    """This machine's facts (`local_facts`) as host `host` of an OS, with its own address."""
    ip = f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}"
    return replace(base, hostname=host, os=os_name, os_id=os_id, ips=(ip, *base.ips[1:2]))


@dataclass
class SimHost:
    """One simulated host: its heartbeat service and its inventory output."""

    host: str
    heartbeat: HeartbeatService
    latest: LatestPublisher
    task: asyncio.Task[None] | None = None


@dataclass
class HostKit:
    """What a worker's simulated hosts share: a storage health, the pipeline's stats keys,
    a breaker report, this machine's facts, and how they publish."""

    data_dir: Path
    publish_heartbeat: Callable[[str, bytes], Awaitable[None]]
    publish_latest: Publish
    connected: Callable[[], bool]
    interval_s: float = 10.0

    def __post_init__(self) -> None:
        self.storage = StorageHealth(self.data_dir)
        self.telemetry = pipeline_stats(self.data_dir / "template-spool")
        self.breaker = breaker_report()
        self.facts = local_facts()
        self.log: Any = structlog.get_logger("bench.simhost")

    def host(self, host: str, index: int, groups: tuple[str, ...], os_name: str, os_id: str,
             seed: int = 0) -> SimHost:  # fmt: skip
        rnd = random.Random(f"{seed}:{host}")
        plugins = {p: plugin_report(rnd, self.telemetry) for p in PLUGINS}
        latest = LatestPublisher(host, self.publish_latest)
        config = ConfigReport({"fleet": 12, f"group:{groups[0]}": 3}, "9f2c1e0a7b3d4c55", "ok")
        control = ControlState(applied_rev=rnd.randint(1, 5000))
        events = OutputReport({"offered": 1, "published": 1}, 0, "")
        sources = HeartbeatSources(
            host=host, groups=groups, mode=lambda: RunMode.RUNNING, control=lambda: control,
            interval_s=lambda: self.interval_s, rejections=lambda: {"bus.reconnects": 0},
            store_ok=lambda: True, config=lambda: config, storage=self.storage.report,
            clock=ClockReport, plugins=lambda: plugins, breaker=lambda: self.breaker,
            outputs=lambda: {"inventory": latest.report(), "events": events},
            facts=host_facts(self.facts, host, os_name, os_id, index),
        )  # fmt: skip

        async def publish(body: bytes) -> None:
            await self.publish_heartbeat(host, body)

        return SimHost(host, HeartbeatService(sources, publish, self.connected, self.log), latest)


class _PluginRuntime:
    """What `Inventory.report_state` uses of the plugin's `Runner`: its params and
    `emit_payload` (the SDK's framing, `frames.frame`), the frame kept for the caller."""

    def __init__(self, os_release: Path) -> None:
        self.os_release = os_release
        self.frame = b""

    def param_float(self, name: str, default: float, minimum: float = 0.0) -> float:
        return default

    def param_str(self, name: str, default: str) -> str:
        return str(self.os_release) if name == "os_release" else default

    def emit_payload(self, data_type: int, payload: bytes, ts_ns: int | None = None) -> None:
        self.frame = frames.frame(int(data_type), payload, ts_ns or time.time_ns())


def packages_state_frame(packages: list[dict[str, str]], os_release: Path,
                         reason: str = "start") -> bytes:  # fmt: skip
    """A host's PACKAGES_STATE frame as the inventory plugin emits it: `packages` are the
    plugin's items (ecosystem, name, version, architecture, source, source_version)."""
    rt = _PluginRuntime(os_release)
    inv = Inventory(rt)  # type: ignore[arg-type]
    inv.report_state(dict(enumerate(packages)), reason)  # type: ignore[arg-type]
    if not rt.frame or frames.unpack_header(rt.frame[: frames.HEADER_SIZE]).data_type != int(
        DataType.PACKAGES_STATE
    ):
        raise RuntimeError("the inventory plugin emitted no PACKAGES_STATE record")
    return rt.frame
