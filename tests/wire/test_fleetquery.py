"""hidsd.wire.fleetquery: the query request is re-parsed (a bad range refused), a share and the
merged answer survive the wire unchanged, a malformed one is refused with the field named."""

from __future__ import annotations

from typing import Any

import pytest

from hidsd.base.errors import ProtocolError
from hidsd.wire.fleetquery import (
    HostAnswer,
    NoAnswer,
    PackageMatch,
    QueryCounts,
    QueryRequest,
    QueryResult,
    QueryShare,
    QueryShareRequest,
    Shard,
    range_from_wire,
    range_to_wire,
)
from hidsd.wire.ranges import parse_vers
from hidsd.wire.replies import Liveness
from hidsd.wire.rpc import decode_reply, decode_request, encode_reply, encode_request

RANGE = parse_vers("vers:deb/<1.1.1n-0+deb11u5", "openssl")
HIT = PackageMatch("deb", "openssl", "1.1.1n-0", RANGE.spec, "DSA-1")


def test_request_round_trips_and_reparses() -> None:
    from dataclasses import replace

    rng = replace(RANGE, distro="debian", release="11", source="DSA-1")
    req = QueryRequest((rng, RANGE), 600.0)
    params = decode_request(encode_request(req.to_params()))
    assert params["ranges"][0] == {
        "ecosystem": "deb", "package": "openssl", "spec": RANGE.spec, "distro": "debian",
        "release": "11", "source": "DSA-1",
    }  # fmt: skip
    assert QueryRequest.from_params(params) == req
    assert QueryRequest.from_params({"ranges": []}).max_age_s is None  # the controller's default
    assert range_from_wire(range_to_wire(rng), "r") == rng
    share = QueryShareRequest.from_params({**params, "members": ["a", "b"], "shard": "b"})
    assert share.ranges == req.ranges and share.members == ("a", "b") and share.shard == "b"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "query: missing field 'ranges'"),
        ({"ranges": "openssl"}, r"query\.ranges: expected a list"),
        ({"ranges": [{"package": "openssl"}]}, r"ranges\[0\]: missing field 'spec'"),
        ({"ranges": [{"spec": "vers:deb/<1", "package": "openssl", "distro": 11}]},
         r"ranges\[0\]\.distro: expected text"),
        ({"ranges": [{"spec": "deb<1", "package": "openssl"}]}, "query: range 'deb<1' must start"),
        ({"ranges": [], "max_age_s": "1h"}, r"query\.max_age_s: expected a number"),
    ],
)  # fmt: skip
def test_bad_query_request_is_refused(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        QueryRequest.from_params(params)


def test_bad_share_request_is_refused() -> None:
    with pytest.raises(ProtocolError, match="query share: missing field 'members'"):
        QueryShareRequest.from_params({"ranges": [], "shard": "a"})


SHARE = QueryShare({"h4": (("openssl", "1.x"),)}, "c1", {"h1": 990.0, "h4": 995, "h9": None},
                   {"h1": (HIT,)}, {"ranges": 1})  # fmt: skip
RESULT = QueryResult(
    matched=(HostAnswer("h1", Liveness.ONLINE, 10.0, (HIT,)),),
    clean=(HostAnswer("h3", Liveness.OFFLINE, 5.0),),
    no_answer=(NoAnswer("h5", Liveness.UNKNOWN, "no inventory reported"),
               NoAnswer("h2", Liveness.ONLINE, "inventory 900s old, over max age 600s", 900.0)),
    counts=QueryCounts(4, 2, 1, 1, 1, 2),
    shards=(Shard("m1", "c1", 3, "local"), Shard("m2", None, 1, "redone here: timeout")),
    counters={"ranges": 1}, complete=False, elapsed_ms=2.5,
)  # fmt: skip


@pytest.mark.parametrize("reply", [SHARE, RESULT], ids=lambda r: type(r).__name__)
def test_reply_round_trips(reply: Any) -> None:
    wire = decode_reply(encode_reply(reply.to_wire()))
    back = type(reply).from_wire(wire)
    assert back == reply
    assert back.to_wire() == wire


def test_rows_carry_only_what_applies() -> None:
    wire = RESULT.to_wire()
    assert wire["clean"] == [{"host": "h3", "liveness": "offline", "inventory_age_s": 5.0}]
    assert wire["no_answer"][0] == {"host": "h5", "liveness": "unknown",
                                    "reason": "no inventory reported"}  # fmt: skip
    assert list(wire["no_answer"][1]) == ["host", "liveness", "inventory_age_s", "reason"]
    assert wire["matched"][0]["packages"][0]["range"] == RANGE.spec


def test_share_from_an_older_member_defaults_what_it_lacks() -> None:
    old = {"evaluated": {"h1": 1.0}, "matches": {}}
    assert QueryShare.from_wire(old) == QueryShare({}, None, {"h1": 1.0}, {}, {})


@pytest.mark.parametrize(
    ("reply", "wire", "message"),
    [
        (QueryShare, {"matches": {}}, "query share reply: missing field 'evaluated'"),
        (QueryShare, {**SHARE.to_wire(), "uncomparable": {"h": [["openssl"]]}},
         r"uncomparable\.h\[0\]: expected \[package, version\]"),
        (QueryShare, {**SHARE.to_wire(), "matches": {"h1": [{"package": "openssl"}]}},
         r"matches\.h1\[0\]: missing field 'ecosystem'"),
        (QueryResult, {**RESULT.to_wire(), "complete": "no"}, r"complete: expected true or false"),
        (QueryResult, {**RESULT.to_wire(), "clean": [{"host": "h", "liveness": "online"}]},
         r"clean\[0\]: missing field 'inventory_age_s'"),
        (QueryResult, {**RESULT.to_wire(), "counts": {"hosts": 1}},
         r"counts: missing field 'answered'"),
    ],
)  # fmt: skip
def test_malformed_reply_is_refused(reply: Any, wire: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        reply.from_wire(wire)
