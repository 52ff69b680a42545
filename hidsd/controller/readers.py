"""hidsctl's reads about agents: presence and the ack ledger joined with what etcd says they
should run (`agents.list`, `agents.show`, `fleet.status`, `config.status`, `expected`, `acks`).

etcd unreachable degrades an answer (convergence unknown, `store_ok` false), never fails it."""

from __future__ import annotations

import time
from collections.abc import Mapping

from hidsd.base.errors import HidsError, ProtocolError
from hidsd.bus.store import Store
from hidsd.controller.acks import AckLedger
from hidsd.controller.endpoints import Params
from hidsd.controller.presence import Presence
from hidsd.controller.views import fleet_summary, host_desired_revision
from hidsd.wire.configstore import decode_config_pointer
from hidsd.wire.names import KeyLayout
from hidsd.wire.replies import (
    Acks,
    AckSummary,
    AgentDetail,
    AgentRow,
    AgentsList,
    ConfigAgentRow,
    ConfigStatus,
    Expected,
    FleetStatus,
)
from hidsd.wire.rpc import AcksRequest, Event, ExpectedRequest, HostRequest


class AgentReaders:
    """The read verbs about agents; `events` is the ingest's event log (host -> events)."""

    def __init__(
        self, keys: KeyLayout, store: Store, presence: Presence, ledger: AckLedger,
        events: Mapping[str, list[Event]],
    ) -> None:  # fmt: skip
        self.keys = keys
        self.store = store
        self.presence = presence
        self.ledger = ledger
        self.events = events

    async def _desired_revisions(self) -> dict[str, int] | None:
        try:
            kvs, _ = await self.store.get_prefix(self.keys.desired_prefix)
        except HidsError:
            return None
        return {kv.key: kv.mod_revision for kv in kvs}

    def _rows(self, revisions: dict[str, int] | None, now: float) -> list[AgentRow]:
        out = []
        for rec in sorted(self.presence.agents.values(), key=lambda r: r.host):
            hb = rec.heartbeat
            if revisions is not None and hb is not None:
                want = host_desired_revision(self.keys, revisions, rec.host, hb.groups)
                out.append(rec.row(now, want, hb.applied_rev >= want))
            else:
                out.append(rec.row(now))
        return out

    async def agents_list(self, params: Params) -> AgentsList:
        revisions = await self._desired_revisions()
        return AgentsList(tuple(self._rows(revisions, time.time())), revisions is not None)

    async def agents_show(self, params: Params) -> AgentDetail:
        host = HostRequest.from_params(params).host
        if host not in self.presence.agents:
            raise ProtocolError(f"unknown agent {host!r}")
        revisions = await self._desired_revisions()
        row = next(a for a in self._rows(revisions, time.time()) if a.host == host)
        return AgentDetail(row, tuple(self.events.get(host, ())))

    async def fleet_status(self, params: Params) -> FleetStatus:
        revisions = await self._desired_revisions()
        return fleet_summary(self._rows(revisions, time.time()), revisions)

    async def expected(self, params: Params) -> Expected:
        req = ExpectedRequest.from_params(params)
        hosts = self.presence.expected(req.scope, req.target)
        return Expected(tuple(hosts["online"]), tuple(hosts["offline"]))

    async def acks(self, params: Params) -> Acks:
        acks = self.ledger.get(AcksRequest.from_params(params).cmd_id)
        if acks is None:
            raise ProtocolError("no acks recorded for that command (unknown or evicted)")
        return Acks({h: AckSummary(a.status, a.rev, a.detail) for h, a in acks.items()})

    async def _config_pointers(self) -> dict[str, int] | None:
        """Current version per scope label, from the `current` pointers in etcd."""
        try:
            kvs, _ = await self.store.get_prefix(self.keys.config_prefix, keys_only=True)
            pointer_keys = [kv.key for kv in kvs if kv.key.endswith("/current")]
            pointers, _ = await self.store.get_many(pointer_keys) if pointer_keys else ([], 0)
        except HidsError:
            return None
        out: dict[str, int] = {}
        base = self.keys.config_prefix
        for kv in pointers:
            rest = kv.key[len(base) : -len("/current")]
            label = "fleet" if rest == "fleet" else rest.replace("/", ":", 1)
            try:
                out[label] = decode_config_pointer(kv.value)[0]
            except ProtocolError:
                out[label] = -1  # corrupt pointer: no agent can converge to it
        return out

    async def config_status(self, params: Params) -> ConfigStatus:
        """Which agents run which versions, which rejected one and why, who lags."""
        pointers = await self._config_pointers()
        rows = []
        for rec in sorted(self.presence.agents.values(), key=lambda r: r.host):
            hb = rec.heartbeat
            if hb is None:
                continue
            cfg = hb.config
            running = dict(cfg.versions)
            want: dict[str, int] | None = None
            if pointers is not None:
                labels = ["fleet", *(f"group:{g}" for g in hb.groups), f"host:{rec.host}"]
                want = {lbl: pointers[lbl] for lbl in labels if lbl in pointers}
            rows.append(ConfigAgentRow(
                host=rec.host, liveness=rec.liveness, running=running, desired=want,
                converged=None if want is None else running == want, status=cfg.status,
                rejected=cfg.rejected, fingerprint=cfg.fingerprint or None,
            ))  # fmt: skip
        return ConfigStatus(pointers is not None, pointers or {}, tuple(rows))
