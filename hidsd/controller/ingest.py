"""What agents and NATS tell a controller: heartbeats and acks (each to one controller of a
queue group, which validates it and hands a copy to the cluster to forward), their forwarded
copies from peers, agent events, and the server's connect/disconnect advisories.

Bad input from a peer is a counted rejection (and a log line), never an exception."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any, Protocol

from nats.aio.msg import Msg

from hidsd.base.errors import ProtocolError
from hidsd.controller.acks import AckLedger
from hidsd.controller.presence import Presence
from hidsd.wire.commands import decode_ack
from hidsd.wire.heartbeat import Heartbeat, decode_heartbeat
from hidsd.wire.names import Subjects
from hidsd.wire.replies import Liveness
from hidsd.wire.rpc import Event, decode_event
from hidsd.wire.sync import HeartbeatMeta

#: Events kept per agent (oldest dropped first, and counted).
EVENTS_PER_AGENT = 20


class Forwarder(Protocol):
    """Where a validated heartbeat or ack goes next: the other controllers (`Cluster`)."""

    def forward_heartbeat(self, hb: Heartbeat, raw: bytes, skew_s: float | None = None) -> None: ...

    def forward_ack(self, raw: bytes) -> None: ...


class Ingest:
    """Validates what arrives and applies it to presence, the ack ledger and the event log."""

    def __init__(
        self, subjects: Subjects, presence: Presence, ledger: AckLedger, forward: Forwarder,
        counters: Counter[str], log: Any,
    ) -> None:  # fmt: skip
        self.subjects = subjects
        self.forward = forward
        self.presence = presence
        self.ledger = ledger
        self.counters = counters
        self.log = log
        #: host -> its latest events, oldest first
        self.events: dict[str, list[Event]] = {}

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
        self.forward.forward_heartbeat(hb, msg.data, skew)
        self.counters["heartbeats"] += 1
        self._log_presence(hb.host, was)

    def _log_presence(self, host: str, was: Liveness | None) -> None:
        rec = self.presence.agents[host]
        if was is not rec.liveness:
            self.log.info("presence", host=host, liveness=rec.liveness.value, reason=rec.reason)

    def on_forwarded_heartbeat(
        self, meta: HeartbeatMeta, raw: bytes | None, skew: float | None
    ) -> None:
        before = self.presence.agents.get(meta.host)
        was = before.liveness if before else None
        self.presence.on_forwarded(meta, raw, time.time(), skew)
        self.counters["heartbeats_forwarded_in"] += 1
        self._log_presence(meta.host, was)

    def on_forwarded_ack(self, raw: bytes) -> None:
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
        self.forward.forward_ack(msg.data)
        self.counters["acks"] += 1

    async def on_event(self, msg: Msg) -> None:
        try:
            event = Event.from_wire(decode_event(msg.data))
        except ProtocolError as exc:
            self.counters["bad_event"] += 1
            self.log.warning("bad_event", subject=msg.subject, error=exc.message)
            return
        if msg.subject != self.subjects.event(event.host):
            self.counters["event_subject_mismatch"] += 1
            return
        kept = self.events.setdefault(event.host, [])
        kept.append(event)
        if len(kept) > EVENTS_PER_AGENT:
            del kept[0]
            self.counters["events_dropped"] += 1
        self.counters["events"] += 1
        self.log.info("agent_event", **{k: v for k, v in event.to_wire().items() if k != "at"})

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
