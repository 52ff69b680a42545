"""The etcd store adapter: the only module that imports the etcd client.

Everything above it sees `KV` records, revisions and our own errors (`StoreUnavailable`,
`StoreAuthError`, `StorePermissionDenied`, `StoreConflict`), never gRPC or etcd3aio types.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
import grpc.aio
from etcd3aio import (
    Etcd3Client,
    EtcdConnectionError,
    EtcdError,
    EtcdPermissionDeniedError,
    EtcdTransientError,
    EtcdUnauthenticatedError,
    prefix_range_end,
)
from etcd3aio.kv import KVService

from hidsd.core.errors import (
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


class Store:
    """Async etcd access with bounded timeouts and our error types."""

    def __init__(
        self,
        endpoints: Sequence[str],
        user: str | None = None,
        password: str | None = None,
        timeout_s: float = 3.0,
    ) -> None:
        self.endpoints = tuple(endpoints)
        self.timeout_s = timeout_s
        self._user = user
        self._password = password
        self._client: Etcd3Client | None = None
        self._refresher: Any = None

    async def open(self) -> None:
        """Create the channel and authenticate. The channel connects lazily, so this does not
        fail when etcd is down; the first call does."""
        client = Etcd3Client(
            list(self.endpoints),
            rpc_max_attempts=2,
            watch_reconnect_backoff_seconds=0.2,
            watch_max_reconnect_backoff_seconds=2.0,
        )
        await client.connect()
        self._client = client
        if self._user is not None:
            refresher = client.token_refresher(self._user, self._password or "", interval=120.0)
            try:
                async with asyncio.timeout(self.timeout_s):
                    await refresher.__aenter__()
            except _STORE_ERRORS as exc:
                await client.close()
                self._client = None
                raise _map_error(exc, self.endpoints) from exc
            self._refresher = refresher

    async def close(self) -> None:
        if self._refresher is not None:
            await self._refresher.__aexit__(None, None, None)
            self._refresher = None
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

    async def get(self, key: str) -> KV | None:
        try:
            resp = await self._c.kv.get(key, timeout=self.timeout_s)  # type: ignore[union-attr]
        except _STORE_ERRORS as exc:
            raise _map_error(exc, self.endpoints) from exc
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def get_many(self, keys: Sequence[str]) -> tuple[list[KV], int]:
        """Read several keys in one transaction: one consistent revision for all of them."""
        ops = [KVService.txn_op_get(k) for k in keys]
        try:
            resp = await self._c.kv.txn([], ops, timeout=self.timeout_s)  # type: ignore[union-attr]
        except _STORE_ERRORS as exc:
            raise _map_error(exc, self.endpoints) from exc
        out = [_kv(kv) for r in resp.responses for kv in r.response_range.kvs]
        return out, int(resp.header.revision)

    async def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        try:
            resp = await self._c.kv.get(  # type: ignore[union-attr]
                prefix, range_end=prefix_range_end(prefix), timeout=self.timeout_s
            )
        except _STORE_ERRORS as exc:
            raise _map_error(exc, self.endpoints) from exc
        return [_kv(kv) for kv in resp.kvs], int(resp.header.revision)

    async def put_all(self, puts: dict[str, bytes], absent: Sequence[str] = ()) -> int:
        """Write all keys in one transaction and return its revision.

        `absent` keys must not exist yet (create-only), else StoreConflict.
        """
        compare = [KVService.txn_compare_create_revision(k, 0) for k in absent]
        ops = [KVService.txn_op_put(k, v) for k, v in puts.items()]
        try:
            resp = await self._c.kv.txn(compare, ops, timeout=self.timeout_s)  # type: ignore[union-attr]
        except _STORE_ERRORS as exc:
            raise _map_error(exc, self.endpoints) from exc
        if not resp.succeeded:
            raise StoreConflict("a key that must be new already exists", keys=list(absent))
        return int(resp.header.revision)

    async def revision(self) -> int:
        """The store's current revision (a cheap read)."""
        try:
            resp = await self._c.kv.get("\0", timeout=self.timeout_s, count_only=True)  # type: ignore[union-attr]
        except _STORE_ERRORS as exc:
            raise _map_error(exc, self.endpoints) from exc
        return int(resp.header.revision)

    async def watch_prefix(
        self, prefix: str, start_revision: int = 0
    ) -> AsyncIterator[list[WatchEvent]]:
        """Yield batches of events under `prefix`. Reconnects on transient errors inside the
        client; raises StoreUnavailable/StoreAuthError when it gives up."""
        if self._client is None or self._client.watch is None:
            raise StoreUnavailable("store is not open")
        stream = self._client.watch.watch(
            prefix, range_end=prefix_range_end(prefix), start_revision=start_revision
        )
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
        except _STORE_ERRORS as exc:
            raise _map_error(exc, self.endpoints) from exc
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]
