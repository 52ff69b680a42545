"""hidsd.wire (names, commands, heartbeat, rpc): names, key layout, and encode/decode on
untrusted bytes (no servers)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from hidsd.base.errors import ProtocolError
from hidsd.base.storage import StorageReport, StorageStatus
from hidsd.wire.commands import (
    MAX_COMMAND_BYTES,
    Ack,
    AckStatus,
    Command,
    CommandKind,
    Envelope,
    RunMode,
    Unsigned,
    decode_ack,
    decode_command_body,
    decode_envelope,
    desired_mode,
    encode_ack,
    encode_command_body,
    encode_envelope,
)
from hidsd.wire.heartbeat import (
    AccountingReport,
    BreakerReport,
    ClockReport,
    DenylistEntry,
    Heartbeat,
    HostFacts,
    OutputReport,
    PluginReport,
    decode_heartbeat,
    encode_heartbeat,
    plugin_map,
)
from hidsd.wire.names import FLEET_TARGET, PROTOCOL_VERSION, KeyLayout, Scope, Subjects, check_name
from hidsd.wire.rpc import decode_reply, decode_request, encode_reply, encode_request

BAD_NAMES = ["a.b", "a b", "*", ">", "a*", "a>", "", "x" * 129, "-lead", "_lead", "ü"]


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def body_map(**overrides: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "id": "cmd-1",
        "kind": "stop",
        "scope": "host",
        "target": "web-1",
        "rev": 7,
        "issued_at": 1000.0,
        "expires_at": 1060.0,
        "args": {"reason": "drill"},
    }
    m.update(overrides)
    return m


def ack_map(**overrides: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "cmd_id": "cmd-1",
        "host": "web-1",
        "status": "applied",
        "rev": 7,
        "detail": "",
        "mode": "stopped",
    }
    m.update(overrides)
    return m


def make_heartbeat(**overrides: Any) -> Heartbeat:
    values: dict[str, Any] = {
        "host": "web-1",
        "version": "0.1.0",
        "groups": ("web", "eu"),
        "mode": RunMode.RUNNING,
        "applied_rev": 12,
        "held": False,
        "interval_s": 10.0,
        "seq": 3,
        "sent_at": 1234.5,
        "uptime_s": 99.0,
        "cpu_pct": 1.5,
        "rss_bytes": 30_000_000,
        "facts": HostFacts(os="linux", cpus=2, ips=("10.0.0.1",), store_ok=True),
        "rejections": {"expired": 1},
        "bye": False,
    }
    values.update(overrides)
    return Heartbeat(**values)


def hb_map(**overrides: Any) -> dict[str, Any]:
    m: dict[str, Any] = msgpack.unpackb(encode_heartbeat(make_heartbeat()), raw=False)
    m.update(overrides)
    return m


def without(m: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in m.items() if k != key}


# --------------------------------------------------------------------------- names


def test_check_name_accepts_plain_names() -> None:
    for name in ["a", "web-1", "A_b-9", "x" * 128, "0abc"]:
        assert check_name(name, "host id") == name


@pytest.mark.parametrize("name", BAD_NAMES)
def test_check_name_rejects(name: str) -> None:
    with pytest.raises(ProtocolError) as ei:
        check_name(name, "host id")
    assert ei.value.fields["field"] == "host id"


def test_check_name_rejects_trailing_newline() -> None:
    with pytest.raises(ProtocolError):
        check_name("web-1\n", "host id")


def test_command_target_with_trailing_newline() -> None:
    with pytest.raises(ProtocolError):
        decode_command_body(pack(body_map(target="web-1\n")))


@pytest.mark.parametrize("value", [None, 5, b"web", ["web"]])
def test_check_name_rejects_non_strings(value: Any) -> None:
    with pytest.raises(ProtocolError):
        check_name(value, "group")


def test_desired_mode() -> None:
    assert desired_mode(CommandKind.STOP) is RunMode.STOPPED
    assert desired_mode(CommandKind.RESUME) is RunMode.RUNNING


# --------------------------------------------------------------------------- subjects


def test_subjects_default_prefix() -> None:
    s = Subjects()
    assert s.cmd_all() == "hidsd.cmd.all"
    assert s.cmd_group("web") == "hidsd.cmd.group.web"
    assert s.cmd_host("web-1") == "hidsd.cmd.host.web-1"
    assert s.ack("c1") == "hidsd.ack.c1"
    assert s.ack_all() == "hidsd.ack.*"
    assert s.heartbeat("web-1") == "hidsd.hb.web-1"
    assert s.heartbeat_all() == "hidsd.hb.*"
    assert s.telemetry("web-1", "proc") == "hidsd.tel.web-1.proc"
    assert s.ctl("ping") == "hidsd.ctl.ping"
    assert s.ctl_all() == "hidsd.ctl.>"


def test_subjects_custom_prefix() -> None:
    s = Subjects("t42.hidsd")
    assert s.cmd_all() == "t42.hidsd.cmd.all"
    assert s.heartbeat("h") == "t42.hidsd.hb.h"
    assert s.ctl_all() == "t42.hidsd.ctl.>"


@pytest.mark.parametrize(
    ("scope", "target", "subject"),
    [
        (Scope.FLEET, FLEET_TARGET, "hidsd.cmd.all"),
        (Scope.GROUP, "web", "hidsd.cmd.group.web"),
        (Scope.HOST, "web-1", "hidsd.cmd.host.web-1"),
    ],
)
def test_cmd_for(scope: Scope, target: str, subject: str) -> None:
    assert Subjects().cmd_for(scope, target) == subject


# --------------------------------------------------------------------------- key layout


def test_key_layout_names() -> None:
    k = KeyLayout()
    assert k.desired_prefix == "/hidsd/desired/"
    assert k.desired(Scope.FLEET, FLEET_TARGET) == "/hidsd/desired/fleet"
    assert k.desired(Scope.GROUP, "web") == "/hidsd/desired/group/web"
    assert k.desired(Scope.HOST, "web-1") == "/hidsd/desired/host/web-1"
    assert k.command_log("c1") == "/hidsd/commands/c1"
    assert KeyLayout("/t1/").desired(Scope.FLEET, FLEET_TARGET) == "/t1/desired/fleet"


def test_applicable_keys_order() -> None:
    assert KeyLayout().applicable("web-1", ("web", "eu")) == [
        "/hidsd/desired/fleet",
        "/hidsd/desired/group/web",
        "/hidsd/desired/group/eu",
        "/hidsd/desired/host/web-1",
    ]
    assert KeyLayout().applicable("h", ()) == ["/hidsd/desired/fleet", "/hidsd/desired/host/h"]


@pytest.mark.parametrize(
    ("scope", "target"),
    [(Scope.FLEET, FLEET_TARGET), (Scope.GROUP, "web"), (Scope.HOST, "web-1")],
)
def test_parse_desired_round_trip(scope: Scope, target: str) -> None:
    k = KeyLayout("/p/")
    assert k.parse_desired(k.desired(scope, target)) == (scope, target)


@pytest.mark.parametrize(
    "key",
    [
        "/hidsd/commands/c1",
        "/other/desired/fleet",
        "/hidsd/desired/",
        "/hidsd/desired/fleet/x",
        "/hidsd/desired/group",
        "/hidsd/desired/group/",
        "/hidsd/desired/host/",
        "/hidsd/desired/fleetx",
        "/hidsd/desired/cluster/a",
        "hidsd/desired/fleet",
        "",
    ],
)
def test_parse_desired_rejects(key: str) -> None:
    with pytest.raises(ProtocolError) as ei:
        KeyLayout().parse_desired(key)
    assert ei.value.fields["key"] == key


# --------------------------------------------------------------------------- command body


def make_command(**overrides: Any) -> Command:
    values: dict[str, Any] = {
        "id": "cmd-1",
        "kind": CommandKind.STOP,
        "scope": Scope.HOST,
        "target": "web-1",
        "rev": 7,
        "issued_at": 1000.0,
        "expires_at": 1060.0,
        "args": {"reason": "drill", "n": [1, 2]},
    }
    values.update(overrides)
    return Command(**values)


@pytest.mark.parametrize(
    "cmd",
    [
        make_command(),
        make_command(kind=CommandKind.RESUME, scope=Scope.FLEET, target=FLEET_TARGET, args={}),
        make_command(scope=Scope.GROUP, target="web", rev=0, args={"unrecorded": True}),
    ],
)
def test_command_body_round_trip(cmd: Command) -> None:
    back = decode_command_body(encode_command_body(cmd))
    assert back == cmd
    assert isinstance(back.kind, CommandKind)
    assert isinstance(back.scope, Scope)


def test_command_int_timestamps_become_floats() -> None:
    cmd = decode_command_body(pack(body_map(issued_at=1000, expires_at=1060)))
    assert cmd.issued_at == 1000.0
    assert isinstance(cmd.issued_at, float)
    assert isinstance(cmd.expires_at, float)


def test_unrecorded_property() -> None:
    assert make_command(rev=0, args={"unrecorded": True}).unrecorded
    assert not make_command(rev=5, args={"unrecorded": True}).unrecorded
    assert not make_command(rev=0, args={}).unrecorded


@pytest.mark.parametrize("name", list(body_map()))
def test_command_missing_field(name: str) -> None:
    with pytest.raises(ProtocolError) as ei:
        decode_command_body(pack(without(body_map(), name)))
    assert ei.value.fields["field"] == name


WRONG_COMMAND_TYPES: list[tuple[str, Any]] = [
    ("v", "1"),
    ("v", 1.0),
    ("v", True),
    ("id", 5),
    ("id", b"cmd-1"),
    ("id", None),
    ("kind", 1),
    ("kind", ["stop"]),
    ("scope", 2),
    ("scope", None),
    ("target", 3),
    ("target", None),
    ("rev", "7"),
    ("rev", 7.0),
    ("rev", True),
    ("rev", False),
    ("rev", None),
    ("issued_at", "now"),
    ("issued_at", True),
    ("issued_at", None),
    ("expires_at", "later"),
    ("expires_at", False),
    ("expires_at", [1]),
    ("args", [1, 2]),
    ("args", "x"),
    ("args", None),
]


@pytest.mark.parametrize(("name", "value"), WRONG_COMMAND_TYPES)
def test_command_wrong_type(name: str, value: Any) -> None:
    with pytest.raises(ProtocolError):
        decode_command_body(pack(body_map(**{name: value})))


@pytest.mark.parametrize(
    ("name", "value"),
    [("kind", "reboot"), ("kind", "STOP"), ("kind", ""), ("scope", "world"), ("scope", "")],
)
def test_command_unknown_enum(name: str, value: str) -> None:
    with pytest.raises(ProtocolError):
        decode_command_body(pack(body_map(**{name: value})))


@pytest.mark.parametrize("version", [0, 2, -1])
def test_command_unsupported_version(version: int) -> None:
    with pytest.raises(ProtocolError) as ei:
        decode_command_body(pack(body_map(v=version)))
    assert ei.value.fields["field"] == "v"


@pytest.mark.parametrize("rev", [-1, -(2**40)])
def test_command_negative_rev(rev: int) -> None:
    with pytest.raises(ProtocolError) as ei:
        decode_command_body(pack(body_map(rev=rev)))
    assert ei.value.fields["field"] == "rev"


@pytest.mark.parametrize("target", ["web", "", "**", "web-1", ">"])
def test_fleet_command_target_must_be_star(target: str) -> None:
    with pytest.raises(ProtocolError) as ei:
        decode_command_body(pack(body_map(scope="fleet", target=target)))
    assert ei.value.fields["field"] == "target"


def test_fleet_command_star_target_ok() -> None:
    cmd = decode_command_body(pack(body_map(scope="fleet", target="*")))
    assert cmd.scope is Scope.FLEET
    assert cmd.target == FLEET_TARGET


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("scope", ["group", "host"])
def test_command_bad_target_name(scope: str, name: str) -> None:
    with pytest.raises(ProtocolError) as ei:
        decode_command_body(pack(body_map(scope=scope, target=name)))
    assert ei.value.fields["field"] == "target"


@pytest.mark.parametrize("name", BAD_NAMES)
def test_command_bad_id(name: str) -> None:
    with pytest.raises(ProtocolError) as ei:
        decode_command_body(pack(body_map(id=name)))
    assert ei.value.fields["field"] == "command id"


@pytest.mark.parametrize("obj", [[1, 2], "stop", 7, None, b"raw"])
def test_command_body_not_a_map(obj: Any) -> None:
    with pytest.raises(ProtocolError):
        decode_command_body(pack(obj))


def test_command_body_non_string_map_keys() -> None:
    with pytest.raises(ProtocolError):
        decode_command_body(pack({1: "x", **body_map()}))


# --------------------------------------------------------------------------- envelope


def test_envelope_round_trip() -> None:
    env = Envelope(body=encode_command_body(make_command()), key_id="abcd1234", sig=b"s" * 64)
    assert decode_envelope(encode_envelope(env)) == env


def test_envelope_oversized() -> None:
    data = encode_envelope(Envelope(b"x" * (MAX_COMMAND_BYTES + 1), "k", b"s"))
    with pytest.raises(ProtocolError) as ei:
        decode_envelope(data)
    assert not isinstance(ei.value, Unsigned)
    assert ei.value.fields["size"] == len(data)


def test_envelope_max_bytes_is_inclusive_bound() -> None:
    data = encode_envelope(Envelope(b"body", "k", b"s"))
    assert decode_envelope(data, max_bytes=len(data)).body == b"body"
    with pytest.raises(ProtocolError):
        decode_envelope(data, max_bytes=len(data) - 1)


def test_bare_body_is_unsigned() -> None:
    with pytest.raises(Unsigned):
        decode_envelope(encode_command_body(make_command()))


@pytest.mark.parametrize(("key_id", "sig"), [("k", b""), ("", b"s" * 64), ("", b"")])
def test_empty_signature_or_key_is_unsigned(key_id: str, sig: bytes) -> None:
    with pytest.raises(Unsigned):
        decode_envelope(pack([b"body", key_id, sig]))


def test_unsigned_is_a_protocol_error() -> None:
    assert issubclass(Unsigned, ProtocolError)


@pytest.mark.parametrize(
    "obj",
    [
        [],
        [b"body"],
        [b"body", "k"],
        [b"body", "k", b"s", b"extra"],
        ["body", "k", b"s"],
        [b"body", b"k", b"s"],
        [b"body", "k", "s"],
        [None, "k", b"s"],
        [b"body", 5, b"s"],
        "envelope",
        42,
        None,
    ],
)
def test_envelope_malformed(obj: Any) -> None:
    with pytest.raises(ProtocolError) as ei:
        decode_envelope(pack(obj))
    assert not isinstance(ei.value, Unsigned)


@pytest.mark.parametrize("value", ["text", None, 5, [1, 2]])
def test_decoders_refuse_non_bytes(value: Any) -> None:
    with pytest.raises(ProtocolError):
        decode_envelope(value)
    with pytest.raises(ProtocolError):
        decode_command_body(value)


def test_envelope_accepts_bytearray_and_memoryview() -> None:
    data = encode_envelope(Envelope(b"body", "k", b"s"))
    assert decode_envelope(bytearray(data)).key_id == "k"
    assert decode_envelope(memoryview(data)).key_id == "k"


# --------------------------------------------------------------------------- acks


@pytest.mark.parametrize("status", list(AckStatus))
@pytest.mark.parametrize("mode", [RunMode.RUNNING, RunMode.STOPPED])
def test_ack_round_trip(status: AckStatus, mode: RunMode) -> None:
    ack = Ack(cmd_id="c-1", host="web-1", status=status, rev=9, detail="why", mode=mode)
    assert decode_ack(encode_ack(ack)) == ack


def test_ack_defaults_round_trip() -> None:
    ack = Ack(cmd_id="c", host="h", status=AckStatus.APPLIED, rev=0)
    back = decode_ack(encode_ack(ack))
    assert back == ack
    assert back.mode is RunMode.RUNNING
    assert back.detail == ""


@pytest.mark.parametrize("name", list(ack_map()))
def test_ack_missing_field(name: str) -> None:
    with pytest.raises(ProtocolError) as ei:
        decode_ack(pack(without(ack_map(), name)))
    assert ei.value.fields["field"] == name


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("cmd_id", 1),
        ("host", None),
        ("status", 1),
        ("rev", "9"),
        ("rev", True),
        ("rev", 9.5),
        ("detail", 0),
        ("mode", None),
    ],
)
def test_ack_wrong_type(name: str, value: Any) -> None:
    with pytest.raises(ProtocolError):
        decode_ack(pack(ack_map(**{name: value})))


@pytest.mark.parametrize(("name", "value"), [("status", "ok"), ("mode", "paused")])
def test_ack_unknown_enum(name: str, value: str) -> None:
    with pytest.raises(ProtocolError):
        decode_ack(pack(ack_map(**{name: value})))


def test_ack_oversized_and_not_a_map() -> None:
    with pytest.raises(ProtocolError):
        decode_ack(pack(ack_map(detail="x" * 5000)))
    with pytest.raises(ProtocolError):
        decode_ack(pack([1, 2, 3]))


def test_ack_negative_rev() -> None:
    with pytest.raises(ProtocolError):
        decode_ack(pack(ack_map(rev=-1)))


@pytest.mark.parametrize("field_name", ["host", "cmd_id"])
def test_ack_bad_names(field_name: str) -> None:
    with pytest.raises(ProtocolError):
        decode_ack(pack(ack_map(**{field_name: "a.b"})))


# --------------------------------------------------------------------------- heartbeats


@pytest.mark.parametrize(
    "hb",
    [
        make_heartbeat(),
        make_heartbeat(
            groups=(),
            mode=RunMode.STOPPED,
            held=True,
            facts=HostFacts(),
            rejections={},
            bye=True,
        ),
        make_heartbeat(mode=RunMode.EXITING),
    ],
)
def test_heartbeat_round_trip(hb: Heartbeat) -> None:
    back = decode_heartbeat(encode_heartbeat(hb))
    assert back == hb
    assert isinstance(back.groups, tuple)


def test_heartbeat_int_numbers_are_taken_as_sent() -> None:
    """A whole number where a number is asked for is kept as sent (the map re-encodes the same)."""
    m = hb_map(interval_s=5, sent_at=1, uptime_s=2, cpu_pct=0)
    hb = decode_heartbeat(pack(m))
    assert hb.interval_s == 5.0 and hb.cpu_pct == 0
    assert decode_heartbeat(encode_heartbeat(hb)) == hb


HB_FIELDS = [
    "host", "version", "groups", "mode", "applied_rev", "held", "interval_s", "seq",
    "sent_at", "uptime_s", "cpu_pct", "rss_bytes", "facts", "rejections", "bye",
]  # fmt: skip


@pytest.mark.parametrize("name", HB_FIELDS)
def test_heartbeat_missing_field(name: str) -> None:
    with pytest.raises(ProtocolError) as ei:
        decode_heartbeat(pack(without(hb_map(), name)))
    assert ei.value.fields["field"] == name


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("host", 5),
        ("version", None),
        ("groups", "web"),
        ("groups", {"web": 1}),
        ("mode", 1),
        ("applied_rev", "12"),
        ("applied_rev", True),
        ("applied_rev", 1.5),
        ("held", 0),
        ("held", "no"),
        ("interval_s", "10"),
        ("interval_s", True),
        ("seq", 1.0),
        ("seq", False),
        ("sent_at", None),
        ("uptime_s", [1]),
        ("cpu_pct", True),
        ("rss_bytes", 1.5),
        ("rss_bytes", True),
        ("facts", []),
        ("rejections", []),
        ("rejections", {"expired": "1"}),
        ("rejections", {"expired": 1.5}),
        ("bye", 1),
        ("bye", None),
    ],
)
def test_heartbeat_wrong_type(name: str, value: Any) -> None:
    with pytest.raises(ProtocolError):
        decode_heartbeat(pack(hb_map(**{name: value})))


def test_heartbeat_unknown_mode() -> None:
    with pytest.raises(ProtocolError):
        decode_heartbeat(pack(hb_map(mode="paused")))


@pytest.mark.parametrize("name", BAD_NAMES)
def test_heartbeat_bad_host(name: str) -> None:
    with pytest.raises(ProtocolError) as ei:
        decode_heartbeat(pack(hb_map(host=name)))
    assert ei.value.fields["field"] == "host id"


def test_heartbeat_oversized_and_not_a_map() -> None:
    with pytest.raises(ProtocolError):
        decode_heartbeat(pack(hb_map(facts={"blob": "x" * (64 * 1024)})))
    with pytest.raises(ProtocolError):
        decode_heartbeat(pack(["web-1"]))


@pytest.mark.parametrize("groups", [[None], [1], ["a.b"], ["*"], [""]])
def test_heartbeat_bad_groups(groups: list[Any]) -> None:
    with pytest.raises(ProtocolError):
        decode_heartbeat(pack(hb_map(groups=groups)))


def test_heartbeat_negative_applied_rev() -> None:
    with pytest.raises(ProtocolError):
        decode_heartbeat(pack(hb_map(applied_rev=-1)))


# --------------------------------------------------------------------------- request/reply


@pytest.mark.parametrize("params", [{}, {"scope": "fleet", "target": "*"}, {"n": [1, {"a": 2}]}])
def test_request_round_trip(params: dict[str, Any]) -> None:
    assert decode_request(encode_request(params)) == params


def test_empty_request_is_empty_map() -> None:
    assert decode_request(b"") == {}


@pytest.mark.parametrize("obj", [[1], "x", 3, None])
def test_request_not_a_map(obj: Any) -> None:
    with pytest.raises(ProtocolError):
        decode_request(pack(obj))


def test_request_oversized() -> None:
    with pytest.raises(ProtocolError):
        decode_request(pack({"x": "y" * (64 * 1024)}))


@pytest.mark.parametrize("result", [None, 0, "ok", [1, 2], {"online": ["a"], "offline": []}])
def test_reply_round_trip(result: Any) -> None:
    assert decode_reply(encode_reply(result)) == result


def test_reply_error_raises_with_message() -> None:
    with pytest.raises(ProtocolError, match="unknown agent 'x'"):
        decode_reply(encode_reply(error="unknown agent 'x'"))


@pytest.mark.parametrize("obj", [{"result": 1}, [True, 1], "ok", None])
def test_reply_malformed(obj: Any) -> None:
    with pytest.raises(ProtocolError):
        decode_reply(pack(obj))


def test_reply_not_ok_without_message() -> None:
    with pytest.raises(ProtocolError, match="unknown"):
        decode_reply(pack({"ok": False}))


# --------------------------------------------------------------------------- untrusted bytes

DECODERS: dict[str, Callable[[bytes], Any]] = {
    "command_body": decode_command_body,
    "envelope": decode_envelope,
    "ack": decode_ack,
    "heartbeat": decode_heartbeat,
    "request": decode_request,
    "reply": decode_reply,
}
#: Decoders whose valid inputs have required fields: random bytes can never satisfy them.
STRICT = ("command_body", "envelope", "ack", "heartbeat")


def valid_samples() -> dict[str, bytes]:
    return {
        "command_body": encode_command_body(make_command()),
        "envelope": encode_envelope(Envelope(encode_command_body(make_command()), "k", b"s" * 64)),
        "ack": encode_ack(Ack("c-1", "web-1", AckStatus.APPLIED, 3, "d", RunMode.STOPPED)),
        "heartbeat": encode_heartbeat(make_heartbeat()),
        "request": encode_request({"scope": "group", "target": "web"}),
        "reply": encode_reply({"a": [1, 2]}),
    }


def call(decode: Callable[[bytes], Any], data: bytes) -> bool:
    """True if it decoded, False if it raised ProtocolError; anything else fails the test."""
    try:
        decode(data)
    except ProtocolError:
        return False
    return True


@pytest.mark.parametrize("name", list(DECODERS))
def test_truncated_msgpack(name: str) -> None:
    data = valid_samples()[name]
    assert call(DECODERS[name], data)
    for cut in range(1, len(data)):
        assert not call(DECODERS[name], data[:cut]), f"{name} accepted {cut} of {len(data)}"


@pytest.mark.parametrize("name", list(DECODERS))
def test_trailing_garbage(name: str) -> None:
    assert not call(DECODERS[name], valid_samples()[name] + b"\x00")


@pytest.mark.parametrize("name", list(DECODERS))
def test_random_bytes(name: str) -> None:
    rng = random.Random(20261101)
    decode = DECODERS[name]
    accepted = 0
    for _ in range(300):
        data = rng.randbytes(rng.randint(0, 96))
        accepted += call(decode, data)
    if name in STRICT:
        assert accepted == 0


@pytest.mark.parametrize("name", list(DECODERS))
def test_mutated_valid_messages(name: str) -> None:
    """Flip, drop and insert bytes of a valid message; only ProtocolError may come out."""
    rng = random.Random(name)
    sample = valid_samples()[name]
    for _ in range(300):
        data = bytearray(sample)
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(3)
            pos = rng.randrange(len(data))
            if op == 0:
                data[pos] = rng.randrange(256)
            elif op == 1 and len(data) > 1:
                del data[pos]
            else:
                data.insert(pos, rng.randrange(256))
        call(DECODERS[name], bytes(data))


@pytest.mark.parametrize("name", list(DECODERS))
@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # never-used byte
        b"\xdd\xff\xff\xff\xff",  # array claiming 4G elements
        b"\xdf\xff\xff\xff\xff",  # map claiming 4G entries
        b"\xc6\xff\xff\xff\xff",  # bin claiming 4 GB
        b"\x91" * 5000 + b"\x00",  # deeply nested arrays
        b"\x81\x01\x02",  # map with an int key
        b"\x81\x91\x01\x02",  # map with an array key
        b"\xd4\x01\x00",  # ext type
        b"\xd6\xff\x00\x00\x00\x01",  # timestamp ext
    ],
)
def test_hostile_msgpack(name: str, data: bytes) -> None:
    if name in STRICT:
        assert not call(DECODERS[name], data)
    else:
        call(DECODERS[name], data)


def test_large_replies_are_compressed_and_bounded() -> None:
    """A fleet-wide answer lists every host: compressed above 64 kB, checked on the way in."""
    import zlib

    from hidsd.wire.codec import pack
    from hidsd.wire.rpc import REPLY_COMPRESS_BYTES, decode_reply, encode_reply

    big = {"hosts": [{"host": f"host-{i:05d}", "liveness": "online"} for i in range(20000)]}
    data = encode_reply(big)
    assert len(data) < REPLY_COMPRESS_BYTES * 4 < len(pack(big))
    assert decode_reply(data) == big
    small = encode_reply({"a": 1})
    assert decode_reply(small) == {"a": 1} and b"result" in small
    with pytest.raises(ProtocolError, match="bad compressed body"):
        decode_reply(pack({"ok": True, "z": b"not zlib"}))
    bomb = zlib.compress(b"\x00" * (300 << 20))
    with pytest.raises(ProtocolError, match="expands beyond"):
        decode_reply(pack({"ok": True, "z": bomb}))


# --------------------------------------------------------------------------- storage, clock


def test_heartbeat_storage_and_clock_round_trip() -> None:
    storage = StorageReport(
        status=StorageStatus.READ_ONLY, path="/var/lib/hidsd", error="EROFS: Read-only",
        free_bytes=0, failing={"state": "read-only: EROFS (/var/lib/hidsd/x)"},
        errors_total=3, recoveries=1, fds_open=20, fds_limit=1024,
    )  # fmt: skip
    clock = ClockReport(command_skew_s=600.5, refused_expired=2, last_refusal="c: expired")
    hb = make_heartbeat(storage=storage, clock=clock)
    assert decode_heartbeat(encode_heartbeat(hb)) == hb
    old = make_heartbeat()  # from an agent before these fields
    m = hb_map()
    assert "storage" not in m and decode_heartbeat(pack(m)).storage is None
    assert decode_heartbeat(encode_heartbeat(old)).clock == ClockReport()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("storage", "full"),
        (
            "storage",
            {
                "status": "melted",
                "path": "/",
                "error": "",
                "failing": {},
                "errors_total": 0,
                "recoveries": 0,
            },
        ),
        (
            "storage",
            {
                "status": "ok",
                "path": "/",
                "error": "",
                "failing": {"a": 1},
                "errors_total": 0,
                "recoveries": 0,
            },
        ),
        ("storage", {"status": "ok", "path": "/", "error": ""}),
        (
            "clock",
            {
                "command_skew_s": float("nan"),
                "refused_expired": 0,
                "refused_not_yet_valid": 0,
                "last_refusal": "",
            },
        ),
        (
            "clock",
            {
                "command_skew_s": None,
                "refused_expired": "2",
                "refused_not_yet_valid": 0,
                "last_refusal": "",
            },
        ),
    ],
)
def test_heartbeat_bad_storage_or_clock(name: str, value: Any) -> None:
    with pytest.raises(ProtocolError):
        decode_heartbeat(pack(hb_map(**{name: value})))


def test_ack_reason_and_time_round_trip() -> None:
    ack = Ack("c-1", "h1", AckStatus.REJECTED, 5, "expired", RunMode.RUNNING, "expired", 12.5)
    assert decode_ack(encode_ack(ack)) == ack
    with pytest.raises(ProtocolError):
        decode_ack(pack(ack_map(sent_at=float("inf"))))


# --------------------------------------------------------------------------- typed reports


def test_plugin_report_flat_on_the_wire_typed_in_code() -> None:
    rep = PluginReport(state="running", pid=42, cpu_pct=1.5, rss_bytes=10, fds=7,
                       counters={"starts": 1, "records": 9},
                       telemetry={"records_out": 9, "dropped_rate_limit": 2,
                                  "dropped_spool_full": 1})  # fmt: skip
    m = rep.to_wire()
    assert m["tel.records_out"] == 9 and m["starts"] == 1 and m["fds"] == 7
    assert PluginReport.from_wire(m) == rep and rep.dropped == 3
    hb = make_heartbeat(plugins={"loadgen": rep})
    assert decode_heartbeat(encode_heartbeat(hb)) == hb
    assert plugin_map(hb, "loadgen") == m and plugin_map(hb, "nope") == {} == plugin_map(None, "x")


@pytest.mark.parametrize(
    "value",
    ["running", {"state": "running", "cpu_pct": 0, "rss_bytes": 0, "tel.records_out": "9"},
     {"state": "running", "cpu_pct": 0, "rss_bytes": 0, "starts": True},
     {"state": "running", "cpu_pct": 0, "rss_bytes": 0, "pid": "42"},
     {"cpu_pct": 0, "rss_bytes": 0}],
)  # fmt: skip
def test_plugin_report_malformed(value: Any) -> None:
    with pytest.raises(ProtocolError):
        decode_heartbeat(pack(hb_map(plugins={"p": value})))


def test_breaker_and_output_reports_round_trip_and_refuse_garbage() -> None:
    br = BreakerReport("tripped", 3.5, reason="memory", level=3, resource="memory",
                       held=("*",), hold_all=True,
                       denylist={"drill": DenylistEntry(100.0, 60, "leak")}, strikes=1,
                       accounting=AccountingReport("cgroup-v1", "x"),
                       limits_error="e")  # fmt: skip
    out = OutputReport({"published": 3}, 1, "")
    hb = make_heartbeat(breaker=br, outputs={"inventory": out})
    back = decode_heartbeat(encode_heartbeat(hb))
    assert back.breaker == br and back.outputs == {"inventory": out}
    assert br.to_wire()["accounting"] == {"mode": "cgroup-v1", "detail": "x"}
    assert decode_heartbeat(pack(hb_map(breaker={}))).breaker is None
    for bad in ({"state": "normal"}, {**br.to_wire(), "held": [1]},
                {**br.to_wire(), "denylist": {"d": "soon"}}):  # fmt: skip
        with pytest.raises(ProtocolError):
            decode_heartbeat(pack(hb_map(breaker=bad)))
    with pytest.raises(ProtocolError):
        decode_heartbeat(pack(hb_map(outputs={"inventory": {"pending": 0, "x": "y"}})))


def test_host_facts_round_trip_ignores_unknown_keys_and_refuses_wrong_types() -> None:
    facts = HostFacts(
        hostname="h",
        os="Debian",
        os_id="debian",
        kernel="6.1",
        arch="x86_64",
        ips=("10.0.0.1",),
        boot_time=1.5,
        cpus=2,
        python="3.11",
        store_ok=False,
    )
    assert HostFacts.from_wire(facts.to_wire()) == facts
    assert "store_ok" not in HostFacts().to_wire()
    assert HostFacts.from_wire({"os": "x", "newer_fact": [1]}) == HostFacts(os="x")
    for bad in ({"cpus": "2"}, {"ips": [1]}, {"store_ok": 1}, {"boot_time": float("nan")}):
        with pytest.raises(ProtocolError):
            HostFacts.from_wire(bad)
