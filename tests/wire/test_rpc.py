"""hidsd.wire.rpc: typed events, the verbs' request parameters, and `Verb` decoding a reply."""

from __future__ import annotations

from typing import Any

import pytest

from hidsd.base.errors import ProtocolError
from hidsd.wire.names import Scope
from hidsd.wire.replies import Expected
from hidsd.wire.rpc import (
    AcksRequest,
    Event,
    ExpectedRequest,
    HostRequest,
    Verb,
    decode_event,
    decode_request,
    encode_event,
    encode_reply,
    encode_request,
)


def test_event_keeps_its_details() -> None:
    m = decode_event(encode_event("web-1", {"kind": "breaker", "old": "normal", "n": [1]}, 7))
    ev = Event.from_wire(m)
    assert (ev.host, ev.kind, ev.at, ev.detail) == ("web-1", "breaker", 7, {"old": "normal",
                                                                            "n": [1]})  # fmt: skip
    assert ev.to_wire() == m


@pytest.mark.parametrize(
    ("m", "message"),
    [
        ({"host": "h", "at": 1.0}, "event: missing field 'kind'"),
        ({"host": "h", "kind": "k", "at": "now"}, r"event\.at: expected a number"),
        ({"host": "h", "kind": "k", "at": 1, "x": {2: 3}}, r"event\.x: expected a map"),
    ],
)
def test_bad_event_is_refused(m: dict[Any, Any], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        Event.from_wire(m)


def test_request_params_round_trip() -> None:
    def wire(p: Any) -> dict[str, Any]:
        return decode_request(encode_request(p.to_params()))

    assert HostRequest.from_params(wire(HostRequest("web-1"))) == HostRequest("web-1")
    req = ExpectedRequest(Scope.GROUP, "web")
    assert ExpectedRequest.from_params(wire(req)) == req
    assert AcksRequest.from_params(wire(AcksRequest("c-1"))) == AcksRequest("c-1")
    assert AcksRequest.from_params({}) == AcksRequest("")  # unknown command: "no acks recorded"


@pytest.mark.parametrize(
    ("parse", "params", "message"),
    [
        (HostRequest.from_params, {}, "agents.show request: missing field 'host'"),
        (HostRequest.from_params, {"host": 5}, r"agents.show request\.host: expected text"),
        (ExpectedRequest.from_params, {"scope": "fleet"}, "needs scope and target"),
        (
            ExpectedRequest.from_params,
            {"scope": "planet", "target": "x"},
            r"expected request\.scope: 'planet' is not one of",
        ),
        (
            ExpectedRequest.from_params,
            {"scope": "host", "target": ["web-1"]},
            r"expected request\.target: expected text, got list",
        ),
        (ExpectedRequest.from_params, {"scope": "group", "target": "web.>"}, "invalid group name"),
        (ExpectedRequest.from_params, {"scope": "fleet", "target": "web"}, "fleet's target is"),
        (ExpectedRequest.from_params, [], "expected request: expected a map"),
        (AcksRequest.from_params, {"cmd_id": ["c-1"]}, r"acks request\.cmd_id: expected text"),
    ],
)
def test_bad_request_params_are_refused(parse: Any, params: dict[str, Any], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse(params)


def test_verb_decodes_its_reply_or_names_the_fault() -> None:
    verb = Verb("expected", Expected.from_wire)
    data = encode_reply(Expected(("a",), ()).to_wire())
    assert verb.decode(data) == Expected(("a",), ())
    with pytest.raises(ProtocolError, match="controller error: unknown agent 'x'"):
        verb.decode(encode_reply(error="unknown agent 'x'"))
    with pytest.raises(ProtocolError, match="expected reply: missing field 'offline'"):
        verb.decode(encode_reply({"online": []}))
    with pytest.raises(ProtocolError, match="expected reply: expected a map"):
        verb.check([1])
