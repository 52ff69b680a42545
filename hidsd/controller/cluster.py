"""Controllers dividing the work between them (R13).

Heartbeats and acks reach one controller each (a NATS queue group): that one decodes and
checks the message, applies it, and forwards a compact copy to its peers in a batch every
`flush_s`: the few fields presence needs, plus the heartbeat's raw bytes only when something
a view shows changed (or every `body_every_s`), and raw ack bytes. Every
controller so ends up with the whole picture (presence, ack ledger) while each message is
received and validated once: adding a controller adds capacity, and killing one loses only
the batch it had not flushed yet (at most `flush_s` of work; agents' next heartbeats repair
presence, and hidsctl counts acks itself).

The batches double as membership announcements: a controller is a member while its batches
(sent at least every `announce_s`, empty or not) keep coming. Members also take directed
requests (`<prefix>.ctlpeer.<id>.<verb>`), which is how a query is split: each member
evaluates the hosts it owns under rendezvous hashing over the member list the coordinator
sends; the coordinator merges, and re-runs the share of a member that does not answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from nats.aio.msg import Msg

from hidsd.base.errors import ProtocolError
from hidsd.bus.transport import Bus
from hidsd.wire.heartbeat import Heartbeat
from hidsd.wire.names import Subjects
from hidsd.wire.rpc import decode_reply, encode_request
from hidsd.wire.status import MemberRow
from hidsd.wire.sync import HeartbeatMeta, SyncBatch, SyncHeartbeat, decode_sync, encode_sync

#: a batch bigger than this is flushed at once (NATS max_payload is 1 MiB)
FLUSH_BYTES = 512 << 10

T = TypeVar("T")


def _as_sent(result: Any) -> Any:
    return result


@dataclass(slots=True)
class Member:
    id: str
    name: str
    last_seen: float
    started: float


def _significant(hb: Heartbeat) -> int:
    """What views show that changes rarely: forward the body when this changes."""
    plugins = tuple(sorted((n, p.state) for n, p in hb.plugins.items()))
    cfg = hb.config
    return hash((hb.mode, hb.applied_rev, hb.held, hb.groups, hb.version,
                 cfg.fingerprint, cfg.status, str(sorted(cfg.versions.items())),
                 hb.breaker.state if hb.breaker else None, plugins, hb.interval_s,
                 hb.storage.status if hb.storage else None, hb.storage.path if hb.storage else "",
                 hb.clock.refused_expired, hb.clock.refused_not_yet_valid))  # fmt: skip


def owner(host: str, members: Sequence[str]) -> str:
    """Rendezvous hashing: the member that owns `host`. Removing a member moves only its
    hosts; every controller computes the same answer from the same list."""

    def score(m: str) -> bytes:
        return hashlib.blake2b(f"{m}\0{host}".encode(), digest_size=8).digest()

    return max(members, key=score)


@dataclass
class Cluster:
    name: str
    subjects: Subjects
    bus: Bus
    on_heartbeat: Callable[[HeartbeatMeta, bytes | None, float | None], None]
    on_ack: Callable[[bytes], None]
    flush_s: float = 0.25
    announce_s: float = 1.0
    member_timeout_s: float = 3.5
    body_every_s: float = 60.0
    id: str = field(default_factory=lambda: secrets.token_hex(4))
    started: float = field(default_factory=time.time)
    members: dict[str, Member] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.log: Any = structlog.get_logger("hidsd.controller.cluster").bind(name=self.name)
        self._hb: list[SyncHeartbeat] = []
        self._sent: dict[str, tuple[int, float]] = {}  # host -> (significant hash, when)
        self._acks: list[bytes] = []
        self._bytes = 0
        self._flush_now = asyncio.Event()
        self.members[self.id] = Member(self.id, self.name, time.time(), self.started)

    def _count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    # ------------------------------------------------------------------ out

    def forward_heartbeat(self, hb: Heartbeat, raw: bytes, skew_s: float | None = None) -> None:
        """Liveness always; the body only when something an operator looks at changed (run
        mode, revision, config, breaker, plugin states), or every `body_every_s` anyway, so
        peers' detail views lag by at most that while forwarding stays small."""
        meta = HeartbeatMeta.of(hb)
        sig = _significant(hb)
        now = time.monotonic()
        last = self._sent.get(hb.host)
        if last is None or last[0] != sig or now >= last[1] or hb.bye:
            # next unconditional body: jittered, so hosts first seen together do not all
            # come due in the same batch
            self._sent[hb.host] = (sig, now + self.body_every_s * random.uniform(0.75, 1.25))
            self._hb.append(SyncHeartbeat(meta, raw, skew_s))
            self._grow(len(raw))
        else:
            self._hb.append(SyncHeartbeat(meta, None, skew_s))
            self._grow(48)

    def forward_ack(self, raw: bytes) -> None:
        self._acks.append(raw)
        self._grow(len(raw))

    def _grow(self, n: int) -> None:
        self._bytes += n + 64
        if self._bytes >= FLUSH_BYTES:
            self._flush_now.set()

    async def flush(self) -> None:
        """Send what accumulated, in batches under FLUSH_BYTES each (the handlers may add a
        lot between two flushes; one batch over NATS's max_payload would be lost whole)."""
        hb, acks = self._hb, self._acks
        self._hb, self._acks, self._bytes = [], [], 0
        batches: list[tuple[list[SyncHeartbeat], list[bytes]]] = [([], [])]
        size = 0
        items: list[SyncHeartbeat | bytes] = [*hb, *acks]
        for item in items:
            n = (len(item.raw or b"") if isinstance(item, SyncHeartbeat) else len(item)) + 64
            if size + n > FLUSH_BYTES and (batches[-1][0] or batches[-1][1]):
                batches.append(([], []))
                size = 0
            if isinstance(item, SyncHeartbeat):
                batches[-1][0].append(item)
            else:
                batches[-1][1].append(item)
            size += n
        for bhb, backs in batches:
            if not bhb and not backs and len(batches) > 1:
                continue
            body = encode_sync(SyncBatch(self.id, self.name, self.started, tuple(bhb),
                                         tuple(backs)))  # fmt: skip
            try:
                await self.bus.publish(self.subjects.ctl_sync(), body)
                self._count("sync_sent")
                self._count("forwarded", len(bhb) + len(backs))
            except Exception as exc:  # NATS away: peers miss this batch (agents re-send soon)
                self._count("sync_lost_items", len(bhb) + len(backs))
                self.log.warning("sync_not_sent", error=str(exc), items=len(bhb) + len(backs))

    async def run(self) -> None:
        last_announce = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), self.flush_s)
            self._flush_now.clear()
            now = time.monotonic()
            if self._hb or self._acks or now - last_announce >= self.announce_s:
                await self.flush()
                last_announce = now
            self.members[self.id].last_seen = time.time()

    # ------------------------------------------------------------------ in

    async def on_sync(self, msg: Msg) -> None:
        try:
            batch = decode_sync(msg.data)
        except ProtocolError as exc:
            self._count("bad_sync")
            self.log.warning("bad_sync", error=str(exc))
            return
        if batch.id == self.id:
            return
        now = time.time()
        if batch.id not in self.members:
            self.log.info("member_joined", peer=batch.name, id=batch.id)
        self.members[batch.id] = Member(batch.id, batch.name, now, batch.started)
        for error in batch.rejected:
            self._count("bad_sync")
            self.log.warning("bad_sync_item", error=error)
        for item in batch.heartbeats:
            self.on_heartbeat(item.meta, item.raw, item.skew_s)
        for raw in batch.acks:
            self.on_ack(raw)
        self._count("sync_received")

    def alive(self) -> list[str]:
        """Member ids, this one included, sorted (the list every member hashes over)."""
        now = time.time()
        for mid, mem in list(self.members.items()):
            if mid != self.id and now - mem.last_seen > self.member_timeout_s:
                del self.members[mid]
                self.log.warning("member_gone", peer=mem.name, id=mid)
        return sorted(self.members)

    def describe(self) -> list[MemberRow]:
        now = time.time()
        return [MemberRow(m.id, m.name, m.id == self.id, round(now - m.last_seen, 3),
                          round(now - m.started, 1))
                for m in sorted(self.members.values(), key=lambda m: m.name)]  # fmt: skip

    # ------------------------------------------------------------------ split work

    async def scatter(
        self,
        verb: str,
        params: dict[str, Any],
        local: Callable[[dict[str, Any]], Awaitable[T]],
        timeout_s: float = 2.0,
        decode: Callable[[Any], T] = _as_sent,
    ) -> tuple[dict[str, T], dict[str, str]]:
        """Ask every member (this one locally) to do its share of `verb`; a member that does
        not answer, or whose answer `decode` refuses, has its share redone here. Returns
        results per member id and how each share was done ("answered", "redone: <why>")."""
        members = self.alive()
        shares = {mid: {**params, "members": members, "shard": mid} for mid in members}
        how: dict[str, str] = {}

        async def ask(mid: str) -> T:
            if mid == self.id:
                how[mid] = "local"
                return await local(shares[mid])
            try:
                data = await self.bus.request(
                    self.subjects.ctl_peer(mid, verb), encode_request(shares[mid]), timeout_s
                )
                result = decode(decode_reply(data))  # raises with the peer's error message
                how[mid] = "answered"
                return result
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._count("shares_redone")
                how[mid] = f"redone here: {type(exc).__name__}: {exc}"[:200]
                self.log.warning("peer_share_redone", peer=mid, verb=verb, error=str(exc))
                return await local(shares[mid])

        results = await asyncio.gather(*(ask(mid) for mid in members))
        return dict(zip(members, results, strict=True)), how
