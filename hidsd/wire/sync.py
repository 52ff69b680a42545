"""The controllers' sync batch: what one controller forwards to its peers on `ctl_sync`.

Each heartbeat and ack reaches one controller (a queue group), which validates it and
forwards a compact copy: per heartbeat the few fields presence needs (`HeartbeatMeta`), the
heartbeat's bytes only when a view would show a change, and the receiver's measure of the
agent's clock; acks as their raw bytes. On the wire the batch is the msgpack map ``{id, name,
started, hb, acks}`` with each ``hb`` item the array ``[host, groups, interval_s, sent_at,
seq, bye, raw, skew_s]`` (seven elements from members that predate `skew_s`).

Pure: no I/O, no state. A malformed batch raises `ProtocolError`; a malformed item inside a
valid batch is left out and named in `SyncBatch.rejected`, so the caller counts it and
applies the rest, as a peer's bug in one item must not cost the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hidsd.base.errors import ProtocolError
from hidsd.wire.codec import get_field, pack, unpack
from hidsd.wire.heartbeat import Heartbeat

_WHAT = "sync batch"
_META_LEN = 6


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


@dataclass(frozen=True, slots=True)
class HeartbeatMeta:
    """What presence needs from a heartbeat, forwarded between controllers with its bytes."""

    host: str
    groups: tuple[str, ...]
    interval_s: float
    sent_at: float
    seq: int
    bye: bool

    @classmethod
    def of(cls, hb: Heartbeat) -> HeartbeatMeta:
        return cls(hb.host, hb.groups, hb.interval_s, hb.sent_at, hb.seq, hb.bye)

    def to_list(self) -> list[Any]:
        return [self.host, list(self.groups), self.interval_s, self.sent_at, self.seq, self.bye]

    @classmethod
    def from_list(cls, v: Any) -> HeartbeatMeta:
        """ProtocolError unless `v` is [host, groups, interval_s, sent_at, seq, bye]."""
        if not isinstance(v, list) or len(v) != _META_LEN:
            raise ProtocolError("heartbeat meta: expected 6 fields")
        host, groups, interval_s, sent_at, seq, bye = v
        if not isinstance(host, str) or not host:
            raise ProtocolError("heartbeat meta: host must be a non-empty string")
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise ProtocolError("heartbeat meta: groups must be a list of strings", host=host)
        if not (_number(interval_s) and _number(sent_at)):
            raise ProtocolError("heartbeat meta: interval_s and sent_at must be numbers", host=host)
        if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(bye, bool):
            raise ProtocolError("heartbeat meta: seq must be an integer, bye a boolean", host=host)
        return cls(host, tuple(groups), float(interval_s), float(sent_at), seq, bye)


@dataclass(frozen=True, slots=True)
class SyncHeartbeat:
    """One forwarded heartbeat: `raw` is None when nothing a view shows changed (peers then
    move liveness only); `skew_s` is the agent's clock minus its receiver's."""

    meta: HeartbeatMeta
    raw: bytes | None = None
    skew_s: float | None = None

    def to_list(self) -> list[Any]:
        return [*self.meta.to_list(), self.raw, self.skew_s]


def _heartbeat(item: Any) -> SyncHeartbeat:
    if not isinstance(item, list) or len(item) < _META_LEN + 1:
        raise ProtocolError(f"{_WHAT}: a heartbeat item needs at least 7 fields")
    meta = HeartbeatMeta.from_list(item[:_META_LEN])
    raw = item[_META_LEN]
    if raw is not None and not isinstance(raw, bytes):
        raise ProtocolError(f"{_WHAT}: heartbeat bytes of {meta.host} are not bytes")
    skew = item[_META_LEN + 1] if len(item) > _META_LEN + 1 else None
    if skew is not None and not _number(skew):
        raise ProtocolError(f"{_WHAT}: clock skew of {meta.host} is not a number")
    return SyncHeartbeat(meta, raw, None if skew is None else float(skew))


@dataclass(frozen=True, slots=True)
class SyncBatch:
    """One batch from the controller `id` (also its membership announcement)."""

    id: str
    name: str
    started: float
    heartbeats: tuple[SyncHeartbeat, ...] = ()
    acks: tuple[bytes, ...] = ()
    #: decoding only: why items of this batch were left out (the caller counts them)
    rejected: tuple[str, ...] = ()


def encode_sync(batch: SyncBatch) -> bytes:
    return pack({"id": batch.id, "name": batch.name, "started": batch.started,
                 "hb": [h.to_list() for h in batch.heartbeats],
                 "acks": list(batch.acks)})  # fmt: skip


def decode_sync(data: bytes) -> SyncBatch:
    """A peer's batch; ProtocolError if the batch itself is malformed."""
    m = unpack(data, _WHAT)
    if not isinstance(m, dict):
        raise ProtocolError(f"{_WHAT}: expected a map")
    peer = get_field(m, "id", str, _WHAT)
    name = get_field(m, "name", str, _WHAT)
    started = float(get_field(m, "started", (int, float), _WHAT))
    heartbeats: list[SyncHeartbeat] = []
    acks: list[bytes] = []
    rejected: list[str] = []
    for item in get_field(m, "hb", list, _WHAT):
        try:
            heartbeats.append(_heartbeat(item))
        except ProtocolError as exc:
            rejected.append(exc.message)
    for raw in get_field(m, "acks", list, _WHAT):
        if isinstance(raw, bytes):
            acks.append(raw)
        else:
            rejected.append(f"{_WHAT}: an ack is not bytes")
    return SyncBatch(peer, name, started, tuple(heartbeats), tuple(acks), tuple(rejected))
