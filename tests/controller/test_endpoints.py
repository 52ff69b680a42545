"""hidsd.controller.endpoints: the verb table always replies, and counts per verb."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import structlog
from support import Stack

from hidsd.base.errors import ProtocolError
from hidsd.controller.endpoints import Endpoints
from hidsd.wire.fields import Plain
from hidsd.wire.rpc import Verb, decode_reply, encode_request


@dataclass
class FakeMsg:
    """What the table reads of a NATS message: its data and reply subject."""

    data: bytes
    reply: str = "_INBOX.1"


class Replies:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def publish(self, subject: str, data: bytes) -> None:
        self.sent.append((subject, data))

    def last(self) -> Any:
        return decode_reply(self.sent[-1][1])


@dataclass(frozen=True)
class Echo:
    """A reply type for the test verbs: the map it was made from."""

    wire: Mapping[str, Plain]

    def to_wire(self) -> Mapping[str, Plain]:
        return self.wire

    @classmethod
    def from_wire(cls, obj: object, what: str) -> Echo:
        assert isinstance(obj, dict), what
        return cls(obj)


def verb(name: str) -> Verb[Echo]:
    return Verb(name, Echo.from_wire)


def table(max_payload: int | None = None) -> tuple[Endpoints, Replies]:
    r = Replies()
    ep = Endpoints("controller", r.publish, lambda: max_payload, structlog.get_logger("t"))

    async def echo(params: Mapping[str, object]) -> Echo:
        return Echo({"got": dict(params)})

    async def refuse(params: Mapping[str, object]) -> Echo:
        raise ProtocolError("unknown agent 'x'")

    async def bug(params: Mapping[str, object]) -> Echo:
        raise KeyError("boom")

    async def big(params: Mapping[str, object]) -> Echo:
        return Echo({"x": "x" * 5000})

    for name, h in (("echo", echo), ("refuse", refuse), ("bug", bug), ("big", big)):
        ep.add(verb(name), h)
    return ep, r


async def test_answers_and_counts_each_verb() -> None:
    ep, r = table()
    await ep.serve(FakeMsg(encode_request({"a": 1})), "echo")
    assert r.last() == {"got": {"a": 1}}
    await ep.serve(FakeMsg(encode_request({})), "refuse")
    with pytest.raises(ProtocolError, match="unknown agent"):
        r.last()
    await ep.serve(FakeMsg(encode_request({})), "bug")
    with pytest.raises(ProtocolError, match="internal error in bug: KeyError"):
        r.last()
    await ep.serve(FakeMsg(encode_request({})), "nope")
    with pytest.raises(ProtocolError, match="unknown controller request 'nope'"):
        r.last()
    await ep.serve(FakeMsg(b"\xc1 not msgpack"), "echo")
    with pytest.raises(ProtocolError, match="malformed msgpack"):
        r.last()
    st = ep.stats()
    assert st.unknown == 1
    assert st.endpoints["echo"].requests == 2 and st.endpoints["echo"].errors == 1
    assert st.endpoints["refuse"].errors == 1
    assert st.endpoints["bug"].internal_errors == 1
    assert "KeyError" in st.endpoints["bug"].last_error
    assert len(r.sent) == 5  # every request got a reply


async def test_over_size_answer_becomes_an_error_and_no_reply_subject_no_send() -> None:
    ep, r = table(max_payload=1000)
    await ep.serve(FakeMsg(encode_request({})), "big")
    with pytest.raises(ProtocolError, match="over NATS's max_payload"):
        r.last()
    assert ep.stats().endpoints["big"].too_large == 1
    await ep.serve(FakeMsg(encode_request({}), reply=""), "echo")
    assert len(r.sent) == 1


def test_a_verb_is_added_once() -> None:
    ep, _ = table()
    with pytest.raises(ValueError, match="added twice"):
        ep.add(verb("echo"), lambda p: None)  # type: ignore[arg-type,return-value]


async def test_a_real_controller_counts_its_verbs(stack: Stack) -> None:
    stack.start_controller()
    await stack.wait_controller()
    code, _ = await stack.hidsctl_json("agents", "show", "no-such-host")
    assert code == 7
    code, res = await stack.hidsctl_json("controllers", "endpoints")
    assert code == 0, res
    eps = res["controller"]["endpoints"]
    assert eps["agents.list"]["requests"] >= 1  # wait_controller asked
    assert eps["agents.show"]["errors"] == 1
    assert "no-such-host" in eps["agents.show"]["last_error"]
    assert eps["endpoints"]["requests"] == 1 and set(res["peer"]["endpoints"]) == {"query", "stats"}
    code, out, _ = await stack.hidsctl("controllers", "endpoints")
    assert code == 0 and "agents.show" in out


async def test_a_malformed_request_from_a_raw_client_is_a_clear_error(stack: Stack) -> None:
    """A list where a host name belongs (sent by anyone on the bus) is answered as a bad
    request naming the field, and counted as an error, not as an internal one."""
    stack.start_controller()
    await stack.wait_controller()
    obs = await stack.observer()
    try:
        for params in ({"scope": "host", "target": ["web-1"]}, {"scope": 7, "target": "x"}):
            msg = await obs.nc.request(stack.subjects.ctl("expected"), encode_request(params),
                                       timeout=5)  # fmt: skip
            with pytest.raises(ProtocolError, match=r"controller error: expected request\."):
                decode_reply(msg.data)
    finally:
        await obs.close()
    code, res = await stack.hidsctl_json("controllers", "endpoints")
    assert code == 0, res
    expected = res["controller"]["endpoints"]["expected"]
    assert expected["errors"] == 2 and expected["internal_errors"] == 0
