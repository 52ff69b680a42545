"""One reader for the programs' bootstrap settings: flags > environment > file > defaults.

The agent, the controller and hidsctl each describe their settings as a dataclass. A field
declared with `setting()` is read from the TOML file under its key (a nested dataclass is a
table), from its environment variable and from a command-line flag the program hands in; its
type says how a value is checked and its default is the default. So each setting is written
down once, and all three programs follow the same rules:

- a flag wins over the environment, which wins over the file, which wins over the default;
- a key the file does not know is refused, naming the key and the file, and so is an unknown
  variable in a program's own environment namespace (when it has one to itself);
- a value of the wrong type is refused with the type expected and where it came from;
- text (the environment, flags) is parsed: lists are comma-separated, numbers and booleans
  are read; an empty string means the default for a string or a path, and None for an
  optional one.
"""

from __future__ import annotations

import math
import tomllib
import types
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, Generic, TypeVar

from hidsd.base.errors import ConfigError

T = TypeVar("T")
_META = "hidsd.setting"


class Source(StrEnum):
    """Where a setting's value came from."""

    FLAG = "flag"
    ENV = "env"
    FILE = "file"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class Spec:
    """How one dataclass field is read (see `setting`)."""

    #: the key in the file, when it is not the field's name
    key: str | None = None
    #: the environment variable that sets it, if any
    env: str | None = None
    #: bounds of a number: greater than `gt`, at least `ge`
    gt: float | None = None
    ge: float | None = None
    #: the values a string may take; compared lower-cased, and stored so
    choices: tuple[str, ...] = ()
    #: a list must name at least one
    nonempty: bool = False
    #: the file may give a list as one comma-separated string too
    text_list: bool = False
    #: what to tell the operator beyond the rule broken
    hint: str = ""


def setting(
    default: Any = MISSING,
    *,
    default_factory: Callable[[], Any] | None = None,
    key: str | None = None,
    env: str | None = None,
    gt: float | None = None,
    ge: float | None = None,
    choices: tuple[str, ...] = (),
    nonempty: bool = False,
    text_list: bool = False,
    hint: str = "",
) -> Any:
    """A dataclass field that `load_settings` reads; the arguments are `Spec`'s."""
    meta = {_META: Spec(key, env, gt, ge, choices, nonempty, text_list, hint)}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


class _Kind(Enum):
    STR = "a string"
    OPT_STR = "a string (or empty: none)"
    BOOL = "true or false"
    INT = "an integer"
    NUM = "a finite number"
    STRS = "a list of non-empty strings"
    PATH = "a path"
    OPT_PATH = "a path (or empty: none)"
    TABLE = "a table"


def _kind(hint: Any) -> _Kind:
    """The kind of a field's type; only these types are settings."""
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = typing.get_args(hint)
        if len(args) == 2 and type(None) in args:
            hint, optional = next(a for a in args if a is not type(None)), True
    kinds: dict[tuple[Any, bool], _Kind] = {
        (str, False): _Kind.STR, (str, True): _Kind.OPT_STR, (bool, False): _Kind.BOOL,
        (int, False): _Kind.INT, (float, False): _Kind.NUM, (Path, False): _Kind.PATH,
        (Path, True): _Kind.OPT_PATH,
    }  # fmt: skip
    if (hint, optional) in kinds:
        return kinds[hint, optional]
    if not optional and typing.get_origin(hint) is tuple and typing.get_args(hint) == (str, ...):
        return _Kind.STRS
    if not optional and isinstance(hint, type) and is_dataclass(hint):
        return _Kind.TABLE
    raise TypeError(f"a setting cannot have the type {hint!r}")


def _settings(cls: type[Any]) -> list[tuple[Field[Any], Spec, Any]]:
    """(field, spec, type) of each field that is a setting, in declaration order."""
    hints = typing.get_type_hints(cls)
    return [(f, f.metadata[_META], hints[f.name]) for f in fields(cls) if _META in f.metadata]


def env_names(cls: type[Any]) -> list[str]:
    """Every environment variable the settings dataclass `cls` reads, tables included."""
    out: list[str] = []
    for _f, spec, hint in _settings(cls):
        if _kind(hint) is _Kind.TABLE:
            out += env_names(hint)
        elif spec.env:
            out.append(spec.env)
    return out


@dataclass(frozen=True)
class Loaded(Generic[T]):
    """The settings, and where each came from (keyed by dotted name, as in the file)."""

    value: T
    sources: Mapping[str, Source]


def read_toml(path: Path, what: str = "settings") -> dict[str, Any]:
    """A TOML file as a dict; ConfigError (field `path`) if it cannot be read or parsed."""
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}", field="path",
                          file=str(path)) from exc  # fmt: skip
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} are not valid TOML: {exc}", field="path",
                          file=str(path)) from exc  # fmt: skip


def load_settings(
    cls: type[T],
    *,
    file: Path | None,
    env: Mapping[str, str],
    flags: Mapping[str, object] | None = None,
    defaults: Mapping[str, object] | None = None,
    env_namespace: str | None = None,
    env_known: Collection[str] = (),
    what: str = "settings",
) -> Loaded[T]:
    """Read the settings dataclass `cls`; ConfigError names the bad setting and its source.

    `flags` and `defaults` are keyed by dotted setting name; a flag counts when it is not
    None, and `defaults` replaces a field's own default (one known only at run time).
    With `env_namespace`, a variable with that prefix that no setting reads (and that is not
    in `env_known`) is refused. `what` names the file in messages ("controller settings").
    """
    if env_namespace:
        known = {*env_names(cls), *env_known}
        unknown = sorted(v for v in env if v.startswith(env_namespace) and v not in known)
        if unknown:
            raise ConfigError(
                f"unknown environment variable {unknown[0]} (for {what}); known: "
                f"{', '.join(sorted(known))}",
                field=unknown[0],
                env=unknown[0],
            )
    reader = _Reader(file, what, env, flags or {}, defaults or {})
    value = reader.table(cls, read_toml(file, what) if file is not None else {}, "")
    stray = sorted({*reader.flags, *reader.defaults} - set(reader.sources))
    if stray:
        raise TypeError(f"{stray[0]!r} is not a setting of {cls.__name__}")
    return Loaded(value, reader.sources)


class _Reader:
    """One load: the sources, and where each value came from."""

    def __init__(
        self,
        file: Path | None,
        what: str,
        env: Mapping[str, str],
        flags: Mapping[str, object],
        defaults: Mapping[str, object],
    ) -> None:
        self.file, self.what, self.env = file, what, env
        self.flags = {k: v for k, v in flags.items() if v is not None}
        self.defaults = defaults
        self.sources: dict[str, Source] = {}

    def table(self, cls: type[Any], data: Mapping[str, Any], prefix: str) -> Any:
        specs = _settings(cls)
        keys = {spec.key or f.name for f, spec, _ in specs}
        unknown = sorted(set(data) - keys)
        if unknown:
            name = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
            where = f" in [{prefix}]" if prefix else ""
            raise ConfigError(
                f"{self.what} {self.file}: unknown key {name!r}{where}; known there: "
                f"{', '.join(sorted(keys))}",
                field=name,
                file=str(self.file),
            )
        kwargs: dict[str, Any] = {}
        for f, spec, hint in specs:
            key = spec.key or f.name
            name = f"{prefix}.{key}" if prefix else key
            kind = _kind(hint)
            if kind is _Kind.TABLE:
                sub = data.get(key, {})
                if not isinstance(sub, dict):
                    raise self._error(name, Source.FILE, spec, f"expected a table ([{name}])", sub)
                kwargs[f.name] = self.table(hint, sub, name)
            else:
                kwargs[f.name] = self._value(f, spec, kind, name, data.get(key, MISSING))
        return cls(**kwargs)

    def _value(self, f: Field[Any], spec: Spec, kind: _Kind, name: str, in_file: Any) -> Any:
        default = self._default(f, name)
        raw: Any
        if name in self.flags:
            source, raw = Source.FLAG, self.flags[name]
        elif spec.env and spec.env in self.env:
            source, raw = Source.ENV, self.env[spec.env]
        elif in_file is not MISSING:
            source, raw = Source.FILE, in_file
        else:
            source, raw = Source.DEFAULT, default
        self.sources[name] = source
        if source is not Source.DEFAULT:
            if isinstance(raw, Path):
                raw = str(raw)
            if isinstance(raw, str) and source is not Source.FILE:
                raw = self._parse(kind, raw, name, spec.env if source is Source.ENV else None)
            raw = self._typed(kind, spec, name, source, raw)
            if raw == "" and kind in (_Kind.STR, _Kind.PATH, _Kind.OPT_STR, _Kind.OPT_PATH):
                raw = None if kind in (_Kind.OPT_STR, _Kind.OPT_PATH) else default
            elif kind in (_Kind.PATH, _Kind.OPT_PATH):
                raw = Path(raw)
        return self._constrain(kind, spec, name, source, raw)

    def _default(self, f: Field[Any], name: str) -> Any:
        if name in self.defaults:
            return self.defaults[name]
        if f.default_factory is not MISSING:
            return f.default_factory()
        if f.default is MISSING:
            raise TypeError(f"setting {name!r} has no default")
        return f.default

    def _parse(self, kind: _Kind, text: str, name: str, var: str | None) -> Any:
        """Text from the environment (`var`) or a flag, as the type the file would give."""
        label = var or name
        try:
            if kind is _Kind.INT:
                return int(text)
            if kind is _Kind.NUM:
                return float(text)
        except ValueError as exc:
            raise ConfigError(f"{label}={text!r}: setting {name!r}: expected {kind.value}",
                              field=label) from exc  # fmt: skip
        if kind is _Kind.BOOL:
            word = text.strip().lower()
            if word in ("1", "true", "yes", "on"):
                return True
            if word in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{label}={text!r}: setting {name!r}: expected {kind.value}",
                              field=label)  # fmt: skip
        if kind is _Kind.STRS:
            return [x.strip() for x in text.split(",") if x.strip()]
        return text

    def _typed(self, kind: _Kind, spec: Spec, name: str, source: Source, v: Any) -> Any:
        ok: bool
        if kind in (_Kind.STR, _Kind.OPT_STR, _Kind.PATH, _Kind.OPT_PATH):
            ok = isinstance(v, str)
        elif kind is _Kind.BOOL:
            ok = isinstance(v, bool)
        elif kind is _Kind.INT:
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif kind is _Kind.NUM:
            ok = isinstance(v, int | float) and not isinstance(v, bool) and _finite(v)
            v = float(v) if ok else v
        else:
            if spec.text_list and isinstance(v, str):
                v = [x.strip() for x in v.split(",") if x.strip()]
            ok = isinstance(v, list | tuple) and all(isinstance(x, str) and x for x in v)
            v = tuple(v) if ok else v
        if not ok:
            raise self._error(name, source, spec, f"expected {kind.value}", v)
        return v

    def _constrain(self, kind: _Kind, spec: Spec, name: str, source: Source, v: Any) -> Any:
        if spec.choices and isinstance(v, str):
            v = v.lower()
            if v not in spec.choices:
                raise self._error(name, source, spec,
                                  f"expected one of {', '.join(spec.choices)}", v)  # fmt: skip
        if spec.gt is not None and v <= spec.gt:
            raise self._error(name, source, spec, f"expected {kind.value} > {spec.gt:g}", v)
        if spec.ge is not None and v < spec.ge:
            raise self._error(name, source, spec, f"expected {kind.value} >= {spec.ge:g}", v)
        if spec.nonempty and not v:
            raise self._error(name, source, spec, "list at least one", None)
        return v

    def _error(self, name: str, source: Source, spec: Spec, rule: str, v: Any) -> ConfigError:
        where: dict[str, str] = {}
        prefix = ""
        if source is Source.FILE:
            where, prefix = {"file": str(self.file)}, f"{self.what} {self.file}: "
        elif source is Source.ENV and spec.env:
            where, prefix = {"env": spec.env}, f"{spec.env}: "
        elif source is Source.FLAG:
            prefix = "command line: "
        got = "" if v is None else f", got {v!r}"
        hint = f"; {spec.hint}" if spec.hint else ""
        return ConfigError(f"{prefix}setting {name!r}: {rule}{got}{hint}", field=name, **where)


def _finite(v: float) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer too large for a float
        return False
