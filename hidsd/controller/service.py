"""hidsd-controller: presence, ack ledger, inventory index and fleet queries, answers to hidsctl.

Controllers divide the work (see `hidsd.controller.cluster`): each heartbeat and ack goes to one of
them (a NATS queue group), which validates it and forwards a compact copy to the others, so
every controller has the whole picture and any one can answer hidsctl (requests are spread
through another queue group). Connection advisories and agent events reach every controller.
Every controller follows the inventory stream (latest package set per host) into its own
index; a fleet query is split across the live controllers by host and merged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from nats.aio.msg import Msg

from hidsd import __version__
from hidsd.base.errors import HidsError, ProtocolError
from hidsd.base.settings import setting
from hidsd.bus.store import Store
from hidsd.bus.transport import Bus, BusOptions
from hidsd.controller.acks import AckLedger
from hidsd.controller.cluster import Cluster, owner
from hidsd.controller.endpoints import Endpoints
from hidsd.controller.inventory import InventoryIndex
from hidsd.controller.presence import HeartbeatMeta, Liveness, Presence
from hidsd.controller.queries import match_to_wire, merge_query, ranges_from_wire
from hidsd.controller.views import fleet_summary, host_desired_revision
from hidsd.wire.commands import decode_ack
from hidsd.wire.configstore import decode_config_pointer
from hidsd.wire.heartbeat import decode_heartbeat
from hidsd.wire.names import CONTROLLER_QUEUE, KeyLayout, Scope, Subjects
from hidsd.wire.rpc import decode_event

#: How many commands' acks the ledger keeps (oldest evicted first, and counted).
#: heartbeats and acks: each to one controller of this queue group
INGEST_QUEUE = "hidsd-ingest"
#: a host's package list, decompressed, may not exceed this (a zlib bomb is refused)
INVENTORY_MAX_BYTES = 32 << 20
#: online hosts whose inventory is older are counted as not answering
DEFAULT_MAX_AGE_S = 2 * 3600.0 + 600.0
#: Events kept per agent (oldest dropped first, and counted).
EVENTS_PER_AGENT = 20


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
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.telemetry: dict[str, dict[str, Any]] = {}
        self.telemetry_ok = False
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
        self.cluster = Cluster(
            settings.name, self.subjects, self.bus, self._on_forwarded_heartbeat,
            self._on_forwarded_ack, flush_s=settings.sync_flush_s,
        )  # fmt: skip
        max_payload = lambda: self.bus.client.max_payload if self.bus.connected else None  # noqa: E731
        self.peer_endpoints = Endpoints("peer", self.bus.publish, max_payload, self.log)
        self.peer_endpoints.add("query", self._query_share)
        self.peer_endpoints.add("stats", self._stats_share)
        #: the verbs hidsctl asks (`<prefix>.ctl.<verb>`), one endpoint each
        self.endpoints = Endpoints("controller", self.bus.publish, max_payload, self.log)
        for verb, handler in (
            ("agents.list", self.h_agents_list),
            ("agents.show", self.h_agents_show),
            ("fleet.status", self.h_fleet_status),
            ("expected", self.h_expected),
            ("acks", self.h_acks),
            ("ping", self.h_ping),
            ("config.status", self.h_config_status),
            ("telemetry.stats", self.h_telemetry_stats),
            ("query", self.h_query),
            ("controllers", self.h_controllers),
            ("inventory.stats", self.h_inventory_stats),
            ("endpoints", self.h_endpoints),
        ):
            self.endpoints.add(verb, handler)

    # ------------------------------------------------------------------ inputs

    async def on_heartbeat(self, msg: Msg) -> None:
        try:
            hb = decode_heartbeat(msg.data)
        except ProtocolError as exc:
            self.counters["bad_heartbeat"] += 1
            self.log.warning("bad_heartbeat", subject=msg.subject, error=exc.message)
            return
        if msg.subject != self.subjects.heartbeat(hb.host):
            self.counters["heartbeat_subject_mismatch"] += 1
            return
        before = self.presence.agents.get(hb.host)
        was = before.liveness if before else None
        skew = self.presence.on_heartbeat(hb, time.time())
        self.cluster.forward_heartbeat(hb, msg.data, skew)
        self.counters["heartbeats"] += 1
        self._log_presence(hb.host, was)

    def _log_presence(self, host: str, was: Liveness | None) -> None:
        rec = self.presence.agents[host]
        if was is not rec.liveness:
            self.log.info("presence", host=host, liveness=rec.liveness.value, reason=rec.reason)

    def _on_forwarded_heartbeat(
        self, meta: HeartbeatMeta, raw: bytes | None, skew: float | None
    ) -> None:
        before = self.presence.agents.get(meta.host)
        was = before.liveness if before else None
        self.presence.on_forwarded(meta, raw, time.time(), skew)
        self.counters["heartbeats_forwarded_in"] += 1
        self._log_presence(meta.host, was)

    def _on_forwarded_ack(self, raw: bytes) -> None:
        try:
            self.ledger.record(decode_ack(raw))
            self.counters["acks_forwarded_in"] += 1
        except ProtocolError:
            self.counters["bad_forwarded_ack"] += 1

    async def on_ack(self, msg: Msg) -> None:
        try:
            ack = decode_ack(msg.data)
        except ProtocolError as exc:
            self.counters["bad_ack"] += 1
            self.log.warning("bad_ack", subject=msg.subject, error=exc.message)
            return
        self.ledger.record(ack)
        self.cluster.forward_ack(msg.data)
        self.counters["acks"] += 1

    async def on_event(self, msg: Msg) -> None:
        try:
            event = decode_event(msg.data)
        except ProtocolError as exc:
            self.counters["bad_event"] += 1
            self.log.warning("bad_event", subject=msg.subject, error=exc.message)
            return
        if msg.subject != self.subjects.event(event["host"]):
            self.counters["event_subject_mismatch"] += 1
            return
        kept = self.events.setdefault(event["host"], [])
        kept.append(event)
        if len(kept) > EVENTS_PER_AGENT:
            del kept[0]
            self.counters["events_dropped"] += 1
        self.counters["events"] += 1
        self.log.info("agent_event", **{k: v for k, v in event.items() if k != "at"})

    async def on_advisory(self, msg: Msg) -> None:
        try:
            event = json.loads(msg.data)
            client = event["client"]
            conn = (str(event["server"]["id"]), int(client["id"]))
            name = str(client.get("name", ""))
        except (ValueError, KeyError, TypeError):
            self.counters["bad_advisory"] += 1
            return
        now = time.time()
        host = self.presence.host_of(name)
        if host is None:
            return
        if msg.subject.endswith(".CONNECT"):
            self.presence.on_connect(name, conn, now)
        else:
            self.presence.on_disconnect(name, conn, str(event.get("reason", "")), now)
            rec = self.presence.agents.get(host)
            if rec is not None and rec.liveness is Liveness.OFFLINE:
                self.log.info("presence", host=host, liveness="offline", reason=rec.reason)
        self.counters["advisories"] += 1

    # ------------------------------------------------------------------ requests

    async def on_request(self, msg: Msg) -> None:
        await self.endpoints.serve(msg, msg.subject.rsplit(".ctl.", 1)[-1])

    async def h_endpoints(self, params: dict[str, Any]) -> Any:
        """Each verb's counters (requests, errors, internal errors, over-size, average ms)."""
        return {"controller": self.endpoints.stats(), "peer": self.peer_endpoints.stats()}

    async def _desired_revisions(self) -> dict[str, int] | None:
        try:
            kvs, _ = await self.store.get_prefix(self.keys.desired_prefix)
        except HidsError:
            return None
        return {kv.key: kv.mod_revision for kv in kvs}

    def _agent_view(self, revisions: dict[str, int] | None, now: float) -> list[dict[str, Any]]:
        out = []
        for rec in sorted(self.presence.agents.values(), key=lambda r: r.host):
            d = rec.to_dict(now)
            if revisions is not None and rec.heartbeat is not None:
                want = host_desired_revision(self.keys, revisions, rec.host, rec.heartbeat.groups)
                d["desired_rev"] = want
                d["converged"] = rec.heartbeat.applied_rev >= want
            else:
                d["desired_rev"] = None
                d["converged"] = None
            out.append(d)
        return out

    async def h_agents_list(self, params: dict[str, Any]) -> Any:
        revisions = await self._desired_revisions()
        return {
            "agents": self._agent_view(revisions, time.time()),
            "store_ok": revisions is not None,
        }

    async def h_agents_show(self, params: dict[str, Any]) -> Any:
        host = params.get("host")
        if host not in self.presence.agents:
            raise ProtocolError(f"unknown agent {host!r}")
        revisions = await self._desired_revisions()
        view = [a for a in self._agent_view(revisions, time.time()) if a["host"] == host]
        return {**view[0], "events": self.events.get(str(host), [])}

    async def h_fleet_status(self, params: dict[str, Any]) -> Any:
        revisions = await self._desired_revisions()
        return fleet_summary(self._agent_view(revisions, time.time()), revisions)

    async def h_expected(self, params: dict[str, Any]) -> Any:
        try:
            scope = Scope(params["scope"])
            target = str(params["target"])
        except (KeyError, ValueError) as exc:
            raise ProtocolError("expected: needs scope and target") from exc
        return self.presence.expected(scope, target)

    async def h_acks(self, params: dict[str, Any]) -> Any:
        acks = self.ledger.get(str(params.get("cmd_id", "")))
        if acks is None:
            raise ProtocolError("no acks recorded for that command (unknown or evicted)")
        return {
            h: {"status": a.status.value, "rev": a.rev, "detail": a.detail} for h, a in acks.items()
        }

    async def _config_pointers(self) -> dict[str, int] | None:
        """Current version per scope label, from the `current` pointers in etcd."""
        try:
            kvs, _ = await self.store.get_prefix(self.keys.config_prefix, keys_only=True)
            pointer_keys = [kv.key for kv in kvs if kv.key.endswith("/current")]
            pointers, _ = await self.store.get_many(pointer_keys) if pointer_keys else ([], 0)
        except HidsError:
            return None
        out: dict[str, int] = {}
        base = self.keys.config_prefix
        for kv in pointers:
            rest = kv.key[len(base) : -len("/current")]
            label = "fleet" if rest == "fleet" else rest.replace("/", ":", 1)
            try:
                out[label] = decode_config_pointer(kv.value)[0]
            except ProtocolError:
                out[label] = -1  # corrupt pointer: no agent can converge to it
        return out

    async def h_config_status(self, params: dict[str, Any]) -> Any:
        """Which agents run which versions, which rejected one and why, who lags."""
        pointers = await self._config_pointers()
        rows = []
        for rec in sorted(self.presence.agents.values(), key=lambda r: r.host):
            hb = rec.heartbeat
            if hb is None:
                continue
            cfg = hb.config
            running = dict(cfg.versions)
            want: dict[str, int] | None = None
            if pointers is not None:
                labels = ["fleet", *(f"group:{g}" for g in hb.groups), f"host:{rec.host}"]
                want = {lbl: pointers[lbl] for lbl in labels if lbl in pointers}
            rows.append({
                "host": rec.host,
                "liveness": rec.liveness.value,
                "running": running,
                "desired": want,
                "converged": None if want is None else running == want,
                "status": cfg.status,
                "rejected": cfg.to_map()["rejected"],
                "fingerprint": cfg.fingerprint or None,
            })  # fmt: skip
        return {"store_ok": pointers is not None, "current": pointers or {}, "agents": rows}

    async def h_ping(self, params: dict[str, Any]) -> Any:
        return {
            "name": self.settings.name,
            "version": __version__,
            "uptime_s": round(time.time() - self.started, 3),
            "counters": dict(self.counters),
            "presence_events": self.sys_bus is not None,
            "id": self.cluster.id,
            "members": self.cluster.describe(),
            "cluster": dict(self.cluster.counters),
            "inventory": {"ok": self.inventory_ok, **self.index.stats()},
        }

    # ------------------------------------------------------------------ lifecycle

    async def _ensure_stream(self, cfg: Any) -> None:
        js = self.bus.client.jetstream(timeout=5)
        try:
            await js.add_stream(cfg)
        except Exception as exc:  # already exists with other settings: update it
            if "already in use" not in str(exc):
                raise
            await js.update_stream(cfg)

    async def ensure_stream(self) -> None:
        """Create or update the telemetry stream: bounded, with a de-duplication window so a
        batch resent after a lost ack is stored once."""
        from nats.js.api import DiscardPolicy, StorageType, StreamConfig

        await self._ensure_stream(StreamConfig(
            name=self.subjects.telemetry_stream(),
            subjects=[self.subjects.telemetry_all()],
            max_bytes=self.settings.stream_max_bytes,
            max_age=self.settings.stream_max_age_s,
            discard=DiscardPolicy.OLD,
            storage=StorageType.FILE,
            duplicate_window=120.0,
        ))  # fmt: skip

    def _account(self, headers: dict[str, str], body_len: int) -> None:
        """Per host+plugin: records, batches, and gaps or repeats in the sequence."""
        from hidsd.wire import frames

        host = headers.get(frames.H_HOST, "?")
        plugin = headers.get(frames.H_PLUGIN, "?")
        try:
            epoch = int(headers.get(frames.H_EPOCH, "0"))
            seq = int(headers.get(frames.H_SEQ, "0"))
            count = int(headers.get(frames.H_COUNT, "0"))
        except ValueError:
            self.counters["bad_telemetry"] += 1
            return
        st = self.telemetry.setdefault(f"{host}/{plugin}", {
            "host": host, "plugin": plugin, "records": 0, "batches": 0, "bytes": 0,
            "gaps": 0, "missing_records": 0, "repeats": 0, "epoch": epoch, "next_seq": seq,
            "last_at": 0.0,
        })  # fmt: skip
        if epoch != st["epoch"]:
            st["epoch"], st["next_seq"] = epoch, 1
        if seq > st["next_seq"]:
            st["gaps"] += 1
            st["missing_records"] += seq - st["next_seq"]
        elif seq < st["next_seq"]:
            st["repeats"] += 1
        st["next_seq"] = max(st["next_seq"], seq + count)
        st["records"] += count
        st["batches"] += 1
        st["bytes"] += body_len
        st["last_at"] = time.time()

    async def _ingest(self) -> None:
        """A durable pull consumer shared by all controllers: each batch goes to one."""
        import nats.errors

        js = self.bus.client.jetstream(timeout=5)
        sub = await js.pull_subscribe(
            self.subjects.telemetry_all(), durable="hidsd-controllers",
            stream=self.subjects.telemetry_stream(),
        )  # fmt: skip
        while True:
            try:
                msgs = await sub.fetch(256, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                self._account(dict(msg.headers or {}), len(msg.data))
                await msg.ack()
            self.counters["telemetry_batches"] += len(msgs)

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

    async def _telemetry(self) -> None:
        await self.ensure_stream()
        self.telemetry_ok = True
        await self._ingest()

    def _set_telemetry_ok(self, ok: bool) -> None:
        self.telemetry_ok = ok

    async def h_telemetry_stats(self, params: dict[str, Any]) -> Any:
        return {"streams": sorted(self.telemetry.values(), key=lambda d: (d["host"], d["plugin"]))}

    # ------------------------------------------------------------------ inventory, queries

    async def ensure_inventory_stream(self) -> None:
        """The latest package set per host (one message kept per subject): the durable source
        every controller's index is rebuilt from, and what offline hosts are answered from."""
        from nats.js.api import DiscardPolicy, StorageType, StreamConfig

        await self._ensure_stream(StreamConfig(
            name=self.subjects.inventory_stream(),
            subjects=[self.subjects.inventory_all()],
            max_msgs_per_subject=1,
            max_bytes=self.settings.inventory_max_bytes,
            discard=DiscardPolicy.OLD,
            storage=StorageType.FILE,
            duplicate_window=120.0,
        ))  # fmt: skip

    def on_inventory(self, subject: str, headers: dict[str, str], data: bytes) -> bool:
        """One host's package set (a PACKAGES_STATE frame) into the index."""
        import zlib

        import msgpack

        from hidsd.wire import frames

        host = subject.rsplit(".", 1)[-1]
        try:
            if headers.get(frames.H_HOST, host) != host:
                raise ProtocolError("host header does not match the subject")
            hdr = frames.unpack_header(data[: frames.HEADER_SIZE], frames.DEFAULT_MAX_FRAME_BYTES)
            record = msgpack.unpackb(data[frames.HEADER_SIZE :], raw=False)
            z = zlib.decompressobj()
            blob = z.decompress(record["packages_z"], INVENTORY_MAX_BYTES)
            if z.unconsumed_tail:
                raise ProtocolError(f"package list over {INVENTORY_MAX_BYTES} bytes")
            rows = msgpack.unpackb(blob, raw=False)
            packages = [(str(r[0]), str(r[1]), str(r[2])) for r in rows]
            # a binary's source package, as advisories name it (openssl for libssl3)
            # (not for rpm: a .src.rpm name carries no epoch, so its version would sort below
            # the binary's and match ranges the binary is outside of)
            packages += [(str(r[0]), str(r[4]), str(r[5] or r[2])) for r in rows
                         if len(r) >= 6 and r[4] and r[4] != r[1] and r[0] != "rpm"]  # fmt: skip
            os_id, os_version = str(record.get("os_id", "")), str(record.get("os_version", ""))
        except (ProtocolError, ValueError, KeyError, TypeError, IndexError, zlib.error) as exc:
            self.counters["bad_inventory"] += 1
            self.log.warning("bad_inventory", host=host, error=str(exc))
            return False
        applied = self.index.update(host, packages, hdr.ts_ns / 1e9, os_id, os_version)
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

    async def h_inventory_stats(self, params: dict[str, Any]) -> Any:
        now = time.time()
        hosts = {h: round(now - (self.index.inventory_time(h) or now), 1)
                 for h in self.index.hosts()}  # fmt: skip
        return {"ok": self.inventory_ok, **self.index.stats(), "age_s": hosts}

    async def on_peer_request(self, msg: Msg) -> None:
        """A coordinator's request for this controller's share of split work."""
        await self.peer_endpoints.serve(msg, msg.subject.rsplit(".", 1)[-1])

    async def _query_share(self, params: dict[str, Any]) -> Any:
        """Evaluate the hosts of one share (those `shard` owns among `members`)."""
        from hidsd.wire.ranges import QueryError

        try:
            ranges = ranges_from_wire(params["ranges"])
            members = [str(m) for m in params["members"]]
            shard = str(params["shard"])
        except (KeyError, TypeError, ValueError, QueryError) as exc:
            raise ProtocolError(f"query share: {exc}") from exc
        if self.settings.test_share_delay_s:  # fault injection for tests: a share in flight
            await asyncio.sleep(self.settings.test_share_delay_s)
        mine = [h for h in self.index.hosts() if owner(h, members) == shard]
        uncomparable: dict[str, list[tuple[str, str]]] = {}
        matches, counters = self.index.evaluate(ranges, mine, uncomparable)
        return {
            "uncomparable": {h: [list(pv) for pv in v] for h, v in uncomparable.items()},
            "controller": self.settings.name,
            "evaluated": {h: self.index.inventory_time(h) for h in mine},
            "matches": {h: [match_to_wire(m) for m in ms] for h, ms in matches.items()},
            "counters": counters,
        }

    async def _stats_share(self, params: dict[str, Any]) -> Any:
        return {
            "name": self.settings.name,
            "uptime_s": round(time.time() - self.started, 3),
            "counters": dict(self.counters),
            "cluster": dict(self.cluster.counters),
            "agents": len(self.presence.agents),
            "inventory_hosts": len(self.index),
        }

    async def h_controllers(self, params: dict[str, Any]) -> Any:
        """Every live controller's own counters (how the work is divided)."""
        results, how = await self.cluster.scatter("stats", {}, self._stats_share, timeout_s=1.0)
        rows = []
        for mid, res in results.items():
            if how[mid].startswith("redone"):  # our own numbers are not theirs
                member = self.cluster.members.get(mid)
                rows.append({"id": mid, "name": member.name if member else "?",
                             "error": "did not answer"})  # fmt: skip
            else:
                rows.append({"id": mid, **res})
        rows.sort(key=lambda r: str(r["name"]))
        return {"controllers": rows}

    async def h_query(self, params: dict[str, Any]) -> Any:
        """Which hosts run an affected version: split over the controllers, merged here, with
        every known host accounted for (matched, clean, offline from its last inventory, or
        no answer)."""
        from hidsd.wire.ranges import QueryError

        try:
            wire = list(params["ranges"])
            ranges_from_wire(wire)  # reject a bad query here, before any peer sees it
            max_age = float(params.get("max_age_s", DEFAULT_MAX_AGE_S))
        except (KeyError, TypeError, ValueError, QueryError) as exc:
            raise ProtocolError(f"query: {getattr(exc, 'message', exc)}") from exc
        started = time.monotonic()
        results, how = await self.cluster.scatter("query", {"ranges": wire}, self._query_share)
        liveness = {h: r.liveness.value for h, r in self.presence.agents.items()}
        return merge_query(results, how, liveness, max_age, started, time.time())

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
            await self.bus.subscribe(s.heartbeat_all(), self.on_heartbeat, queue=INGEST_QUEUE)
            await self.bus.subscribe(s.ack_all(), self.on_ack, queue=INGEST_QUEUE)
            await self.bus.subscribe(s.ctl_sync(), self.cluster.on_sync)
            await self.bus.subscribe(s.ctl_peer(self.cluster.id, "*"), self.on_peer_request)
            await self.bus.subscribe(s.event_all(), self.on_event)
            await self.bus.subscribe(s.ctl_all(), self.on_request, queue=CONTROLLER_QUEUE)
            if self.sys_bus is not None:
                await self.sys_bus.subscribe("$SYS.ACCOUNT.*.CONNECT", self.on_advisory)
                await self.sys_bus.subscribe("$SYS.ACCOUNT.*.DISCONNECT", self.on_advisory)
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
                                "telemetry", self._telemetry, self._set_telemetry_ok
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
