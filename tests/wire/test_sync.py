"""The controllers' sync batch: round trip, the bytes the cluster always sent, older members'
seven-element items, and malformed batches or items refused with a message."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from hidsd.base.errors import ProtocolError
from hidsd.wire.commands import RunMode
from hidsd.wire.heartbeat import Heartbeat
from hidsd.wire.sync import HeartbeatMeta, SyncBatch, SyncHeartbeat, decode_sync, encode_sync

META = HeartbeatMeta("h1", ("web", "db"), 10.0, 1700000000.25, 42, False)
ITEM = [*META.to_list(), b"raw heartbeat", -1.5]


def batch_map(**overrides: Any) -> dict[str, Any]:
    m: dict[str, Any] = {"id": "c0ffee00", "name": "ctl-a", "started": 1700000000.5,
                         "hb": [ITEM], "acks": [b"ack-1"]}  # fmt: skip
    m.update(overrides)
    return {k: v for k, v in m.items() if v is not ...}


def packed(**overrides: Any) -> bytes:
    data: bytes = msgpack.packb(batch_map(**overrides), use_bin_type=True)
    return data


def test_meta_of_a_heartbeat_round_trips() -> None:
    hb = Heartbeat(host="h9", version="t", groups=("web",), mode=RunMode.RUNNING,
                   applied_rev=7, held=False, interval_s=1.0, seq=7, sent_at=123.5,
                   uptime_s=1.0, cpu_pct=0.0, rss_bytes=1)  # fmt: skip
    m = HeartbeatMeta.of(hb)
    assert HeartbeatMeta.from_list(m.to_list()) == m


def test_round_trip_and_the_bytes_the_cluster_sent_before() -> None:
    batch = SyncBatch("c0ffee00", "ctl-a", 1700000000.5,
                      (SyncHeartbeat(META, b"raw heartbeat", -1.5), SyncHeartbeat(META)),
                      (b"ack-1",))  # fmt: skip
    data = encode_sync(batch)
    # as `Cluster.flush` built it inline: msgpack of the map, items [*meta, raw, skew_s]
    assert data == packed(hb=[ITEM, [*META.to_list(), None, None]])
    assert decode_sync(data) == batch


def test_items_of_older_members_have_no_skew() -> None:
    got = decode_sync(packed(hb=[ITEM[:7]], acks=[]))
    assert got.heartbeats == (SyncHeartbeat(META, b"raw heartbeat", None),)
    assert got.rejected == ()
    # an int where a float was sent is a number too
    got = decode_sync(packed(hb=[["h1", [], 10, 5, 1, True, None, 2]], started=7))
    assert got.heartbeats[0].meta == HeartbeatMeta("h1", (), 10.0, 5.0, 1, True)
    assert got.heartbeats[0].skew_s == 2.0 and got.started == 7.0


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"id": 5}, "'id' has the wrong type"),
        ({"name": ...}, "missing field 'name'"),
        ({"started": "yesterday"}, "'started' has the wrong type"),
        ({"started": True}, "'started' has the wrong type"),
        ({"hb": {"h1": ITEM}}, "'hb' has the wrong type"),
        ({"acks": ...}, "missing field 'acks'"),
    ],
)
def test_malformed_batch_is_refused(overrides: dict[str, Any], words: str) -> None:
    with pytest.raises(ProtocolError, match="sync batch") as info:
        decode_sync(packed(**overrides))
    assert words in info.value.message


@pytest.mark.parametrize("data", [b"", b"\xc1", msgpack.packb([1, 2]), b"\x81\xa2id"])
def test_not_a_batch(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="sync batch"):
        decode_sync(data)


@pytest.mark.parametrize(
    ("item", "words"),
    [
        ("h1", "at least 7 fields"),
        (ITEM[:6], "at least 7 fields"),
        (["", ["g"], 1.0, 1.0, 1, False, None], "host must be"),
        (["h1", "g", 1.0, 1.0, 1, False, None], "groups must be"),
        (["h1", [3], 1.0, 1.0, 1, False, None], "groups must be"),
        (["h1", [], "1", 1.0, 1, False, None], "must be numbers"),
        (["h1", [], 1.0, None, 1, False, None], "must be numbers"),
        (["h1", [], 1.0, 1.0, 1.5, False, None], "seq must be"),
        (["h1", [], 1.0, 1.0, 1, 0, None], "bye a boolean"),
        (["h1", [], 1.0, 1.0, 1, False, "text"], "are not bytes"),
        (["h1", [], 1.0, 1.0, 1, False, None, "late"], "not a number"),
    ],
)
def test_malformed_items_are_left_out_and_named(item: Any, words: str) -> None:
    got = decode_sync(packed(hb=[item, ITEM]))
    assert got.heartbeats == (SyncHeartbeat(META, b"raw heartbeat", -1.5),)
    assert len(got.rejected) == 1 and words in got.rejected[0]


def test_an_ack_that_is_not_bytes_is_left_out() -> None:
    got = decode_sync(packed(acks=["text", b"ack-1", 3]))
    assert got.acks == (b"ack-1",)
    assert got.rejected == ("sync batch: an ack is not bytes",) * 2


def test_meta_from_list_refuses_a_short_list() -> None:
    with pytest.raises(ProtocolError, match="6 fields"):
        HeartbeatMeta.from_list(["h1", [], 1.0])
