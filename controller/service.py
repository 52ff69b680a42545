"""hidsd-controller: presence, ack ledger, answers to hidsctl.

Every controller subscribes to all heartbeats, acks and connection advisories (so each has the
whole picture and any one can answer), and serves hidsctl requests through a NATS queue group
(so requests are spread over however many controllers run).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from nats.aio.msg import Msg

from controller.presence import Liveness, Presence
from hidsd import __version__
from hidsd.bus.protocol import (
    CONTROLLER_QUEUE,
    Ack,
    KeyLayout,
    Scope,
    Subjects,
    decode_ack,
    decode_config_pointer,
    decode_event,
    decode_heartbeat,
    decode_request,
    encode_reply,
)
from hidsd.bus.store import Store
from hidsd.bus.transport import Bus, BusOptions
from hidsd.core.errors import HidsError, ProtocolError

#: How many commands' acks the ledger keeps (oldest evicted first, and counted).
LEDGER_SIZE = 1024
#: Events kept per agent (oldest dropped first, and counted).
EVENTS_PER_AGENT = 20


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    servers: tuple[str, ...]
    etcd_endpoints: tuple[str, ...]
    etcd_user: str | None = None
    etcd_password: str | None = None
    sys_servers: tuple[str, ...] = ()
    subject_prefix: str = "hidsd"
    key_prefix: str = "/hidsd/"
    timeout_factor: float = 3.0
    sweep_s: float = 0.5
    name: str = "controller"
    #: telemetry stream limits (JetStream): bounded, oldest discarded first
    stream_max_bytes: int = 1 << 30
    stream_max_age_s: float = 7 * 86400.0
    ingest: bool = True


class AckLedger:
    """Acks per command, bounded; what falls off the end is counted."""

    def __init__(self, size: int = LEDGER_SIZE) -> None:
        self.size = size
        self.commands: OrderedDict[str, dict[str, Ack]] = OrderedDict()
        self.evicted = 0

    def record(self, ack: Ack) -> None:
        acks = self.commands.get(ack.cmd_id)
        if acks is None:
            acks = self.commands[ack.cmd_id] = {}
            while len(self.commands) > self.size:
                self.commands.popitem(last=False)
                self.evicted += 1
        acks[ack.host] = ack

    def get(self, cmd_id: str) -> dict[str, Ack] | None:
        return self.commands.get(cmd_id)


def host_desired_revision(
    keys: KeyLayout, revisions: dict[str, int], host: str, groups: tuple[str, ...]
) -> int:
    """The newest desired-state revision that governs one host (0 if none is written)."""
    return max((revisions.get(k, 0) for k in keys.applicable(host, groups)), default=0)


Handler = Callable[[dict[str, Any]], Awaitable[Any]]


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
        self.handlers: dict[str, Handler] = {
            "agents.list": self.h_agents_list,
            "agents.show": self.h_agents_show,
            "fleet.status": self.h_fleet_status,
            "expected": self.h_expected,
            "acks": self.h_acks,
            "ping": self.h_ping,
            "config.status": self.h_config_status,
            "telemetry.stats": self.h_telemetry_stats,
        }

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
        self.presence.on_heartbeat(hb, time.time())
        self.counters["heartbeats"] += 1
        rec = self.presence.agents[hb.host]
        if was is not rec.liveness:
            self.log.info("presence", host=hb.host, liveness=rec.liveness.value, reason=rec.reason)

    async def on_ack(self, msg: Msg) -> None:
        try:
            ack = decode_ack(msg.data)
        except ProtocolError as exc:
            self.counters["bad_ack"] += 1
            self.log.warning("bad_ack", subject=msg.subject, error=exc.message)
            return
        self.ledger.record(ack)
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
        verb = msg.subject.rsplit(".ctl.", 1)[-1]
        handler = self.handlers.get(verb)
        try:
            if handler is None:
                raise ProtocolError(f"unknown request {verb!r}")
            params = decode_request(msg.data)
            reply = encode_reply(await handler(params))
        except HidsError as exc:
            reply = encode_reply(error=exc.message)
        if msg.reply:
            await self.bus.publish(msg.reply, reply)

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
        agents = self._agent_view(revisions, time.time())
        online = [a for a in agents if a["liveness"] == "online"]
        by_mode = Counter(a.get("mode", "unknown") for a in online)
        by_breaker = Counter(a.get("breaker", {}).get("state", "unknown") for a in online)
        breaker_not_normal = {
            a["host"]: {
                "state": a["breaker"].get("state"),
                "reason": a["breaker"].get("reason"),
                "denylist": sorted(a["breaker"].get("denylist", {})),
            }
            for a in online
            if a.get("breaker", {}).get("state", "normal") != "normal"
        }
        lagging = sorted(a["host"] for a in agents if a["converged"] is False)
        return {
            "agents": len(agents),
            "online": len(online),
            "offline": len(agents) - len(online),
            "offline_hosts": sorted(a["host"] for a in agents if a["liveness"] == "offline"),
            "by_mode": dict(by_mode),
            "by_breaker": dict(by_breaker),
            "breaker_not_normal": breaker_not_normal,
            "held": sorted(a["host"] for a in agents if a.get("held")),
            "not_converged": lagging,
            "store_ok": revisions is not None,
            "desired": revisions or {},
        }

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
            cfg = hb.config or {}
            running = {str(k): v for k, v in (cfg.get("versions") or {}).items()}
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
                "status": cfg.get("status", "unknown"),
                "rejected": cfg.get("rejected"),
                "fingerprint": cfg.get("fingerprint"),
            })  # fmt: skip
        return {"store_ok": pointers is not None, "current": pointers or {}, "agents": rows}

    async def h_ping(self, params: dict[str, Any]) -> Any:
        return {
            "name": self.settings.name,
            "version": __version__,
            "uptime_s": round(time.time() - self.started, 3),
            "counters": dict(self.counters),
            "presence_events": self.sys_bus is not None,
        }

    # ------------------------------------------------------------------ lifecycle

    async def ensure_stream(self) -> None:
        """Create or update the telemetry stream: bounded, with a de-duplication window so a
        batch resent after a lost ack is stored once."""
        from nats.js.api import DiscardPolicy, StorageType, StreamConfig

        js = self.bus.client.jetstream(timeout=5)
        cfg = StreamConfig(
            name=self.subjects.telemetry_stream(),
            subjects=[self.subjects.telemetry_all()],
            max_bytes=self.settings.stream_max_bytes,
            max_age=self.settings.stream_max_age_s,
            discard=DiscardPolicy.OLD,
            storage=StorageType.FILE,
            duplicate_window=120.0,
        )
        try:
            await js.add_stream(cfg)
        except Exception as exc:  # already exists with other settings: update it
            if "already in use" not in str(exc):
                raise
            await js.update_stream(cfg)

    def _account(self, headers: dict[str, str], body_len: int) -> None:
        """Per host+plugin: records, batches, and gaps or repeats in the sequence."""
        from hidsd.plugins import frames

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

    async def _telemetry_service(self) -> None:
        """Stream + ingest, retried with backoff: a NATS without JetStream (or a stream that
        cannot be created) degrades telemetry, never presence or control."""
        import random

        from hidsd.bus.transport import backoff_delay

        failures = 0
        rng = random.Random()
        while True:
            try:
                await self.ensure_stream()
                self.telemetry_ok = True
                await self._ingest()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                self.telemetry_ok = False
                self.counters["telemetry_errors"] += 1
                self.log.warning("telemetry_unavailable", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(backoff_delay(failures, 1.0, 30.0, rng))

    async def h_telemetry_stats(self, params: dict[str, Any]) -> Any:
        return {"streams": sorted(self.telemetry.values(), key=lambda d: (d["host"], d["plugin"]))}

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
            await self.bus.subscribe(s.heartbeat_all(), self.on_heartbeat)
            await self.bus.subscribe(s.ack_all(), self.on_ack)
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
                tasks = [tg.create_task(self._sweep(), name="sweep")]
                if self.settings.ingest:
                    tasks.append(tg.create_task(self._telemetry_service(), name="telemetry"))
                await self.should_exit.wait()
                for t in tasks:
                    t.cancel()
        finally:
            if self.sys_bus is not None:
                await self.sys_bus.close(1.0)
            await self.bus.close(1.0)
            await self.store.close()
        return 0
