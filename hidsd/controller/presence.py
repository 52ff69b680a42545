"""Presence registry: who is online, who went silent, and what each agent last reported.

Pure state (no I/O). Two inputs decide online/offline:

* NATS's own connect/disconnect advisories (system account): an agent whose process dies or
  whose connection closes is offline within the server's notice, milliseconds on loopback.
  Advisories are matched on (server, client id), so a late disconnect of an old connection
  does not mark a reconnected agent offline.
* Heartbeat timeout, the backstop for what TCP does not show (a paused or partitioned agent):
  offline after `timeout_factor` x the agent's own heartbeat interval.

A `bye` heartbeat (clean shutdown) marks the agent offline at once.

With several controllers each heartbeat is decoded by one of them (a NATS queue group), which
forwards its raw bytes with the few fields presence needs (`HeartbeatMeta`) to the others:
they update liveness from the meta at once and decode the body only when a view asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hidsd.wire.heartbeat import Heartbeat, decode_heartbeat
from hidsd.wire.names import FLEET_TARGET, Scope
from hidsd.wire.replies import AgentReport, AgentRow, Liveness
from hidsd.wire.sync import HeartbeatMeta

#: HeartbeatMeta (defined with the sync batch that carries it) is presence's input too
__all__ = ["AGENT_CLIENT_PREFIX", "CLOCK_SKEW_WARN_S", "AgentRecord", "HeartbeatMeta", "Liveness",
           "Presence"]  # fmt: skip

AGENT_CLIENT_PREFIX = "hidsd:"
#: an agent whose clock is off by more than this (against the controller's) is named in views
CLOCK_SKEW_WARN_S = 2.0


@dataclass(slots=True)
class AgentRecord:
    host: str
    meta: HeartbeatMeta | None = None
    liveness: Liveness = Liveness.ONLINE
    reason: str = ""
    last_seen: float = 0.0
    changed_at: float = 0.0
    conn: tuple[str, int] | None = None
    raw: bytes | None = None  # a forwarded heartbeat not decoded yet
    decoded: Heartbeat | None = None
    #: the agent's clock minus the receiving controller's, at the newest heartbeat
    skew_s: float | None = None

    @property
    def heartbeat(self) -> Heartbeat | None:
        """The newest heartbeat, decoded on first use (forwarded ones arrive as bytes; their
        origin controller validated them)."""
        if self.decoded is None and self.raw is not None:
            try:
                self.decoded = decode_heartbeat(self.raw)
            except Exception:  # validated by its receiver; a bug here must not break views
                self.decoded = None
            self.raw = None
        return self.decoded

    def row(
        self, now: float, desired_rev: int | None = None, converged: bool | None = None
    ) -> AgentRow:
        """The agent as `agents list` shows it; `desired_rev` and `converged` come from etcd."""
        hb = self.heartbeat
        return AgentRow(
            host=self.host, liveness=self.liveness, reason=self.reason,
            last_seen=self.last_seen,
            last_seen_ago_s=round(now - self.last_seen, 3) if self.last_seen else None,
            since=self.changed_at, clock_skew_s=self.skew_s,
            report=AgentReport.of(hb) if hb is not None else None,
            desired_rev=desired_rev, converged=converged,
        )  # fmt: skip


@dataclass(slots=True)
class Presence:
    timeout_factor: float = 3.0
    min_timeout_s: float = 1.0
    agents: dict[str, AgentRecord] = field(default_factory=dict)
    transitions: int = 0

    def _set(self, rec: AgentRecord, liveness: Liveness, reason: str, now: float) -> None:
        if rec.liveness is not liveness:
            self.transitions += 1
            rec.changed_at = now
        rec.liveness = liveness
        rec.reason = reason

    def on_heartbeat(self, hb: Heartbeat, now: float) -> float:
        """A heartbeat received from the agent itself; returns its clock skew. Always the
        newest (NATS keeps one publisher's order): the agent's own clock, which may have been
        set back, never decides that."""
        skew = round(hb.sent_at - now, 3)
        self._update(HeartbeatMeta.of(hb), now, decoded=hb, skew=skew, direct=True)
        return skew

    def on_forwarded(
        self, meta: HeartbeatMeta, raw: bytes | None, now: float, skew: float | None = None
    ) -> None:
        """A heartbeat another controller received and validated; without `raw` (nothing an
        operator looks at changed) only liveness moves and the body we hold stays."""
        self._update(meta, now, raw=raw, keep_body=raw is None, skew=skew)

    def _update(
        self, meta: HeartbeatMeta, now: float, decoded: Heartbeat | None = None,
        raw: bytes | None = None, keep_body: bool = False, skew: float | None = None,
        direct: bool = False,
    ) -> None:  # fmt: skip
        rec = self.agents.get(meta.host)
        if rec is None:
            rec = self.agents[meta.host] = AgentRecord(meta.host, changed_at=now)
        elif (
            not direct
            and rec.meta is not None
            and (meta.sent_at, meta.seq) < (rec.meta.sent_at, rec.meta.seq)
        ):
            return  # an older one, forwarded late
        rec.meta = meta
        rec.skew_s = skew if skew is not None else round(meta.sent_at - now, 3)
        if not keep_body:
            rec.decoded, rec.raw = decoded, raw
        rec.last_seen = now
        if meta.bye:
            self._set(rec, Liveness.OFFLINE, "shut down", now)
        else:
            self._set(rec, Liveness.ONLINE, "heartbeat", now)

    @staticmethod
    def host_of(client_name: str) -> str | None:
        if client_name.startswith(AGENT_CLIENT_PREFIX):
            return client_name[len(AGENT_CLIENT_PREFIX) :] or None
        return None

    def on_connect(self, client_name: str, conn: tuple[str, int], now: float) -> None:
        host = self.host_of(client_name)
        if host is None:
            return
        rec = self.agents.get(host)
        if rec is None:
            rec = self.agents[host] = AgentRecord(host, changed_at=now)
        rec.conn = conn
        rec.last_seen = now
        self._set(rec, Liveness.ONLINE, "connected", now)

    def on_disconnect(
        self, client_name: str, conn: tuple[str, int], reason: str, now: float
    ) -> None:
        host = self.host_of(client_name)
        rec = self.agents.get(host) if host else None
        if rec is None:
            return
        if rec.conn is not None and rec.conn != conn:
            return  # an older connection closed; the agent is on a newer one
        rec.conn = None
        self._set(
            rec, Liveness.OFFLINE, f"disconnected: {reason}" if reason else "disconnected", now
        )

    def sweep(self, now: float) -> list[str]:
        """Mark agents whose heartbeats stopped as offline; returns who changed."""
        gone = []
        for rec in self.agents.values():
            if rec.liveness is Liveness.OFFLINE or rec.meta is None:
                continue
            limit = max(self.min_timeout_s, rec.meta.interval_s * self.timeout_factor)
            if now - rec.last_seen > limit:
                self._set(
                    rec, Liveness.OFFLINE, f"no heartbeat for {now - rec.last_seen:.1f}s", now
                )
                gone.append(rec.host)
        return gone

    def matching(self, scope: Scope, target: str) -> list[AgentRecord]:
        out = []
        for rec in self.agents.values():
            if (
                (scope is Scope.FLEET and target == FLEET_TARGET)
                or (scope is Scope.HOST and rec.host == target)
                or (scope is Scope.GROUP and rec.meta is not None and target in rec.meta.groups)
            ):
                out.append(rec)
        return out

    def expected(self, scope: Scope, target: str) -> dict[str, list[str]]:
        """Who should ack a command for (scope, target): online and offline hosts by name."""
        recs = self.matching(scope, target)
        return {
            "online": sorted(r.host for r in recs if r.liveness is Liveness.ONLINE),
            "offline": sorted(r.host for r in recs if r.liveness is Liveness.OFFLINE),
        }
