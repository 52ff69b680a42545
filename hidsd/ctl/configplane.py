"""Config plane operations for hidsctl: set, get, history, diff, rollback, effective.

Every version is an immutable key; `current` is a pointer moved by compare-and-swap on its
mod_revision, so two concurrent writers cannot lose each other's change: the second one gets
StoreConflict and nothing of it is written. Rollback writes a new version with an old
version's content; history is never rewritten.
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass
from typing import Any

from hidsd.base.errors import HidsError, ProtocolError, StoreConflict
from hidsd.bus.store import Store
from hidsd.wire import dynconfig
from hidsd.wire.configstore import (
    ConfigVersion,
    decode_config_pointer,
    decode_config_version,
    encode_config_pointer,
    encode_config_version,
)
from hidsd.wire.names import KeyLayout, Scope


class NotFound(HidsError):
    code = "not_found"


@dataclass(frozen=True, slots=True)
class Current:
    version: int
    digest: str
    mod_revision: int


async def current(store: Store, keys: KeyLayout, scope: Scope, target: str) -> Current | None:
    """The scope's pointer. A corrupt pointer (written around hidsctl) is reported with the
    highest version that exists, so the next `set` or `rollback` repairs it."""
    kv = await store.get(keys.config_current(scope, target))
    if kv is None:
        return None
    try:
        version, digest = decode_config_pointer(kv.value)
    except ProtocolError:
        kvs, _ = await store.get_prefix(keys.config_versions(scope, target), keys_only=True)
        numbers = [int(k.key.rsplit("/", 1)[-1]) for k in kvs if k.key.rsplit("/", 1)[-1].isdigit()]
        return Current(max(numbers, default=0), "", kv.mod_revision)
    return Current(version, digest, kv.mod_revision)


async def set_config(
    store: Store,
    keys: KeyLayout,
    scope: Scope,
    target: str,
    content: str,
    message: str,
    author: str,
    expect_version: int | None = None,
    rollback_of: int | None = None,
) -> ConfigVersion:
    """Validate and write a new version, then move the pointer, in one transaction."""
    dynconfig.parse(content)  # raises ConfigError naming the field
    cur = await current(store, keys, scope, target)
    have = cur.version if cur else 0
    if expect_version is not None and expect_version != have:
        raise StoreConflict(
            f"{keys.scope_label(scope, target)} is at version {have}, not {expect_version}: "
            "someone else changed it; review `hidsctl config history` and try again",
            current=have,
        )
    version = have + 1
    cv = ConfigVersion(
        scope=keys.scope_label(scope, target),
        version=version,
        content=content,
        digest=dynconfig.digest(content),
        author=author,
        time=time.time(),
        message=message,
        rollback_of=rollback_of,
    )
    pointer_key = keys.config_current(scope, target)
    version_key = keys.config_version(scope, target, version)
    try:
        await store.put_all(
            {
                version_key: encode_config_version(cv),
                pointer_key: encode_config_pointer(version, cv.digest),
            },
            absent=[version_key],
            unchanged={pointer_key: cur.mod_revision if cur else 0},
        )
    except StoreConflict as exc:
        raise StoreConflict(
            f"{cv.scope}: a concurrent writer set version {version} first; your change was "
            "not written. Review `hidsctl config history` and try again.",
            scope=cv.scope,
            version=version,
        ) from exc
    return cv


async def get_version(
    store: Store, keys: KeyLayout, scope: Scope, target: str, version: int | None = None
) -> ConfigVersion:
    label = keys.scope_label(scope, target)
    if version is None:
        cur = await current(store, keys, scope, target)
        if cur is None:
            raise NotFound(f"{label} has no config yet", scope=label)
        version = cur.version
    kv = await store.get(keys.config_version(scope, target, version))
    if kv is None:
        raise NotFound(f"{label} has no version {version}", scope=label, version=version)
    return decode_config_version(kv.value)


async def history(store: Store, keys: KeyLayout, scope: Scope, target: str) -> list[ConfigVersion]:
    kvs, _ = await store.get_prefix(keys.config_versions(scope, target))
    out = []
    for kv in kvs:
        try:
            out.append(decode_config_version(kv.value))
        except ProtocolError as exc:
            raise ProtocolError(f"{kv.key}: {exc.message}", key=kv.key) from exc
    return sorted(out, key=lambda v: v.version)


async def rollback(
    store: Store, keys: KeyLayout, scope: Scope, target: str, to_version: int, message: str,
    author: str,
) -> ConfigVersion:  # fmt: skip
    old = await get_version(store, keys, scope, target, to_version)
    return await set_config(
        store, keys, scope, target, old.content, message or f"rollback to version {to_version}",
        author, rollback_of=to_version,
    )  # fmt: skip


def diff(a: ConfigVersion, b: ConfigVersion) -> str:
    return "".join(
        difflib.unified_diff(
            a.content.splitlines(keepends=True),
            b.content.splitlines(keepends=True),
            fromfile=f"{a.scope} v{a.version}",
            tofile=f"{b.scope} v{b.version}",
        )
    )


async def effective(
    store: Store, keys: KeyLayout, host: str, groups: tuple[str, ...]
) -> dict[str, Any]:
    """What the agent computes: current versions of fleet < groups < host, merged."""
    layers: list[tuple[str, dict[str, Any]]] = []
    versions: dict[str, int] = {}
    for scope, target in keys.config_applicable(host, groups):
        label = keys.scope_label(scope, target)
        try:
            cv = await get_version(store, keys, scope, target)
        except NotFound:
            continue
        layers.append((label, dynconfig.parse(cv.content)))
        versions[label] = cv.version
    eff, sources = dynconfig.merge(layers)
    return {
        "host": host,
        "groups": list(groups),
        "versions": versions,
        "effective": eff,
        "sources": sources,
        "fingerprint_without_bootstrap": dynconfig.fingerprint(eff),
    }
