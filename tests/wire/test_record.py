"""hidsd.wire.record: a dataclass's map derived from its fields, strict on the way in."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, ClassVar

import msgpack
import pytest

from hidsd.base.errors import ProtocolError
from hidsd.wire.fields import Reader, as_text
from hidsd.wire.record import WireRecord, decode, encode


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True, slots=True)
class Plainly:
    """Not a WireRecord: a plain dataclass nested in one is coded by the same rules."""

    n: int
    label: str = ""


@dataclass(frozen=True, slots=True)
class Inner(WireRecord):
    at: float
    tags: tuple[str, ...] = ()


def _upper(value: object, where: str) -> str:
    text = as_text(value, where)
    if text != text.upper():
        raise ProtocolError(f"{where}: must be upper case", field=where)
    return text


@dataclass(frozen=True, slots=True)
class Outer(WireRecord):
    name: str
    count: int
    ok: bool
    ratio: float
    colour: Colour
    inner: Inner
    inners: tuple[Inner, ...]
    by_host: Mapping[str, Inner]
    maybe: int | None
    code: str
    plainly: Plainly
    is_self: bool = False
    note: str = ""
    extra: Mapping[str, int] = field(default_factory=dict)
    late: str | None = None

    wire_keys: ClassVar[Mapping[str, str]] = {"is_self": "self"}
    wire_optional = frozenset({"extra"})
    wire_omit = frozenset({"note", "late"})
    wire_readers: ClassVar[Mapping[str, Reader[Any]]] = {"code": _upper}
    wire_what = "outer reply"


INNER = Inner(1.5, ("a", "b"))
OUTER = Outer("x", 3, True, 0.5, Colour.BLUE, INNER, (INNER, Inner(2)), {"h1": INNER}, None,
              "ABC", Plainly(4, "p"), is_self=True)  # fmt: skip


def test_map_is_one_key_per_field_in_field_order() -> None:
    m = OUTER.to_wire()
    assert list(m) == ["name", "count", "ok", "ratio", "colour", "inner", "inners", "by_host",
                       "maybe", "code", "plainly", "self", "extra"]  # fmt: skip
    assert m["colour"] == "blue" and m["self"] is True
    assert m["inner"] == {"at": 1.5, "tags": ["a", "b"]}
    assert m["inners"] == [{"at": 1.5, "tags": ["a", "b"]}, {"at": 2, "tags": []}]
    assert m["plainly"] == {"n": 4, "label": "p"}
    assert encode(OUTER) == m


def test_round_trip_through_msgpack() -> None:
    data = msgpack.packb(OUTER.to_wire(), use_bin_type=True)
    back = Outer.from_wire(msgpack.unpackb(data, raw=False))
    assert back == OUTER
    assert msgpack.packb(back.to_wire(), use_bin_type=True) == data


def test_omitted_fields_come_back_when_set() -> None:
    o = replace(OUTER, note="n", late="l")
    m = o.to_wire()
    assert m["note"] == "n" and list(m)[-2:] == ["extra", "late"]
    assert Outer.from_wire(m) == o


def test_optional_key_missing_takes_a_fresh_default() -> None:
    m = {k: v for k, v in OUTER.to_wire().items() if k != "extra"}
    a, b = Outer.from_wire(m), Outer.from_wire(m)
    assert a.extra == {} and a.extra is not b.extra


def test_unknown_keys_are_ignored() -> None:
    assert Outer.from_wire({**OUTER.to_wire(), "newer": [1, 2]}) == OUTER


def test_an_int_stays_an_int_where_a_number_is_asked() -> None:
    back = Inner.from_wire({"at": 2, "tags": []})
    assert back.at == 2 and isinstance(back.at, int)


def _broken(key: str, value: Any) -> dict[str, Any]:
    m = dict(OUTER.to_wire())
    if value is KeyError:
        del m[key]
    else:
        m[key] = value
    return m


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("name", KeyError, "outer reply: missing field 'name'"),
        ("self", KeyError, "outer reply: missing field 'self'"),
        ("name", 1, r"outer reply\.name: expected text, got int"),
        ("count", True, r"outer reply\.count: expected a whole number, got bool"),
        ("count", 1.0, r"outer reply\.count: expected a whole number, got float"),
        ("ok", 1, r"outer reply\.ok: expected true or false"),
        ("ratio", math.nan, r"outer reply\.ratio: expected a finite number"),
        ("ratio", math.inf, r"outer reply\.ratio: expected a finite number"),
        ("ratio", "1", r"outer reply\.ratio: expected a number"),
        ("colour", "green", r"outer reply\.colour: 'green' is not one of red, blue"),
        ("inner", [], r"outer reply\.inner: expected a map"),
        ("inners", [{"at": "x"}], r"outer reply\.inners\[0\]\.at: expected a number"),
        ("by_host", {"h": {"tags": []}}, r"outer reply\.by_host\.h: missing field 'at'"),
        ("maybe", "1", r"outer reply\.maybe: expected a whole number"),
        ("code", "abc", r"outer reply\.code: must be upper case"),
        ("plainly", {"label": "p"}, r"outer reply\.plainly: missing field 'n'"),
        ("extra", {"a": "1"}, r"outer reply\.extra\.a: expected a whole number"),
    ],
)
def test_malformed_map_is_refused_naming_the_field(key: str, value: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        Outer.from_wire(_broken(key, value))


@pytest.mark.parametrize("value", [None, [], "x", {1: 2}])
def test_not_a_map_is_refused(value: Any) -> None:
    with pytest.raises(ProtocolError, match="outer reply: expected a map keyed by text"):
        Outer.from_wire(value)


def test_plain_dataclass_codes_by_the_same_rules() -> None:
    assert decode(Plainly, encode(Plainly(1)), "p") == Plainly(1)
    with pytest.raises(ProtocolError, match=r"p\.n: expected a whole number"):
        decode(Plainly, {"n": "1"}, "p")


def test_a_field_without_a_reader_is_a_programming_error() -> None:
    @dataclass(frozen=True, slots=True)
    class Odd(WireRecord):
        blob: set[int]

    with pytest.raises(TypeError, match=r"Odd\.blob: no wire reader"):
        Odd.from_wire({"blob": []})


def test_optional_without_default_is_a_programming_error() -> None:
    @dataclass(frozen=True, slots=True)
    class NoDefault(WireRecord):
        x: int

        wire_optional = frozenset({"x"})

    with pytest.raises(TypeError, match="needs a default"):
        NoDefault.from_wire({})
