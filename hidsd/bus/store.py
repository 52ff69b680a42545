"""The etcd store adapter: the only module that imports the etcd client.

Everything above it sees `KV` records, revisions and our own errors (`StoreUnavailable`,
`StoreAuthError`, `StorePermissionDenied`, `StoreConflict`), never gRPC or etcd3aio types.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

# Our children (plugins, servers) exec right after fork, so gRPC's fork handlers only do
# harm: with its threads busy they left forked plugins crashing with SIGSEGV. Must be set
# before grpc is imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc
import grpc.aio
from etcd3aio import (
    Etcd3Client,
    EtcdConnectionError,
    EtcdError,
    EtcdPermissionDeniedError,
    EtcdTransientError,
    EtcdUnauthenticatedError,
    PermissionType,
    prefix_range_end,
)
from etcd3aio.kv import KVService

from hidsd.base.errors import (
    HidsError,
    StoreAuthError,
    StoreConflict,
    StorePermissionDenied,
    StoreUnavailable,
)


@dataclass(frozen=True, slots=True)
class KV:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    version: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    key: str
    value: bytes
    mod_revision: int
    deleted: bool


def _kv(raw: Any) -> KV:
    return KV(
        key=raw.key.decode("utf-8", "replace"),
        value=bytes(raw.value),
        mod_revision=int(raw.mod_revision),
        create_revision=int(raw.create_revision),
        version=int(raw.version),
    )


def _map_error(exc: BaseException, endpoints: Sequence[str]) -> HidsError:
    where = ", ".join(endpoints)
    if isinstance(exc, EtcdPermissionDeniedError):
        return StorePermissionDenied(
            f"etcd denied the operation: the user lacks a role for it ({exc})", endpoints=where
        )
    if isinstance(exc, EtcdUnauthenticatedError):
        return StoreAuthError(f"etcd rejected the credentials or token ({exc})", endpoints=where)
    if isinstance(exc, grpc.aio.AioRpcError):
        code = exc.code()
        if code is grpc.StatusCode.INVALID_ARGUMENT and "auth" in (exc.details() or "").lower():
            return StoreAuthError(
                f"etcd rejected the credentials: {exc.details()}", endpoints=where
            )
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return StoreUnavailable(f"etcd unreachable at {where}: {code.name}", endpoints=where)
        return StoreUnavailable(f"etcd error at {where}: {code.name} {exc.details()}")
    if isinstance(exc, EtcdConnectionError | EtcdTransientError | TimeoutError | OSError):
        return StoreUnavailable(f"etcd unreachable at {where}", endpoints=where)
    return StoreUnavailable(f"etcd error at {where}: {exc}", endpoints=where)


_STORE_ERRORS = (EtcdError, grpc.aio.AioRpcError, TimeoutError, OSError)
T = TypeVar("T")

#: Key permissions for roles, in our words.
PERMS = {"read": PermissionType.READ, "write": PermissionType.WRITE,
         "readwrite": PermissionType.READWRITE}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Grant:
    """A role's permission on one key, or on every key under a prefix."""

    key: str
    perm: str = "read"
    prefix: bool = False


class Store:
    """Async etcd access with bounded timeouts and our error types.

    With credentials, authentication is lazy (the first call, so an agent starts even while
    etcd is down) and the token is renewed before `token_refresh_s` or whenever etcd says it
    expired, then the call is retried once.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        user: str | None = None,
        password: str | None = None,
        timeout_s: float = 3.0,
        token_refresh_s: float = 240.0,
    ) -> None:
        self.endpoints = tuple(endpoints)
        self.timeout_s = timeout_s
        self.token_refresh_s = token_refresh_s
        self.user = user
        self._password = password
        self._client: Etcd3Client | None = None
        self._token_at = 0.0
        self.reauths = 0

    async def open(self) -> None:
        """Create the channel. It connects lazily: this does not fail when etcd is down."""
        client = Etcd3Client(
            list(self.endpoints),
            rpc_max_attempts=2,
            watch_reconnect_backoff_seconds=0.2,
            watch_max_reconnect_backoff_seconds=2.0,
        )
        await client.connect()
        self._client = client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def _c(self) -> Etcd3Client:
        if self._client is None:
            raise StoreUnavailable("store is not open")
        return self._client

    async def _authenticate(self, client: Etcd3Client, force: bool) -> None:
        if self.user is None:
            return
        fresh = time.monotonic() - self._token_at < self.token_refresh_s
        if self._token_at and fresh and not force:
            return
        assert client.auth is not None
        resp = await client.auth.authenticate(
            self.user, self._password or "", timeout=self.timeout_s
        )
        client.set_token(resp.token)
        if self._token_at:
            self.reauths += 1
        self._token_at = time.monotonic()

    async def _call(self, op: Callable[[Etcd3Client], Awaitable[T]]) -> T:
        """Run one etcd operation with auth renewal and error mapping."""
        client = self._c
        for attempt in (1, 2):
            try:
                await self._authenticate(client, force=attempt == 2)
                return await op(client)
            except EtcdUnauthenticatedError as exc:
                if self.user is None or attempt == 2:
                    raise _map_error(exc, self.endpoints) from exc
                # the token expired or was revoked: authenticate again and retry once
            except _STORE_ERRORS as exc:
                raise _map_error(exc, self.endpoints) from exc
        raise AssertionError("unreachable")

    async def get(self, key: str) -> KV | None:
        resp = await self._call(lambda c: c.kv.get(key, timeout=self.timeout_s))  # type: ignore[union-attr]
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def get_many(self, keys: Sequence[str]) -> tuple[list[KV], int]:
        """Read several keys in one transaction: one consistent revision for all of them."""
        ops = [KVService.txn_op_get(k) for k in keys]
        resp = await self._call(lambda c: c.kv.txn([], ops, timeout=self.timeout_s))  # type: ignore[union-attr]
        out = [_kv(kv) for r in resp.responses for kv in r.response_range.kvs]
        return out, int(resp.header.revision)

    async def get_prefixes(self, prefixes: Sequence[str]) -> tuple[list[KV], int]:
        """Every key under several prefixes, in one transaction (one revision)."""
        ops = [KVService.txn_op_get(p, range_end=prefix_range_end(p)) for p in prefixes]
        resp = await self._call(lambda c: c.kv.txn([], ops, timeout=self.timeout_s))  # type: ignore[union-attr]
        out = [_kv(kv) for r in resp.responses for kv in r.response_range.kvs]
        return out, int(resp.header.revision)

    async def get_prefix(
        self, prefix: str, limit: int = 0, keys_only: bool = False
    ) -> tuple[list[KV], int]:
        resp = await self._call(
            lambda c: c.kv.get(  # type: ignore[union-attr]
                prefix,
                range_end=prefix_range_end(prefix),
                timeout=self.timeout_s,
                limit=limit,
                keys_only=keys_only,
            )
        )
        return [_kv(kv) for kv in resp.kvs], int(resp.header.revision)

    async def put(self, key: str, value: bytes) -> int:
        resp = await self._call(lambda c: c.kv.put(key, value, timeout=self.timeout_s))  # type: ignore[union-attr]
        return int(resp.header.revision)

    async def put_all(
        self,
        puts: dict[str, bytes],
        absent: Sequence[str] = (),
        unchanged: dict[str, int] | None = None,
    ) -> int:
        """Write all keys in one transaction and return its revision.

        `absent` keys must not exist yet; `unchanged` maps keys to the mod_revision they must
        still have (0 = must not exist). Otherwise nothing is written: StoreConflict.
        """
        compare = [KVService.txn_compare_create_revision(k, 0) for k in absent]
        for key, rev in (unchanged or {}).items():
            if rev == 0:
                compare.append(KVService.txn_compare_create_revision(key, 0))
            else:
                compare.append(_compare_mod(key, rev))
        ops = [KVService.txn_op_put(k, v) for k, v in puts.items()]
        resp = await self._call(lambda c: c.kv.txn(compare, ops, timeout=self.timeout_s))  # type: ignore[union-attr]
        if not resp.succeeded:
            raise StoreConflict(
                "a concurrent writer changed the same keys first; re-read and try again",
                keys=list(absent) + list(unchanged or {}),
            )
        return int(resp.header.revision)

    async def revision(self) -> int:
        """The store's current revision (a cheap read)."""
        resp = await self._call(
            lambda c: c.kv.get("\0", timeout=self.timeout_s, count_only=True)  # type: ignore[union-attr]
        )
        return int(resp.header.revision)

    async def compact(self, revision: int) -> None:
        await self._call(lambda c: c.kv.compact(revision, physical=True, timeout=self.timeout_s))  # type: ignore[union-attr]

    async def watch_prefix(
        self, prefix: str, start_revision: int = 0
    ) -> AsyncIterator[list[WatchEvent]]:
        """Watch every key under `prefix` (needs read permission on the whole range)."""
        async for events in self._watch(prefix, prefix_range_end(prefix), start_revision):
            yield events

    async def watch_key(self, key: str, start_revision: int = 0) -> AsyncIterator[list[WatchEvent]]:
        """Watch one key (needs read permission on that key only)."""
        async for events in self._watch(key, None, start_revision):
            yield events

    async def _watch(
        self, key: str, range_end: bytes | None, start_revision: int
    ) -> AsyncIterator[list[WatchEvent]]:
        """Yield batches of events. The client reconnects on transient errors; this raises
        StoreUnavailable/StoreAuthError when it gives up (the caller retries)."""
        client = self._c
        try:
            await self._authenticate(client, force=False)
        except _STORE_ERRORS as exc:
            raise _map_error(exc, self.endpoints) from exc
        assert client.watch is not None
        stream = client.watch.watch(key, range_end=range_end, start_revision=start_revision)
        try:
            async for resp in stream:
                if resp.canceled:
                    raise StoreUnavailable(f"etcd cancelled the watch: {resp.cancel_reason}")
                events = [
                    WatchEvent(
                        key=ev.kv.key.decode("utf-8", "replace"),
                        value=bytes(ev.kv.value),
                        mod_revision=int(ev.kv.mod_revision),
                        deleted=ev.type == 1,
                    )
                    for ev in resp.events
                ]
                if events:
                    yield events
        except EtcdUnauthenticatedError as exc:
            self._token_at = 0.0  # next call authenticates again
            raise _map_error(exc, self.endpoints) from exc
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.UNAUTHENTICATED:
                self._token_at = 0.0
            raise _map_error(exc, self.endpoints) from exc
        except _STORE_ERRORS as exc:
            raise _map_error(exc, self.endpoints) from exc
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ auth admin

    async def auth_enabled(self) -> bool:
        resp = await self._call(lambda c: c.auth.auth_status(timeout=self.timeout_s))  # type: ignore[union-attr]
        return bool(resp.enabled)

    async def ensure_role(self, name: str, grants: Sequence[Grant]) -> None:
        """Create or replace a role so it has exactly `grants`."""

        async def op(c: Etcd3Client) -> None:
            assert c.auth is not None
            roles = {r for r in (await c.auth.role_list(timeout=self.timeout_s)).roles}
            if name in roles:
                await c.auth.role_delete(name, timeout=self.timeout_s)
            await c.auth.role_add(name, timeout=self.timeout_s)
            for g in grants:
                await c.auth.role_grant_permission(
                    name, g.key, prefix_range_end(g.key) if g.prefix else None,
                    perm_type=PERMS[g.perm], timeout=self.timeout_s,
                )  # fmt: skip

        await self._call(op)

    async def ensure_user(self, name: str, password: str, roles: Sequence[str]) -> None:
        """Create the user (or reset its password) and grant it exactly `roles`."""

        async def op(c: Etcd3Client) -> None:
            assert c.auth is not None
            users = set((await c.auth.user_list(timeout=self.timeout_s)).users)
            if name in users:
                await c.auth.user_change_password(name, password, timeout=self.timeout_s)
                current = set((await c.auth.user_get(name, timeout=self.timeout_s)).roles)
            else:
                await c.auth.user_add(name, password, timeout=self.timeout_s)
                current = set()
            for r in current - set(roles):
                await c.auth.user_revoke_role(name, r, timeout=self.timeout_s)
            for r in set(roles) - current:
                await c.auth.user_grant_role(name, r, timeout=self.timeout_s)

        await self._call(op)

    async def enable_auth(self) -> None:
        """Turn auth on (a `root` user with the `root` role must exist)."""
        await self._call(lambda c: c.auth.auth_enable(timeout=self.timeout_s))  # type: ignore[union-attr]


def _compare_mod(key: str, rev: int) -> Any:
    from etcd3aio._protobuf import Compare

    return Compare(result=Compare.EQUAL, target=Compare.MOD, key=key.encode(), mod_revision=rev)
