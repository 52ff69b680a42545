"""hidsd.controller.ingest: what agents and NATS send, validated once; bad input is counted."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import structlog

from hidsd.controller.acks import AckLedger
from hidsd.controller.ingest import EVENTS_PER_AGENT, Ingest
from hidsd.controller.presence import AGENT_CLIENT_PREFIX, HeartbeatMeta, Presence
from hidsd.wire.commands import Ack, AckStatus, RunMode, encode_ack
from hidsd.wire.heartbeat import Heartbeat, encode_heartbeat
from hidsd.wire.names import Subjects
from hidsd.wire.replies import Liveness
from hidsd.wire.rpc import encode_event

S = Subjects("t")


@dataclass
class Msg:
    """What ingest reads of a NATS message."""

    subject: str
    data: bytes


@dataclass
class Forwarded:
    """The cluster's side: what ingest handed on to the other controllers."""

    heartbeats: list[tuple[str, float | None]] = field(default_factory=list)
    acks: list[bytes] = field(default_factory=list)

    def forward_heartbeat(self, hb: Heartbeat, raw: bytes, skew_s: float | None = None) -> None:
        self.heartbeats.append((hb.host, skew_s))

    def forward_ack(self, raw: bytes) -> None:
        self.acks.append(raw)


def ingest() -> tuple[Ingest, Forwarded]:
    fwd = Forwarded()
    log = structlog.get_logger("t")
    return Ingest(S, Presence(), AckLedger(), fwd, Counter(), log), fwd


def beat(host: str) -> Heartbeat:
    return Heartbeat(host=host, version="t", groups=(), mode=RunMode.RUNNING, applied_rev=1,
                     held=False, interval_s=1.0, seq=1, sent_at=1.0, uptime_s=1.0, cpu_pct=0.0,
                     rss_bytes=1)  # fmt: skip


async def test_heartbeats_and_acks_are_applied_and_forwarded_once() -> None:
    ing, fwd = ingest()
    await ing.on_heartbeat(Msg(S.heartbeat("h1"), encode_heartbeat(beat("h1"))))
    await ing.on_heartbeat(Msg(S.heartbeat("h2"), encode_heartbeat(beat("h1"))))  # not its own
    await ing.on_heartbeat(Msg(S.heartbeat("h3"), b"\xc1"))
    assert ing.presence.agents["h1"].liveness is Liveness.ONLINE
    assert set(ing.presence.agents) == {"h1"}
    assert [h for h, _ in fwd.heartbeats] == ["h1"]
    ack = encode_ack(Ack("c1", "h1", AckStatus.APPLIED, 1))
    await ing.on_ack(Msg(S.ack("c1"), ack))
    await ing.on_ack(Msg(S.ack("c1"), b"junk"))
    assert fwd.acks == [ack] and set(ing.ledger.get("c1") or {}) == {"h1"}
    assert ing.counters == Counter({"heartbeats": 1, "heartbeat_subject_mismatch": 1,
                                    "bad_heartbeat": 1, "acks": 1, "bad_ack": 1})  # fmt: skip


def test_peers_copies_are_applied_not_forwarded() -> None:
    ing, fwd = ingest()
    ing.on_forwarded_heartbeat(HeartbeatMeta.of(beat("h1")), encode_heartbeat(beat("h1")), 0.5)
    ing.on_forwarded_ack(encode_ack(Ack("c1", "h1", AckStatus.APPLIED, 1)))
    ing.on_forwarded_ack(b"junk")
    assert ing.presence.agents["h1"].skew_s == 0.5 and ing.ledger.get("c1") is not None
    assert not fwd.heartbeats and not fwd.acks
    assert ing.counters == Counter({"heartbeats_forwarded_in": 1, "acks_forwarded_in": 1,
                                    "bad_forwarded_ack": 1})  # fmt: skip


async def test_events_are_typed_and_bounded_per_agent() -> None:
    ing, _ = ingest()
    for i in range(EVENTS_PER_AGENT + 3):
        await ing.on_event(Msg(S.event("h1"), encode_event("h1", {"kind": "k", "i": i}, 1.0)))
    await ing.on_event(Msg(S.event("h2"), encode_event("h1", {"kind": "k"}, 1.0)))
    await ing.on_event(Msg(S.event("h1"), encode_event("h1", {"kind": "k", "x": {1: 2}}, 1.0)))
    kept = ing.events["h1"]
    assert len(kept) == EVENTS_PER_AGENT and kept[0].detail == {"i": 3} and kept[-1].kind == "k"
    assert ing.counters["events_dropped"] == 3 and ing.counters["event_subject_mismatch"] == 1
    assert ing.counters["bad_event"] == 1  # a detail map keyed by numbers


async def test_advisories_move_presence() -> None:
    ing, _ = ingest()

    def advisory(kind: str, cid: int) -> Msg:
        body = {"server": {"id": "S1"}, "client": {"id": cid, "name": f"{AGENT_CLIENT_PREFIX}h1"},
                "reason": "Client Closed"}  # fmt: skip
        return Msg(f"$SYS.ACCOUNT.A.{kind}", json.dumps(body).encode())

    await ing.on_advisory(advisory("CONNECT", 1))
    assert ing.presence.agents["h1"].liveness is Liveness.ONLINE
    await ing.on_advisory(advisory("DISCONNECT", 1))
    assert ing.presence.agents["h1"].liveness is Liveness.OFFLINE
    await ing.on_advisory(Msg("$SYS.ACCOUNT.A.CONNECT", b"{}"))
    assert ing.counters == Counter({"advisories": 2, "bad_advisory": 1})
