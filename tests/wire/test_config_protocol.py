"""Config-plane parts of hidsd.wire (keys, scopes, versions, pointers, events, heartbeat
`config`) and the pure `diff` of hidsd.ctl.configplane. No servers."""

from __future__ import annotations

import json
import math
from typing import Any

import msgpack
import pytest

from hidsd.base.errors import ProtocolError
from hidsd.ctl.configplane import diff
from hidsd.wire.commands import RunMode
from hidsd.wire.configstore import (
    ConfigVersion,
    decode_config_pointer,
    decode_config_version,
    encode_config_pointer,
    encode_config_version,
)
from hidsd.wire.heartbeat import (
    ConfigRejection,
    ConfigReport,
    Heartbeat,
    decode_heartbeat,
    encode_heartbeat,
)
from hidsd.wire.names import FLEET_TARGET, KeyLayout, Scope, parse_scope
from hidsd.wire.rpc import decode_event, encode_event


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


# --------------------------------------------------------------------------- key layout


@pytest.mark.parametrize(
    ("scope", "target", "label"),
    [
        (Scope.FLEET, FLEET_TARGET, "fleet"),
        (Scope.FLEET, "ignored", "fleet"),
        (Scope.GROUP, "web", "group:web"),
        (Scope.HOST, "h1", "host:h1"),
        (Scope.HOST, "web-1_a", "host:web-1_a"),
    ],
)
def test_scope_label(scope: Scope, target: str, label: str) -> None:
    assert KeyLayout.scope_label(scope, target) == label
    assert KeyLayout("/t1/").scope_label(scope, target) == label


@pytest.mark.parametrize(
    ("scope", "target"), [(Scope.FLEET, FLEET_TARGET), (Scope.GROUP, "web"), (Scope.HOST, "h1")]
)
def test_scope_label_round_trips_through_parse_scope(scope: Scope, target: str) -> None:
    assert parse_scope(KeyLayout.scope_label(scope, target)) == (scope, target)


@pytest.mark.parametrize(
    ("prefix", "scope", "target", "current", "versions"),
    [
        ("/hidsd/", Scope.FLEET, FLEET_TARGET,
         "/hidsd/config/fleet/current", "/hidsd/config/fleet/versions/"),
        ("/hidsd/", Scope.GROUP, "web",
         "/hidsd/config/group/web/current", "/hidsd/config/group/web/versions/"),
        ("/hidsd/", Scope.HOST, "h1",
         "/hidsd/config/host/h1/current", "/hidsd/config/host/h1/versions/"),
        ("/t1/", Scope.HOST, "h1", "/t1/config/host/h1/current", "/t1/config/host/h1/versions/"),
    ],
)  # fmt: skip
def test_config_keys(prefix: str, scope: Scope, target: str, current: str, versions: str) -> None:
    keys = KeyLayout(prefix)
    assert keys.config_current(scope, target) == current
    assert keys.config_versions(scope, target) == versions
    assert keys.config_version(scope, target, 7) == f"{versions}0000000007"
    base = keys.config_scope_prefix(scope, target)
    assert current.startswith(base)
    assert versions.startswith(base)
    assert base.startswith(keys.config_prefix)
    assert base.endswith("/")


def test_config_prefix() -> None:
    assert KeyLayout().config_prefix == "/hidsd/config/"
    assert KeyLayout("/t1/").config_prefix == "/t1/config/"


def test_config_keys_do_not_overlap_desired_keys() -> None:
    keys = KeyLayout()
    for scope, target in [(Scope.FLEET, "*"), (Scope.GROUP, "g"), (Scope.HOST, "h")]:
        assert not keys.config_current(scope, target).startswith(keys.desired_prefix)
        assert not keys.desired(scope, target).startswith(keys.config_prefix)


def test_config_scope_prefixes_do_not_nest() -> None:
    keys = KeyLayout()
    h1 = keys.config_scope_prefix(Scope.HOST, "h1")
    h10 = keys.config_scope_prefix(Scope.HOST, "h10")
    assert not h10.startswith(h1)
    assert not keys.config_current(Scope.HOST, "h10").startswith(h1)


@pytest.mark.parametrize(
    ("version", "suffix"),
    [(1, "0000000001"), (42, "0000000042"), (1000, "0000001000"), (9_999_999_999, "9999999999")],
)
def test_config_version_is_zero_padded(version: int, suffix: str) -> None:
    key = KeyLayout().config_version(Scope.FLEET, "*", version)
    assert key == f"/hidsd/config/fleet/versions/{suffix}"
    assert int(key.rsplit("/", 1)[-1]) == version


def test_config_version_lexical_order_is_numeric_order() -> None:
    keys = KeyLayout()
    numbers = list(range(1, 1001))
    ks = [keys.config_version(Scope.GROUP, "web", n) for n in numbers]
    assert len(set(ks)) == len(ks)
    assert sorted(ks) == ks
    shuffled = ks[::-1]
    assert sorted(shuffled) == ks
    assert [int(k.rsplit("/", 1)[-1]) for k in sorted(shuffled)] == numbers
    prefix = keys.config_versions(Scope.GROUP, "web")
    assert all(k.startswith(prefix) for k in ks)


@pytest.mark.parametrize(
    ("groups", "expected_groups"),
    [
        ((), []),
        (("web",), ["web"]),
        (("web", "eu", "db"), ["db", "eu", "web"]),
        (("b", "a"), ["a", "b"]),
    ],
)
def test_config_applicable_order(groups: tuple[str, ...], expected_groups: list[str]) -> None:
    got = KeyLayout().config_applicable("h1", groups)
    assert got == [
        (Scope.FLEET, FLEET_TARGET),
        *((Scope.GROUP, g) for g in expected_groups),
        (Scope.HOST, "h1"),
    ]
    assert got[0][0] is Scope.FLEET
    assert got[-1][0] is Scope.HOST


def test_config_applicable_does_not_depend_on_group_order() -> None:
    keys = KeyLayout()
    assert keys.config_applicable("h", ("x", "a", "m")) == keys.config_applicable(
        "h", ("m", "x", "a")
    )


# --------------------------------------------------------------------------- parse_scope


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("fleet", (Scope.FLEET, FLEET_TARGET)),
        ("group:web", (Scope.GROUP, "web")),
        ("host:h1", (Scope.HOST, "h1")),
        ("host:Web-1_x", (Scope.HOST, "Web-1_x")),
        ("group:" + "g" * 128, (Scope.GROUP, "g" * 128)),
    ],
)
def test_parse_scope_valid(label: str, expected: tuple[Scope, str]) -> None:
    scope, target = parse_scope(label)
    assert (scope, target) == expected
    assert isinstance(scope, Scope)


@pytest.mark.parametrize(
    "label",
    [
        "",
        "Fleet",
        "FLEET",
        " fleet",
        "fleet ",
        "fleet:x",
        "fleet:",
        "group",
        "host",
        "group:",
        "host:",
        "group:a.b",
        "host:a b",
        "host:a:b",
        "host:*",
        "group:>",
        "host:-x",
        "host:h1\n",
        "group:" + "g" * 129,
        "cluster:x",
        "Group:web",
        "hosts:h1",
        ":h1",
        "*",
    ],
)
def test_parse_scope_invalid(label: str) -> None:
    with pytest.raises(ProtocolError):
        parse_scope(label)


def test_parse_scope_error_names_the_format() -> None:
    with pytest.raises(ProtocolError) as ei:
        parse_scope("cluster:x")
    assert "fleet, group:NAME or host:NAME" in ei.value.message


# --------------------------------------------------------------------------- config versions


def make_cv(**overrides: Any) -> ConfigVersion:
    values: dict[str, Any] = {
        "scope": "group:web",
        "version": 3,
        "content": 'log_level = "debug"\n',
        "digest": "0123456789abcdef",
        "author": "alice",
        "time": 1_700_000_000.5,
        "message": "more logs",
        "rollback_of": None,
    }
    values.update(overrides)
    return ConfigVersion(**values)


def cv_map(**overrides: Any) -> dict[str, Any]:
    m: dict[str, Any] = json.loads(encode_config_version(make_cv()))
    m.update(overrides)
    return m


def without(m: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in m.items() if k != key}


def enc(obj: Any) -> bytes:
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    "cv",
    [
        make_cv(),
        make_cv(rollback_of=1, message=""),
        make_cv(version=1, scope="fleet", content="", author="", time=0.0),
        make_cv(content="# ü ∑ unicode\n[telemetry]\nburst = 5\n", time=1.0),
        make_cv(version=10**12, rollback_of=10**11),
    ],
)
def test_config_version_round_trip(cv: ConfigVersion) -> None:
    data = encode_config_version(cv)
    assert isinstance(data, bytes)
    back = decode_config_version(data)
    assert back == cv
    assert isinstance(back.time, float)


def test_config_version_is_readable_json() -> None:
    cv = make_cv(rollback_of=2)
    m = json.loads(encode_config_version(cv))
    assert m == cv.to_dict()
    assert list(m) == sorted(m)


def test_config_version_int_time_becomes_float() -> None:
    back = decode_config_version(enc(cv_map(time=5)))
    assert back.time == 5.0
    assert isinstance(back.time, float)


def test_config_version_missing_rollback_of_is_none() -> None:
    assert decode_config_version(enc(without(cv_map(), "rollback_of"))).rollback_of is None


def test_config_version_ignores_extra_fields() -> None:
    assert decode_config_version(enc(cv_map(extra="x"))) == make_cv()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"{",
        b"{'version': 1}",
        b"\xff\xfe\x00garbage",
        b"\x80\x81\x82",
        pack(cv_map()),
    ],
)
def test_config_version_not_json(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_config_version(data)


@pytest.mark.parametrize("obj", [[], [cv_map()], "fleet", 3, None, True, 1.5])
def test_config_version_not_an_object(obj: Any) -> None:
    with pytest.raises(ProtocolError) as ei:
        decode_config_version(enc(obj))
    assert "expected an object" in ei.value.message


@pytest.mark.parametrize(
    "name", ["scope", "version", "content", "digest", "author", "time", "message"]
)
def test_config_version_missing_field(name: str) -> None:
    with pytest.raises(ProtocolError) as ei:
        decode_config_version(enc(without(cv_map(), name)))
    assert ei.value.fields["field"] == name


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("version", 0),
        ("version", -1),
        ("version", -(10**9)),
        ("version", True),
        ("version", False),
        ("version", 1.0),
        ("version", "1"),
        ("version", None),
        ("scope", 1),
        ("scope", None),
        ("content", 5),
        ("content", ["a"]),
        ("content", None),
        ("digest", 123),
        ("author", None),
        ("author", {"name": "alice"}),
        ("message", 0),
        ("time", "now"),
        ("time", None),
        ("time", True),
        ("time", [1.0]),
        ("rollback_of", True),
        ("rollback_of", False),
        ("rollback_of", "1"),
        ("rollback_of", ""),
        ("rollback_of", 1.0),
        ("rollback_of", [1]),
        ("rollback_of", {}),
    ],
)
def test_config_version_bad_field(name: str, value: Any) -> None:
    with pytest.raises(ProtocolError) as ei:
        decode_config_version(enc(cv_map(**{name: value})))
    assert ei.value.fields["field"] == name


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_config_version_non_finite_time(value: float) -> None:
    data = enc(cv_map(time=value))  # Python's json writes NaN/Infinity literals and reads them
    assert not math.isfinite(json.loads(data)["time"])
    with pytest.raises(ProtocolError) as ei:
        decode_config_version(data)
    assert ei.value.fields["field"] == "time"


def test_config_version_huge_float_time() -> None:
    # 1e400 parses as infinity
    with pytest.raises(ProtocolError) as ei:
        decode_config_version(enc(cv_map()).replace(b"1700000000.5", b"1e400"))
    assert ei.value.fields["field"] == "time"


@pytest.mark.parametrize("value", [0, -1])
def test_config_version_rollback_of_must_be_a_version(value: int) -> None:
    with pytest.raises(ProtocolError) as ei:
        decode_config_version(enc(cv_map(rollback_of=value)))
    assert ei.value.fields["field"] == "rollback_of"


def test_config_version_deeply_nested_json() -> None:
    with pytest.raises(ProtocolError):
        decode_config_version(b"[" * 100_000)


# --------------------------------------------------------------------------- config pointer


@pytest.mark.parametrize(
    ("version", "digest"), [(1, "0123456789abcdef"), (42, ""), (10**12, "x" * 64)]
)
def test_config_pointer_round_trip(version: int, digest: str) -> None:
    data = encode_config_pointer(version, digest)
    assert isinstance(data, bytes)
    assert json.loads(data) == {"version": version, "digest": digest}
    assert decode_config_pointer(data) == (version, digest)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"{",
        b"\xff\xfe\x00",
        enc([1, "d"]),
        enc("pointer"),
        enc(3),
        enc(None),
        enc({}),
        enc({"version": 1}),
        enc({"digest": "d"}),
        pack({"version": 1, "digest": "d"}),
    ],
)
def test_config_pointer_corrupt(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_config_pointer(data)


@pytest.mark.parametrize(
    ("version", "digest", "field"),
    [
        (0, "d", "version"),
        (-1, "d", "version"),
        (True, "d", "version"),
        (False, "d", "version"),
        (1.0, "d", "version"),
        ("1", "d", "version"),
        (None, "d", "version"),
        ([1], "d", "version"),
        (1, 5, "digest"),
        (1, None, "digest"),
        (1, ["d"], "digest"),
        (1, {"d": 1}, "digest"),
    ],
)
def test_config_pointer_bad_fields(version: Any, digest: Any, field: str) -> None:
    with pytest.raises(ProtocolError) as ei:
        decode_config_pointer(enc({"version": version, "digest": digest}))
    assert ei.value.fields["field"] == field


def test_config_pointer_deeply_nested_json() -> None:
    with pytest.raises(ProtocolError):
        decode_config_pointer(b"[" * 100_000)


# --------------------------------------------------------------------------- events


@pytest.mark.parametrize(
    "event",
    [
        {"kind": "config_rejected", "scope": "host:h1", "version": 3, "error": "bad"},
        {"kind": "config_applied", "versions": {"fleet": 1, "group:web": 2}},
        {"kind": "x"},
    ],
)
def test_event_round_trip(event: dict[str, Any]) -> None:
    m = decode_event(encode_event("web-1", event, 1234.5))
    assert m == {"host": "web-1", "at": 1234.5, **event}


def test_event_int_time_accepted() -> None:
    assert decode_event(encode_event("h", {"kind": "k"}, 7))["at"] == 7


def event_map(**overrides: Any) -> dict[str, Any]:
    m: dict[str, Any] = {"host": "web-1", "at": 1.0, "kind": "config_rejected"}
    m.update(overrides)
    return m


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"\x92\x01",
        pack([event_map()]),
        pack("event"),
        pack(None),
        pack(without(event_map(), "host")),
        pack(without(event_map(), "kind")),
        pack(without(event_map(), "at")),
        pack(event_map(host="a.b")),
        pack(event_map(host="")),
        pack(event_map(host="*")),
        pack(event_map(host=5)),
        pack(event_map(kind=5)),
        pack(event_map(kind=None)),
        pack(event_map(at="now")),
        pack(event_map(at=True)),
        pack(event_map(at=math.nan)),
        pack(event_map(at=math.inf)),
        pack(event_map(at=-math.inf)),
        pack({1: "int key", **event_map()}),
        pack(event_map(blob="x" * (64 * 1024))),
    ],
)
def test_event_malformed(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_event(data)


def test_event_not_bytes() -> None:
    with pytest.raises(ProtocolError):
        decode_event("not bytes")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- heartbeat config


def make_heartbeat(**overrides: Any) -> Heartbeat:
    values: dict[str, Any] = {
        "host": "web-1",
        "version": "0.1.0",
        "groups": ("web",),
        "mode": RunMode.RUNNING,
        "applied_rev": 5,
        "held": False,
        "interval_s": 10.0,
        "seq": 1,
        "sent_at": 100.0,
        "uptime_s": 9.0,
        "cpu_pct": 0.5,
        "rss_bytes": 1000,
    }
    values.update(overrides)
    return Heartbeat(**values)


def hb_map(**overrides: Any) -> dict[str, Any]:
    m: dict[str, Any] = msgpack.unpackb(encode_heartbeat(make_heartbeat()), raw=False)
    m.update(overrides)
    return m


CONFIG = ConfigReport(
    versions={"fleet": 3, "group:web": 1, "host:web-1": 2},
    fingerprint="0123456789abcdef",
    status="ok",
)
CONFIG_MAP = {
    "versions": {"fleet": 3, "group:web": 1, "host:web-1": 2},
    "fingerprint": "0123456789abcdef",
    "status": "ok",
    "error": "",
    "rejected": None,
}


def test_heartbeat_with_config_round_trips() -> None:
    hb = make_heartbeat(config=CONFIG)
    back = decode_heartbeat(encode_heartbeat(hb))
    assert back == hb
    assert back.config == CONFIG


def test_heartbeat_with_rejected_config() -> None:
    cfg = {"versions": {"fleet": 4}, "status": "rejected", "error": "heartbeat_s: bad",
           "rejected": {"scope": "fleet", "version": 5, "error": "heartbeat_s: bad"}}  # fmt: skip
    back = decode_heartbeat(pack(hb_map(config=cfg))).config
    assert back.status == "rejected" and back.versions == {"fleet": 4}
    assert back.rejected == ConfigRejection("fleet", 5, "heartbeat_s: bad")
    assert back.to_wire()["rejected"] == cfg["rejected"]


def test_heartbeat_encodes_config_field() -> None:
    assert hb_map()["config"]["status"] == "unknown"
    assert msgpack.unpackb(encode_heartbeat(make_heartbeat(config=CONFIG)))["config"] == CONFIG_MAP


def test_heartbeat_without_config_field_defaults_to_empty() -> None:
    m = without(hb_map(), "config")
    assert "config" not in m
    back = decode_heartbeat(pack(m))
    assert back.config == ConfigReport()
    assert back.host == "web-1"


def test_heartbeat_without_config_and_plugins_fields() -> None:
    m = without(without(hb_map(), "config"), "plugins")
    back = decode_heartbeat(pack(m))
    assert back.config == ConfigReport()
    assert back.plugins == {}
    assert back == make_heartbeat()


def test_heartbeat_default_config_is_not_shared() -> None:
    a = decode_heartbeat(pack(without(hb_map(), "config")))
    b = decode_heartbeat(pack(without(hb_map(), "config")))
    a.config.versions["x"] = 1
    assert b.config.versions == {}


@pytest.mark.parametrize(
    "value",
    [
        {"versions": {"fleet": "3"}, "status": "ok"},
        {"versions": {}, "status": 1},
        {"versions": {}, "status": "ok", "rejected": "fleet"},
        {"versions": {}, "status": "ok", "rejected": {"scope": "fleet"}},
    ],
)
def test_heartbeat_malformed_config_report(value: Any) -> None:
    with pytest.raises(ProtocolError):
        decode_heartbeat(pack(hb_map(config=value)))


@pytest.mark.parametrize("value", [None, [], ["versions"], "ok", 1, True, b"\x00"])
def test_heartbeat_non_map_config(value: Any) -> None:
    with pytest.raises(ProtocolError) as ei:
        decode_heartbeat(pack(hb_map(config=value)))
    assert ei.value.fields["field"] == "heartbeat.config"


# --------------------------------------------------------------------------- configplane.diff


def test_diff_equal_content_is_empty() -> None:
    a = make_cv(version=1)
    b = make_cv(version=2, message="same content")
    assert diff(a, b) == ""
    assert diff(a, a) == ""


def test_diff_unified_with_scope_and_version_headers() -> None:
    a = make_cv(scope="host:h1", version=2, content='log_level = "info"\nheartbeat_s = 5.0\n')
    b = make_cv(scope="host:h1", version=5, content='log_level = "debug"\nheartbeat_s = 5.0\n')
    out = diff(a, b)
    lines = out.splitlines()
    assert lines[0] == "--- host:h1 v2"
    assert lines[1] == "+++ host:h1 v5"
    assert lines[2].startswith("@@ ")
    assert '-log_level = "info"' in lines
    assert '+log_level = "debug"' in lines
    assert " heartbeat_s = 5.0" in lines
    assert out.endswith("\n")


def test_diff_between_scopes_and_direction() -> None:
    a = make_cv(scope="fleet", version=1, content="a = 1\n")
    b = make_cv(scope="group:web", version=9, content="a = 2\n")
    fwd = diff(a, b).splitlines()
    back = diff(b, a).splitlines()
    assert fwd[:2] == ["--- fleet v1", "+++ group:web v9"]
    assert back[:2] == ["--- group:web v9", "+++ fleet v1"]
    assert "-a = 1" in fwd
    assert "+a = 2" in fwd
    assert "-a = 2" in back
    assert "+a = 1" in back


def test_diff_from_empty_content() -> None:
    a = make_cv(version=1, content="")
    b = make_cv(version=2, content="x = 1\ny = 2\n")
    lines = diff(a, b).splitlines()
    assert lines[:2] == ["--- group:web v1", "+++ group:web v2"]
    assert [ln for ln in lines[2:] if not ln.startswith("@@")] == ["+x = 1", "+y = 2"]
