"""Typed readers for the fields of a decoded reply, and `Plain`, what msgpack carries.

Pure: no I/O, no state. Each reader checks one value and names where it is wrong
(`ProtocolError`); it returns the value as received (an int stays an int where a number is
allowed), so a reply decoded and encoded again is the same map and hidsctl's JSON of it the same
text."""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from typing import TypeAlias, TypeVar

from hidsd.base.errors import ProtocolError

#: a value msgpack carries, maps keyed by text: the type of a reply's free-form parts
Plain: TypeAlias = (
    bool | int | float | str | bytes | Sequence["Plain"] | Mapping[str, "Plain"] | None
)
#: a reply or a request as it goes on the wire
WireMap: TypeAlias = Mapping[str, Plain]

T = TypeVar("T")
E = TypeVar("E", bound=Enum)
#: reads one value; the text says where it was (for the error)
Reader = Callable[[object, str], T]


def _wrong(where: str, want: str, value: object) -> ProtocolError:
    return ProtocolError(f"{where}: expected {want}, got {type(value).__name__}", field=where)


def as_map(value: object, where: str) -> dict[str, object]:
    # set(map(type, ...)) runs in C: this is on the controller's hot path (every heartbeat)
    if not isinstance(value, dict) or (value and set(map(type, value)) != {str}):
        raise _wrong(where, "a map keyed by text", value)
    return value


def as_text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise _wrong(where, "text", value)
    return value


def as_int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong(where, "a whole number", value)
    return value


def as_number(value: object, where: str) -> float:
    """A finite int or float, returned as it came (an int is not made a float)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong(where, "a number", value)
    if not math.isfinite(value):
        raise ProtocolError(f"{where}: expected a finite number", field=where)
    return value


def as_flag(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise _wrong(where, "true or false", value)
    return value


def as_plain(value: object, where: str) -> Plain:
    """Free-form data (an agent's facts, an event's details): anything msgpack carries, with
    maps keyed by text (JSON output needs them)."""
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if isinstance(value, list | tuple):
        return [as_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: as_plain(v, f"{where}.{k}") for k, v in as_map(value, where).items()}
    raise _wrong(where, "plain data", value)


def optional(read: Reader[T]) -> Reader[T | None]:
    """`read`, or None for None."""

    def read_optional(value: object, where: str) -> T | None:
        return None if value is None else read(value, where)

    return read_optional


def map_of(read: Reader[T]) -> Reader[dict[str, T]]:
    """A map of text to values each read with `read`."""

    def read_map(value: object, where: str) -> dict[str, T]:
        m = as_map(value, where)
        try:
            # the path of a value is only built when one is wrong (a reply can hold 10,000)
            return {k: read(v, where) for k, v in m.items()}
        except ProtocolError:
            for k, v in m.items():
                read(v, f"{where}.{k}")
            raise

    return read_map


def list_of(read: Reader[T]) -> Reader[tuple[T, ...]]:
    """A list of values each read with `read`."""

    def read_list(value: object, where: str) -> tuple[T, ...]:
        if not isinstance(value, list | tuple):
            raise _wrong(where, "a list", value)
        try:
            return tuple([read(v, where) for v in value])
        except ProtocolError:
            for i, v in enumerate(value):
                read(v, f"{where}[{i}]")
            raise

    return read_list


def enum_of(kind: type[E]) -> Reader[E]:
    members = typing.cast(Mapping[object, E], kind._value2member_map_)

    def read_enum(value: object, where: str) -> E:
        member = members.get(value) if type(value) is str else None
        if member is not None:
            return member
        as_text(value, where)
        known = ", ".join(str(e.value) for e in kind)
        raise ProtocolError(f"{where}: {value!r} is not one of {known}", field=where)

    return read_enum


def get(m: Mapping[str, object], name: str, read: Reader[T], what: str) -> T:
    """Field `name` of `m`, read with `read`; ProtocolError if it is missing or wrong."""
    if name not in m:
        raise ProtocolError(f"{what}: missing field {name!r}", field=name)
    return read(m[name], f"{what}.{name}")


def get_or(m: Mapping[str, object], name: str, read: Reader[T], what: str, default: T) -> T:
    """Field `name` of `m`, or `default` where an older sender leaves it out."""
    return get(m, name, read, what) if name in m else default


text_list = list_of(as_text)
int_map = map_of(as_int)
number_map = map_of(as_number)
opt_text = optional(as_text)
opt_int = optional(as_int)
opt_number = optional(as_number)
opt_flag = optional(as_flag)
