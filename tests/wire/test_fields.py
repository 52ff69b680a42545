"""hidsd.wire.fields: each reader names where a value is wrong and keeps a right one as it came."""

from __future__ import annotations

import math
from typing import Any

import pytest

from hidsd.base.errors import ProtocolError
from hidsd.wire.commands import RunMode
from hidsd.wire.fields import (
    as_flag,
    as_int,
    as_map,
    as_number,
    as_plain,
    as_text,
    enum_of,
    get,
    get_or,
    int_map,
    list_of,
    opt_int,
    text_list,
)


def test_values_come_back_as_they_came() -> None:
    assert as_number(3, "n") == 3 and type(as_number(3, "n")) is int  # not made 3.0: same JSON
    assert as_number(2.5, "n") == 2.5
    assert as_int(7, "i") == 7 and as_text("x", "t") == "x" and as_flag(False, "f") is False
    assert opt_int(None, "o") is None and opt_int(4, "o") == 4
    assert text_list(["a", "b"], "l") == ("a", "b")
    assert int_map({"a": 1}, "m") == {"a": 1}
    assert enum_of(RunMode)("stopped", "mode") is RunMode.STOPPED
    nested = {"a": [1, 2.5, None, True, b"x", {"b": "c"}]}
    assert as_plain(nested, "facts") == nested


@pytest.mark.parametrize(
    ("read", "value", "message"),
    [
        (as_int, True, "r: expected a whole number, got bool"),
        (as_int, 1.5, "r: expected a whole number, got float"),
        (as_number, "1", "r: expected a number, got str"),
        (as_number, False, "r: expected a number, got bool"),
        (as_number, math.nan, "r: expected a finite number"),
        (as_number, math.inf, "r: expected a finite number"),
        (as_text, None, "r: expected text, got NoneType"),
        (as_flag, 1, "r: expected true or false, got int"),
        (as_map, [1], "r: expected a map keyed by text, got list"),
        (as_map, {b"k": 1}, "r: expected a map keyed by text"),
        (text_list, "ab", "r: expected a list, got str"),
        (text_list, ["a", 1], r"r\[1\]: expected text, got int"),
        (int_map, {"a": "1"}, r"r\.a: expected a whole number, got str"),
        (enum_of(RunMode), "paused", "r: 'paused' is not one of running, stopped, exiting"),
        (as_plain, {"a": {1: 2}}, r"r\.a: expected a map keyed by text"),
        (as_plain, {"a": {1, 2}}, r"r\.a: expected plain data, got set"),
    ],
)
def test_a_wrong_value_is_named(read: Any, value: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as err:
        read(value, "r")
    assert err.value.fields["field"].startswith("r")


def test_fields_missing_and_defaulted() -> None:
    m = {"a": 1, "l": [[1, 2], [3]]}
    assert get(m, "a", as_int, "reply") == 1
    with pytest.raises(ProtocolError, match="reply: missing field 'b'"):
        get(m, "b", as_int, "reply")
    with pytest.raises(ProtocolError, match=r"reply\.a: expected text"):
        get(m, "a", as_text, "reply")
    assert get_or(m, "b", as_int, "reply", 9) == 9
    assert get(m, "l", list_of(list_of(as_int)), "reply") == ((1, 2), (3,))
