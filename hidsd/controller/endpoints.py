"""The controller's request/reply verbs as an endpoint table (the shape of nats.py's `micro`
services): one endpoint per verb, each with its own counters, one place that always replies.

A controller always answers: an error the operator can read beats a timeout they cannot. An
operator error (`HidsError`: a bad request, an unknown host) is a reply with its message; a bug
is an internal-error reply, logged with its traceback and counted; an answer larger than NATS's
max_payload is replaced by an error that says so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nats.aio.msg import Msg

from hidsd.base.errors import HidsError, ProtocolError
from hidsd.wire.rpc import Reply, Verb, decode_request, encode_reply
from hidsd.wire.status import EndpointCounters, EndpointTable

#: a request's parameters (a map; each handler parses its own in one place)
Params = Mapping[str, object]
R = TypeVar("R", bound=Reply)
Handler = Callable[[Params], Awaitable[Reply]]
Publish = Callable[[str, bytes], Awaitable[None]]


@dataclass(slots=True)
class EndpointStats:
    requests: int = 0
    #: answered with an operator-facing error (bad request, not found, ...)
    errors: int = 0
    #: a bug: answered with "internal error", logged with its traceback
    internal_errors: int = 0
    too_large: int = 0
    processing_ms: float = 0.0
    last_error: str = ""

    def snapshot(self) -> EndpointCounters:
        avg = self.processing_ms / self.requests if self.requests else 0.0
        return EndpointCounters(self.requests, self.errors, self.internal_errors,
                                self.too_large, round(avg, 3), self.last_error)  # fmt: skip


@dataclass(slots=True)
class Endpoint:
    name: str
    handler: Handler
    stats: EndpointStats = field(default_factory=EndpointStats)


class Endpoints:
    """Verbs by name; `serve` decodes, dispatches, counts and always replies."""

    def __init__(
        self, kind: str, publish: Publish, max_payload: Callable[[], int | None], log: Any
    ) -> None:
        self.kind = kind
        self.publish = publish
        self.max_payload = max_payload
        self.log = log
        self.table: dict[str, Endpoint] = {}
        self.unknown = 0

    def add(self, verb: Verb[R], handler: Callable[[Params], Awaitable[R]]) -> None:
        """A verb and its handler, which must return the verb's reply type."""
        if verb.name in self.table:
            raise ValueError(f"{self.kind} endpoint {verb.name!r} added twice")
        self.table[verb.name] = Endpoint(verb.name, handler)

    async def serve(self, msg: Msg, verb: str) -> None:
        ep = self.table.get(verb)
        t0 = time.perf_counter()
        try:
            if ep is None:
                self.unknown += 1
                raise ProtocolError(f"unknown {self.kind} request {verb!r}")
            ep.stats.requests += 1
            reply = encode_reply((await ep.handler(decode_request(msg.data))).to_wire())
        except HidsError as exc:
            if ep is not None:
                ep.stats.errors += 1
                ep.stats.last_error = exc.message
            reply = encode_reply(error=exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: say so, and keep serving
            assert ep is not None
            ep.stats.internal_errors += 1
            ep.stats.last_error = f"{type(exc).__name__}: {exc}"
            self.log.exception("request_failed", verb=verb, kind=self.kind)
            reply = encode_reply(error=f"internal error in {verb}: {type(exc).__name__}: {exc}")
        if ep is not None:
            ep.stats.processing_ms += (time.perf_counter() - t0) * 1000
        limit = self.max_payload()
        if limit is not None and len(reply) > limit:
            if ep is not None:
                ep.stats.too_large += 1
            reply = encode_reply(error=f"{verb}: the answer is {len(reply)} bytes, over NATS's "
                                       f"max_payload ({limit}); narrow the request")  # fmt: skip
        if msg.reply:
            await self.publish(msg.reply, reply)

    def stats(self) -> EndpointTable:
        return EndpointTable(
            {name: ep.stats.snapshot() for name, ep in sorted(self.table.items())}, self.unknown
        )
