"""`WireRecord`: a dataclass whose map on the wire is derived from its fields.

Each field is one key (its name, or `wire_keys`' rename), in field order, so the bytes are the
same as a hand-written map in that order. The value's type hint picks how it is written and
read: text, whole numbers, numbers (an int stays an int), flags, enums (by value), `X | None`,
`tuple[X, ...]` (a list), `Mapping[str, X]` (a map keyed by text), a class with its own
`to_wire` / `from_wire` (a nested record), or a plain dataclass (same rules). A field whose
hint says none of these names its reader in `wire_readers` (e.g. free-form `Plain`, or a name
that must also pass `check_name`).

Decoding is strict: a missing key is refused (`ProtocolError` naming it) unless the field is in
`wire_optional` (an older sender leaves it out: the field's default is used) or `wire_missing`
(the value to use, for a field without a default); keys the record
does not know are ignored. `wire_omit` fields are left out of the map while they hold their
default (None, "", ...), as a sender that never set them would.

Pure: no I/O; the per-class plan is derived once, from the class, and cached."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Hashable, Mapping
from dataclasses import MISSING, dataclass
from enum import Enum
from typing import Any, ClassVar, Self, TypeVar, Union, get_args, get_origin, get_type_hints

from hidsd.base.errors import ProtocolError
from hidsd.wire.fields import (
    Plain,
    Reader,
    as_flag,
    as_int,
    as_map,
    as_number,
    as_text,
    enum_of,
    list_of,
    map_of,
    optional,
)

T = TypeVar("T")
#: writes one field's value as msgpack carries it
Writer = Callable[[Any], Plain]


class WireRecord:
    """Mix into a dataclass (frozen, slots) to get `to_wire` / `from_wire` from its fields."""

    __slots__ = ()
    #: field name -> key on the wire, where they differ
    wire_keys: ClassVar[Mapping[str, str]] = {}
    #: fields that may be missing on the wire (their default is used)
    wire_optional: ClassVar[frozenset[str]] = frozenset()
    #: field name -> the value a missing key stands for (a field without a default)
    wire_missing: ClassVar[Mapping[str, Any]] = {}
    #: fields left out of the map while they hold their default
    wire_omit: ClassVar[frozenset[str]] = frozenset()
    #: field name -> reader, for fields whose type hint does not say how to read them
    wire_readers: ClassVar[Mapping[str, Reader[Any]]] = {}
    #: field name -> writer, for fields whose type hint does not say how to write them
    wire_writers: ClassVar[Mapping[str, Writer]] = {}
    #: what the record is called in an error when the caller does not say
    wire_what: ClassVar[str] = ""

    def to_wire(self) -> dict[str, Plain]:
        return encode(self)

    @classmethod
    def from_wire(cls, obj: object, what: str = "") -> Self:
        out: Self = _codec(cls).read(obj, what or cls.wire_what or cls.__name__)
        return out


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    key: str
    write: Writer
    read: Reader[Any]
    #: what the field holds when the key is missing (MISSING: the key is required)
    default: Any
    omit: bool
    #: makes a fresh default per decode (a mutable default is never shared between records)
    factory: Callable[[], Any] | None = None
    #: a test on `v` that takes the value as it is, without calling `read` (see `_FAST`)
    fast: str = ""
    #: `write` is the identity: the value goes on the wire as it is
    plain: bool = False


def _identity(value: Any) -> Plain:
    return typing.cast(Plain, value)


#: for a field of one of these types, a test (on `v`) that takes the value as it is without
#: calling the reader; anything else goes to the reader, which names what is wrong
_FAST: dict[object, str] = {
    str: "type(v) is str",
    int: "type(v) is int",
    bool: "type(v) is bool",
    # v - v == 0 is false for NaN and the infinities
    float: "type(v) is int or (type(v) is float and v - v == 0)",
}


def _is_record(hint: object) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _writer(hint: object) -> Writer:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(hint) if a is not type(None)]
        if len(inner) == 1:
            write = _writer(inner[0])
            if write is _identity:
                return _identity
            return lambda v: None if v is None else write(v)
        return _identity
    if origin is tuple:
        write = _writer(get_args(hint)[0])
        if write is _identity:
            return list
        return lambda v: [write(x) for x in v]
    if origin in (dict, Mapping) or origin is typing.Mapping:
        write = _writer(get_args(hint)[1])
        if write is _identity:
            return _identity
        return lambda v: {k: write(x) for k, x in v.items()}
    if isinstance(hint, type) and issubclass(hint, Enum):
        return lambda v: v.value
    if isinstance(hint, type) and hasattr(hint, "to_wire"):
        return lambda v: v.to_wire()
    if _is_record(hint):
        return encode
    return _identity


def _reader(hint: object, owner: type, name: str) -> Reader[Any]:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(hint) if a is not type(None)]
        if len(inner) == 1:
            return optional(_reader(inner[0], owner, name))
    elif origin is tuple:
        args = get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return list_of(_reader(args[0], owner, name))
    elif origin in (dict, Mapping):
        key, value = get_args(hint)
        if key is str:
            return map_of(_reader(value, owner, name))
    elif hint is str:
        return as_text
    elif hint is bool:
        return as_flag
    elif hint is int:
        return as_int
    elif hint is float:
        return as_number
    elif isinstance(hint, type) and issubclass(hint, Enum):
        return enum_of(hint)
    elif isinstance(hint, type) and hasattr(hint, "from_wire") and not _derived_read(hint):
        own: Reader[Any] = hint.from_wire
        return own
    elif _is_record(hint):
        return _nested(typing.cast(type, hint))
    raise TypeError(
        f"{owner.__name__}.{name}: no wire reader for {hint!r}; name one in wire_readers"
    )


@dataclass(frozen=True, slots=True)
class _Codec:
    encode: Callable[[Any], dict[str, Plain]]
    #: from a map already checked to be keyed by text
    decode: Callable[[Mapping[str, object], str], Any]
    #: from any value (checks it is a map keyed by text first)
    read: Callable[[object, str], Any]


def _derived_read(cls: type) -> bool:
    """A WireRecord whose `from_wire` is the derived one (not written by hand)."""
    own = getattr(cls, "from_wire", None)
    derived = typing.cast(Any, WireRecord.from_wire).__func__
    return getattr(own, "__func__", None) is derived


def _nested(record: type) -> Reader[Any]:
    """A nested record's compiled reader, looked up on first use (the class may refer to one
    defined after it)."""
    found: list[Callable[[object, str], Any]] = []

    def read(value: object, where: str) -> Any:
        if not found:
            found.append(_codec(record).read)
        return found[0](value, where)

    return read


def _codec(cls: type) -> _Codec:
    # mypy does not see a class as Hashable; it is (by identity)
    return _compile(typing.cast(Hashable, cls))


@functools.cache
def _compile(cls: Any) -> _Codec:
    """Python source for this class's encoder and decoder, compiled once: as fast as written by
    hand (the controller decodes every heartbeat), and derived from the fields all the same."""
    plan = _derive(cls)
    env: dict[str, Any] = {"cls": cls, "ProtocolError": ProtocolError}
    enc = ["def encode(o):", "    d = {}"]
    dec = ["def decode(m, what):"]
    body_at = len(dec)
    for i, f in enumerate(plan):
        env[f"W{i}"], env[f"R{i}"], env[f"D{i}"], env[f"F{i}"] = (
            f.write,
            f.read,
            f.default,
            f.factory,
        )
        value = f"o.{f.name}" if f.plain else f"W{i}(o.{f.name})"
        if f.omit:
            enc += [f"    if o.{f.name} != D{i}:", f"        d[{f.key!r}] = {value}"]
        else:
            enc.append(f"    d[{f.key!r}] = {value}")
        read = f"R{i}(v, what + {'.' + f.key!r})"
        dec += [f"    if {f.key!r} in m:", f"        v = m[{f.key!r}]"]
        if f.fast:
            dec.append(f"        x{i} = v if {f.fast} else {read}")
        else:
            dec.append(f"        x{i} = {read}")
        if f.factory is not None:
            dec += ["    else:", f"        x{i} = F{i}()"]
        elif f.default is not MISSING:
            dec += ["    else:", f"        x{i} = D{i}"]
        else:
            missing = f": missing field {f.key!r}"
            dec += [
                "    else:",
                f"        raise ProtocolError(what + {missing!r}, field={f.key!r})",
            ]
    enc.append("    return d")
    dec.append(f"    return cls({', '.join(f'x{i}' for i in range(len(plan)))})")
    env["as_map"] = as_map
    checked = ["def read(m, what):", "    m = as_map(m, what)", *dec[body_at:]]
    source = "\n".join(enc + dec + checked)
    exec(compile(source, f"<wire codec of {cls.__qualname__}>", "exec"), env)
    return _Codec(env["encode"], env["decode"], env["read"])


def _derive(cls: Any) -> tuple[_Field, ...]:
    hints = get_type_hints(cls)
    keys: Mapping[str, str] = getattr(cls, "wire_keys", {})
    readers: Mapping[str, Reader[Any]] = getattr(cls, "wire_readers", {})
    optional_: frozenset[str] = getattr(cls, "wire_optional", frozenset())
    omit: frozenset[str] = getattr(cls, "wire_omit", frozenset())
    missing: Mapping[str, Any] = getattr(cls, "wire_missing", {})
    writers: Mapping[str, Writer] = getattr(cls, "wire_writers", {})
    plan = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        default: Any = MISSING
        factory: Callable[[], Any] | None = None
        if f.name in missing:
            default = missing[f.name]
        elif f.name in optional_ or f.name in omit:
            if f.default is not MISSING:
                default = f.default
            elif f.default_factory is not MISSING:
                factory = f.default_factory
                default = factory()
            else:
                raise TypeError(f"{cls.__name__}.{f.name}: optional on the wire needs a default")
        read = readers.get(f.name) or _reader(hint, cls, f.name)
        write = writers.get(f.name) or _writer(hint)
        fast = "" if f.name in readers else _FAST.get(hint, "")
        plan.append(
            _Field(
                f.name,
                keys.get(f.name, f.name),
                write,
                read,
                default,
                f.name in omit,
                factory,
                fast,
                write is _identity,
            )
        )
    return tuple(plan)


def encode(obj: Any) -> dict[str, Plain]:
    """The map of a dataclass instance, one key per field in field order."""
    return _codec(type(obj)).encode(obj)


def decode(cls: type[T], obj: object, what: str) -> T:
    """A `cls` from its map; `ProtocolError` naming the first field that is missing or wrong."""
    out: T = _codec(cls).decode(as_map(obj, what), what)
    return out


def decode_map(cls: type[T], m: Mapping[str, object], what: str) -> T:
    """`decode` for a map already checked to be keyed by text (a flat map read twice)."""
    out: T = _codec(cls).decode(m, what)
    return out
