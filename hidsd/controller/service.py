"""hidsd-controller: presence, ack ledger, inventory index and fleet queries, answers to hidsctl.

Controllers divide the work (see `hidsd.controller.cluster`): each heartbeat and ack goes to one of
them (a NATS queue group), which validates it and forwards a compact copy to the others, so
every controller has the whole picture and any one can answer hidsctl (requests are spread
through another queue group). Connection advisories and agent events reach every controller.
Every controller follows the inventory stream (latest package set per host) into its own
index; a fleet query is split across the live controllers by host and merged.

This module wires the parts together and answers the verbs about the controller itself; the
parts: `ingest` (what agents send), `telemetry` (the telemetry stream), `readers` (the reads
about agents), `querying` (fleet queries), `endpoints` (the verb table).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from nats.aio.msg import Msg

from hidsd import __version__
from hidsd.base.errors import ProtocolError
from hidsd.base.settings import setting
from hidsd.bus.store import Store
from hidsd.bus.transport import Bus, BusOptions, StreamSpec
from hidsd.controller.acks import AckLedger
from hidsd.controller.cluster import Cluster
from hidsd.controller.endpoints import Endpoints, Params
from hidsd.controller.ingest import Ingest
from hidsd.controller.inventory import InventoryIndex
from hidsd.controller.presence import Presence
from hidsd.controller.querying import FleetQuery
from hidsd.controller.readers import AgentReaders
from hidsd.controller.telemetry import TelemetryConsumer
from hidsd.wire import verbs
from hidsd.wire.names import CONTROLLER_QUEUE, KeyLayout, Subjects
from hidsd.wire.status import (
    ControllerRow,
    Controllers,
    EndpointsReply,
    IndexStats,
    InventoryHealth,
    InventoryStats,
    Ping,
    StatsShare,
)

#: heartbeats and acks: each to one controller of this queue group
INGEST_QUEUE = "hidsd-ingest"
#: a host's package list, decompressed, may not exceed this (a zlib bomb is refused)
INVENTORY_MAX_BYTES = 32 << 20


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    """What a controller runs with; the `setting()` fields are its settings file and
    `HIDSD_CONTROLLER_*` environment (read by `hidsd.controller.main.load_settings`)."""

    servers: tuple[str, ...] = setting(
        ("nats://127.0.0.1:4222",), key="nats_servers", env="HIDSD_CONTROLLER_NATS",
        nonempty=True, text_list=True,
    )  # fmt: skip
    etcd_endpoints: tuple[str, ...] = setting(
        ("127.0.0.1:2379",), env="HIDSD_CONTROLLER_ETCD", text_list=True
    )
    etcd_user: str | None = setting(None, env="HIDSD_CONTROLLER_ETCD_USER")
    etcd_password: str | None = setting(None, env="HIDSD_CONTROLLER_ETCD_PASSWORD")
    #: NATS URLs with system-account credentials, for connect/disconnect advisories
    sys_servers: tuple[str, ...] = setting(
        (), key="sys_nats_servers", env="HIDSD_CONTROLLER_SYS_NATS", text_list=True
    )
    subject_prefix: str = setting("hidsd", env="HIDSD_CONTROLLER_SUBJECT_PREFIX")
    key_prefix: str = setting("/hidsd/", env="HIDSD_CONTROLLER_KEY_PREFIX")
    #: a host is offline after this many of its heartbeat intervals without one
    timeout_factor: float = setting(3.0, key="offline_timeout_factor", gt=1)
    sweep_s: float = 0.5
    #: the loader's default is the host name
    name: str = setting("controller", env="HIDSD_CONTROLLER_NAME")
    #: telemetry stream limits (JetStream): bounded, oldest discarded first
    stream_max_bytes: int = setting(1 << 30, env="HIDSD_CONTROLLER_STREAM_MAX_BYTES", ge=1)
    stream_max_age_s: float = 7 * 86400.0
    ingest: bool = True
    #: the inventory stream keeps the latest package set per host (bounded in bytes)
    inventory_max_bytes: int = setting(2 << 30, env="HIDSD_CONTROLLER_INVENTORY_MAX_BYTES", ge=1)
    #: how often a controller forwards what it received to its peers
    sync_flush_s: float = 0.25
    #: fault injection for tests: hold each query share this long (0 = off)
    test_share_delay_s: float = setting(0.0, env="HIDSD_CONTROLLER_TEST_SHARE_DELAY_S", ge=0)


class Controller:
    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings
        self.subjects = Subjects(settings.subject_prefix)
        self.keys = KeyLayout(settings.key_prefix)
        self.presence = Presence(timeout_factor=settings.timeout_factor)
        self.ledger = AckLedger()
        self.counters: Counter[str] = Counter()
        self.started = time.time()
        self.should_exit = asyncio.Event()
        self.log: Any = structlog.get_logger("hidsd.controller").bind(name=settings.name)
        self.bus = Bus(
            BusOptions(servers=settings.servers, name=f"hidsd-controller:{settings.name}")
        )
        self.sys_bus: Bus | None = None
        if settings.sys_servers:
            self.sys_bus = Bus(
                BusOptions(
                    servers=settings.sys_servers, name=f"hidsd-controller-sys:{settings.name}"
                )
            )
        self.store = Store(
            settings.etcd_endpoints, settings.etcd_user, settings.etcd_password, timeout_s=1.0
        )
        self.index = InventoryIndex()
        self.inventory_ok = False
        # the cluster hands peers' copies to ingest, which hands it what it validated itself:
        # late-bound (ingest is made next, with this cluster)
        self.cluster = Cluster(
            settings.name, self.subjects, self.bus,
            lambda meta, raw, skew: self.ingest.on_forwarded_heartbeat(meta, raw, skew),  # noqa: PLW0108
            lambda raw: self.ingest.on_forwarded_ack(raw),  # noqa: PLW0108
            flush_s=settings.sync_flush_s,
        )  # fmt: skip
        self.ingest = Ingest(
            self.subjects, self.presence, self.ledger, self.cluster, self.counters, self.log
        )
        self.telemetry = TelemetryConsumer(
            self.bus, self.subjects, self.counters, settings.stream_max_bytes,
            settings.stream_max_age_s,
        )  # fmt: skip
        self.readers = AgentReaders(
            self.keys, self.store, self.presence, self.ledger, self.ingest.events
        )
        self.fleet_query = FleetQuery(
            settings.name, self.index, self.presence, self.cluster, settings.test_share_delay_s
        )
        max_payload = lambda: self.bus.client.max_payload if self.bus.connected else None  # noqa: E731
        self.peer_endpoints = Endpoints("peer", self.bus.publish, max_payload, self.log)
        self.peer_endpoints.add(verbs.PEER_QUERY, self.fleet_query.share)
        self.peer_endpoints.add(verbs.PEER_STATS, self._stats_share)
        #: the verbs hidsctl asks (`<prefix>.ctl.<verb>`), one endpoint each
        ep = self.endpoints = Endpoints("controller", self.bus.publish, max_payload, self.log)
        ep.add(verbs.AGENTS_LIST, self.readers.agents_list)
        ep.add(verbs.AGENTS_SHOW, self.readers.agents_show)
        ep.add(verbs.FLEET_STATUS, self.readers.fleet_status)
        ep.add(verbs.EXPECTED, self.readers.expected)
        ep.add(verbs.ACKS, self.readers.acks)
        ep.add(verbs.PING, self.h_ping)
        ep.add(verbs.CONFIG_STATUS, self.readers.config_status)
        ep.add(verbs.TELEMETRY_STATS, self.telemetry.h_stats)
        ep.add(verbs.QUERY, self.fleet_query.query)
        ep.add(verbs.CONTROLLERS, self.h_controllers)
        ep.add(verbs.INVENTORY_STATS, self.h_inventory_stats)
        ep.add(verbs.ENDPOINTS, self.h_endpoints)

    # ------------------------------------------------------------------ requests

    async def on_request(self, msg: Msg) -> None:
        await self.endpoints.serve(msg, msg.subject.rsplit(".ctl.", 1)[-1])

    async def on_peer_request(self, msg: Msg) -> None:
        """A coordinator's request for this controller's share of split work."""
        await self.peer_endpoints.serve(msg, msg.subject.rsplit(".", 1)[-1])

    async def h_endpoints(self, params: Params) -> EndpointsReply:
        """Each verb's counters (requests, errors, internal errors, over-size, average ms)."""
        return EndpointsReply(self.endpoints.stats(), self.peer_endpoints.stats())

    def _index_stats(self) -> IndexStats:
        s = self.index.stats()
        return IndexStats(s["hosts"], s["triples"], s["packages"], s["os_groups"],
                          s["approx_bytes"])  # fmt: skip

    async def h_ping(self, params: Params) -> Ping:
        return Ping(
            name=self.settings.name,
            version=__version__,
            uptime_s=round(time.time() - self.started, 3),
            counters=dict(self.counters),
            presence_events=self.sys_bus is not None,
            id=self.cluster.id,
            members=tuple(self.cluster.describe()),
            cluster=dict(self.cluster.counters),
            inventory=InventoryHealth(self.inventory_ok, self._index_stats()),
        )

    async def _stats_share(self, params: Params) -> StatsShare:
        return StatsShare(
            name=self.settings.name,
            uptime_s=round(time.time() - self.started, 3),
            counters=dict(self.counters),
            cluster=dict(self.cluster.counters),
            agents=len(self.presence.agents),
            inventory_hosts=len(self.index),
        )

    async def h_controllers(self, params: Params) -> Controllers:
        """Every live controller's own counters (how the work is divided)."""
        results, how = await self.cluster.scatter(
            verbs.PEER_STATS.name, {}, self._stats_share, timeout_s=1.0,
            decode=verbs.PEER_STATS.check,
        )  # fmt: skip
        rows = []
        for mid, res in results.items():
            if how[mid].startswith("redone"):  # our own numbers are not theirs
                member = self.cluster.members.get(mid)
                rows.append(ControllerRow(mid, member.name if member else "?", None))
            else:
                rows.append(ControllerRow(mid, res.name, res))
        rows.sort(key=lambda r: r.name)
        return Controllers(tuple(rows))

    async def h_inventory_stats(self, params: Params) -> InventoryStats:
        now = time.time()
        hosts = {h: round(now - (self.index.inventory_time(h) or now), 1)
                 for h in self.index.hosts()}  # fmt: skip
        return InventoryStats(self.inventory_ok, self._index_stats(), hosts)

    # ------------------------------------------------------------------ inventory

    async def ensure_inventory_stream(self) -> None:
        """The latest package set per host (one message kept per subject): the durable source
        every controller's index is rebuilt from, and what offline hosts are answered from."""
        await self.bus.js_ensure_stream(StreamSpec(
            self.subjects.inventory_stream(), (self.subjects.inventory_all(),),
            max_bytes=self.settings.inventory_max_bytes, max_msgs_per_subject=1,
        ))  # fmt: skip

    def on_inventory(self, subject: str, headers: dict[str, str], data: bytes) -> bool:
        """One host's package set (a PACKAGES_STATE frame) into the index."""
        from hidsd.wire import frames
        from hidsd.wire.inventory import decode_packages_state

        host = subject.rsplit(".", 1)[-1]
        try:
            if headers.get(frames.H_HOST, host) != host:
                raise ProtocolError("host header does not match the subject")
            hdr = frames.unpack_header(data[: frames.HEADER_SIZE], frames.DEFAULT_MAX_FRAME_BYTES)
            state = decode_packages_state(data[frames.HEADER_SIZE :], INVENTORY_MAX_BYTES)
        except ProtocolError as exc:
            self.counters["bad_inventory"] += 1
            self.log.warning("bad_inventory", host=host, error=str(exc))
            return False
        packages = [(r.ecosystem, r.name, r.version) for r in state.packages]
        # a binary's source package, as advisories name it (openssl for libssl3)
        # (not for rpm: a .src.rpm name carries no epoch, so its version would sort below
        # the binary's and match ranges the binary is outside of)
        packages += [(r.ecosystem, r.source, r.source_version or r.version) for r in state.packages
                     if r.source and r.source != r.name and r.ecosystem != "rpm"]  # fmt: skip
        applied = self.index.update(host, packages, hdr.ts_ns / 1e9, state.os_id, state.os_version)
        self.counters["inventories" if applied else "inventories_older"] += 1
        return applied

    async def _inventory(self) -> None:
        """Follow the inventory stream: the latest per host first, then every new one."""
        import nats.errors
        from nats.js.api import ConsumerConfig, DeliverPolicy

        await self.ensure_inventory_stream()
        js = self.bus.client.jetstream(timeout=5)
        sub = await js.subscribe(
            self.subjects.inventory_all(), ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT),
            pending_msgs_limit=100_000,
        )  # fmt: skip
        self.inventory_ok = True
        while True:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            self.on_inventory(msg.subject, dict(msg.headers or {}), msg.data)

    def _set_inventory_ok(self, ok: bool) -> None:
        self.inventory_ok = ok

    # ------------------------------------------------------------------ lifecycle

    async def _keep_running(
        self, what: str, body: Callable[[], Awaitable[None]], set_ok: Callable[[bool], None]
    ) -> None:
        """Run `body` for good, retried with backoff: a NATS without JetStream (or a stream
        that cannot be created) degrades `what`, never presence or control."""
        import random

        from hidsd.bus.transport import backoff_delay

        failures = 0
        rng = random.Random()
        while True:
            started = time.monotonic()
            try:
                await body()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                set_ok(False)
                failures = 1 if time.monotonic() - started > 60 else failures + 1
                self.counters[f"{what}_errors"] += 1
                self.log.warning(f"{what}_unavailable", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(backoff_delay(failures, 1.0, 30.0, rng))

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_s)
            for host in self.presence.sweep(time.time()):
                rec = self.presence.agents[host]
                self.log.info("presence", host=host, liveness="offline", reason=rec.reason)

    async def run(self) -> int:
        await self.store.open()
        await self.bus.connect(stop=self.should_exit)
        if self.sys_bus is not None:
            await self.sys_bus.connect(stop=self.should_exit)
        try:
            s = self.subjects
            # each heartbeat and ack to one controller, which forwards a copy to the others
            ingest = self.ingest
            await self.bus.subscribe(s.heartbeat_all(), ingest.on_heartbeat, queue=INGEST_QUEUE)
            await self.bus.subscribe(s.ack_all(), ingest.on_ack, queue=INGEST_QUEUE)
            await self.bus.subscribe(s.ctl_sync(), self.cluster.on_sync)
            await self.bus.subscribe(s.ctl_peer(self.cluster.id, "*"), self.on_peer_request)
            await self.bus.subscribe(s.event_all(), self.ingest.on_event)
            await self.bus.subscribe(s.ctl_all(), self.on_request, queue=CONTROLLER_QUEUE)
            if self.sys_bus is not None:
                await self.sys_bus.subscribe("$SYS.ACCOUNT.*.CONNECT", self.ingest.on_advisory)
                await self.sys_bus.subscribe("$SYS.ACCOUNT.*.DISCONNECT", self.ingest.on_advisory)
            else:
                self.log.warning(
                    "no_system_account",
                    detail="offline detection relies on heartbeat timeouts only",
                )
            self.log.info("controller_running", version=__version__)
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self._sweep(), name="sweep"),
                    tg.create_task(self.cluster.run(), name="cluster"),
                    tg.create_task(
                        self._keep_running("inventory", self._inventory, self._set_inventory_ok),
                        name="inventory",
                    ),
                ]
                if self.settings.ingest:
                    tasks.append(
                        tg.create_task(
                            self._keep_running(
                                "telemetry", self.telemetry.run, self.telemetry.set_ok
                            ),
                            name="telemetry",
                        )
                    )
                await self.should_exit.wait()
                for t in tasks:
                    t.cancel()
        finally:
            if self.bus.connected:
                with contextlib.suppress(Exception):
                    await self.cluster.flush()  # hand what we received to the others
            if self.sys_bus is not None:
                await self.sys_bus.close(1.0)
            await self.bus.close(1.0)
            await self.store.close()
        return 0
