"""hidsd.wire.status: the controllers' own status replies survive the wire unchanged, and a
malformed one is refused with the field named."""

from __future__ import annotations

from typing import Any

import pytest

from hidsd.base.errors import ProtocolError
from hidsd.wire.rpc import decode_reply, encode_reply
from hidsd.wire.status import (
    NO_ANSWER,
    ControllerRow,
    Controllers,
    EndpointCounters,
    EndpointsReply,
    EndpointTable,
    IndexStats,
    InventoryHealth,
    InventoryStats,
    MemberRow,
    Ping,
    StatsShare,
    StreamStats,
    TelemetryStats,
)

INDEX = IndexStats(hosts=2, triples=10, packages=12, os_groups=1, approx_bytes=4096)
SHARE = StatsShare("c1", 12.5, {"heartbeats": 3}, {"sync_sent": 2}, 2, 1)
TABLE = EndpointTable({"ping": EndpointCounters(3, 1, 0, 0, 0.25, "unknown agent 'x'")}, 2)

REPLIES: list[Any] = [
    Ping("c1", "0.1.0", 12.5, {"heartbeats": 3}, True, "ab12",
         (MemberRow("ab12", "c1", True, 0.1, 12), MemberRow("cd34", "c2", False, 0.5, 3.5)),
         {"sync_sent": 2}, InventoryHealth(False, INDEX)),
    SHARE,
    Controllers((ControllerRow("ab12", "c1", SHARE), ControllerRow("cd34", "c2", None))),
    EndpointsReply(TABLE, EndpointTable({}, 0)),
    TelemetryStats((StreamStats("h1", "procmon", 10, 2, 300, 1, 4, 0, 7, 15, 1000.5),)),
    InventoryStats(True, INDEX, {"h1": 3.5, "h2": 0}),
]  # fmt: skip


@pytest.mark.parametrize("reply", REPLIES, ids=lambda r: type(r).__name__)
def test_reply_round_trips(reply: Any) -> None:
    wire = decode_reply(encode_reply(reply.to_wire()))
    back = type(reply).from_wire(wire)
    assert back == reply
    assert back.to_wire() == wire


def test_flat_maps_as_before() -> None:
    """Sizes sit beside `ok` (not nested), a controller that did not answer says so."""
    assert InventoryStats(True, INDEX, {}).to_wire() == {"ok": True, **INDEX.to_wire(), "age_s": {}}
    assert ControllerRow("x", "c2", None).to_wire() == {"id": "x", "name": "c2",
                                                        "error": NO_ANSWER}  # fmt: skip
    assert ControllerRow("x", "c1", SHARE).to_wire() == {"id": "x", **SHARE.to_wire()}
    assert MemberRow("x", "c", True, 0.0, 1.0).to_wire()["self"] is True


@pytest.mark.parametrize(
    ("reply", "wire", "message"),
    [
        (Ping, {**REPLIES[0].to_wire(), "counters": {"x": 1.5}},
         r"ping reply\.counters\.x: expected a whole number"),
        (Ping, {**REPLIES[0].to_wire(), "inventory": {"ok": True}},
         r"ping reply\.inventory: missing field 'hosts'"),
        (Ping, {**REPLIES[0].to_wire(), "members": [{"id": "a"}]},
         r"members\[0\]: missing field 'name'"),
        (Controllers, {"controllers": [{"id": "a", "name": "c"}]},
         r"controllers\[0\]: missing field 'uptime_s'"),
        (StatsShare, {**SHARE.to_wire(), "agents": "2"}, r"stats reply\.agents: expected a whole"),
        (EndpointsReply, {"controller": TABLE.to_wire()}, "missing field 'peer'"),
        (EndpointsReply, {"controller": TABLE.to_wire(), "peer": {"endpoints": {"q": {}},
                                                                  "unknown": 0}},
         r"peer\.endpoints\.q: missing field 'requests'"),
        (TelemetryStats, {"streams": [{**REPLIES[4].streams[0].to_wire(), "gaps": -0.5}]},
         r"streams\[0\]\.gaps: expected a whole number"),
        (InventoryStats, {**REPLIES[5].to_wire(), "age_s": []}, r"age_s: expected a map"),
    ],
)  # fmt: skip
def test_malformed_reply_is_refused(reply: Any, wire: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        reply.from_wire(wire)
