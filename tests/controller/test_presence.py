"""hidsd.controller.presence (online/offline from heartbeats and advisories) and the ack ledger."""

from __future__ import annotations

from typing import Any

import pytest

from hidsd.controller.acks import AckLedger
from hidsd.controller.presence import AGENT_CLIENT_PREFIX, Liveness, Presence
from hidsd.controller.views import host_desired_revision
from hidsd.wire.commands import Ack, AckStatus, RunMode
from hidsd.wire.heartbeat import Heartbeat
from hidsd.wire.names import FLEET_TARGET, KeyLayout, Scope

T0 = 1_000.0
S1, S2 = "NSERVER1", "NSERVER2"


def hb(host: str, groups: tuple[str, ...] = (), interval_s: float = 10.0, **kw: Any) -> Heartbeat:
    values: dict[str, Any] = {
        "host": host,
        "version": "0.1.0",
        "groups": groups,
        "mode": RunMode.RUNNING,
        "applied_rev": 0,
        "held": False,
        "interval_s": interval_s,
        "seq": 1,
        "sent_at": T0,
        "uptime_s": 1.0,
        "cpu_pct": 0.0,
        "rss_bytes": 1,
    }
    values.update(kw)
    return Heartbeat(**values)


def client(host: str) -> str:
    return f"{AGENT_CLIENT_PREFIX}{host}"


def liveness(p: Presence, host: str) -> Liveness:
    return p.agents[host].liveness


# --------------------------------------------------------------------------- heartbeats


def test_heartbeat_marks_online() -> None:
    p = Presence()
    p.on_heartbeat(hb("a"), T0)
    rec = p.agents["a"]
    assert rec.liveness is Liveness.ONLINE
    assert rec.reason == "heartbeat"
    assert rec.last_seen == T0
    assert rec.heartbeat is not None
    assert rec.heartbeat.host == "a"
    row = rec.row(T0 + 2)
    assert row.liveness is Liveness.ONLINE
    assert row.last_seen_ago_s == 2.0
    assert row.report is not None and row.report.mode is RunMode.RUNNING
    assert row.to_wire()["mode"] == "running" and row.converged is None


def test_bye_marks_offline_shut_down() -> None:
    p = Presence()
    p.on_heartbeat(hb("a"), T0)
    p.on_heartbeat(hb("a", bye=True), T0 + 1)
    rec = p.agents["a"]
    assert rec.liveness is Liveness.OFFLINE
    assert rec.reason == "shut down"
    assert rec.changed_at == T0 + 1
    assert p.transitions == 1


def test_heartbeat_after_offline_comes_back() -> None:
    p = Presence()
    p.on_heartbeat(hb("a", bye=True), T0)
    assert liveness(p, "a") is Liveness.OFFLINE
    p.on_heartbeat(hb("a"), T0 + 5)
    assert liveness(p, "a") is Liveness.ONLINE
    assert p.agents["a"].changed_at == T0 + 5


def test_repeated_heartbeats_are_not_transitions() -> None:
    p = Presence()
    for i in range(5):
        p.on_heartbeat(hb("a", seq=i), T0 + i)
    assert p.transitions == 0
    assert p.agents["a"].changed_at == T0
    assert p.agents["a"].last_seen == T0 + 4
    assert p.agents["a"].heartbeat is not None
    assert p.agents["a"].heartbeat.seq == 4


# --------------------------------------------------------------------------- advisories


def test_connect_then_disconnect() -> None:
    p = Presence()
    p.on_connect(client("a"), (S1, 7), T0)
    assert liveness(p, "a") is Liveness.ONLINE
    assert p.agents["a"].reason == "connected"
    assert p.agents["a"].conn == (S1, 7)
    p.on_disconnect(client("a"), (S1, 7), "Client Closed", T0 + 1)
    rec = p.agents["a"]
    assert rec.liveness is Liveness.OFFLINE
    assert rec.reason == "disconnected: Client Closed"
    assert rec.conn is None


def test_disconnect_without_reason() -> None:
    p = Presence()
    p.on_connect(client("a"), (S1, 7), T0)
    p.on_disconnect(client("a"), (S1, 7), "", T0 + 1)
    assert p.agents["a"].reason == "disconnected"


def test_late_disconnect_of_old_connection_keeps_agent_online() -> None:
    p = Presence()
    p.on_connect(client("a"), (S1, 7), T0)
    p.on_heartbeat(hb("a"), T0 + 0.5)
    # The agent fails over to another server before the first server reports the old close.
    p.on_connect(client("a"), (S2, 3), T0 + 1)
    p.on_disconnect(client("a"), (S1, 7), "Stale Connection", T0 + 2)
    assert liveness(p, "a") is Liveness.ONLINE
    assert p.agents["a"].conn == (S2, 3)
    # The same client id on another server is another connection.
    p.on_disconnect(client("a"), (S1, 3), "x", T0 + 3)
    assert liveness(p, "a") is Liveness.ONLINE
    # The current connection closing does mark it offline.
    p.on_disconnect(client("a"), (S2, 3), "Client Closed", T0 + 4)
    assert liveness(p, "a") is Liveness.OFFLINE


def test_disconnect_before_reconnect_then_online_again() -> None:
    p = Presence()
    p.on_connect(client("a"), (S1, 7), T0)
    p.on_disconnect(client("a"), (S1, 7), "Read Error", T0 + 1)
    p.on_connect(client("a"), (S1, 8), T0 + 2)
    assert liveness(p, "a") is Liveness.ONLINE
    assert p.transitions == 2


def test_disconnect_of_unknown_host_is_ignored() -> None:
    p = Presence()
    p.on_disconnect(client("ghost"), (S1, 1), "x", T0)
    assert p.agents == {}


@pytest.mark.parametrize(
    "name", ["hidsd-controller:ctl-1", "hidsctl", "", "hidsd:", "nats-bench", "HIDSD:a"]
)
def test_non_agent_clients_are_ignored(name: str) -> None:
    p = Presence()
    p.on_connect(name, (S1, 1), T0)
    p.on_disconnect(name, (S1, 1), "x", T0 + 1)
    assert p.agents == {}
    assert p.transitions == 0


def test_host_of() -> None:
    assert Presence.host_of("hidsd:web-1") == "web-1"
    assert Presence.host_of("hidsd:") is None
    assert Presence.host_of("hidsd-controller:x") is None


def test_non_agent_disconnect_does_not_touch_agent_with_same_suffix() -> None:
    p = Presence()
    p.on_connect(client("a"), (S1, 1), T0)
    p.on_disconnect("hidsd-controller:a", (S1, 1), "x", T0 + 1)
    assert liveness(p, "a") is Liveness.ONLINE


# --------------------------------------------------------------------------- sweep


def test_sweep_marks_offline_after_timeout_and_not_before() -> None:
    p = Presence(timeout_factor=3.0)
    p.on_heartbeat(hb("a", interval_s=10.0), T0)
    assert p.sweep(T0 + 29.9) == []
    assert p.sweep(T0 + 30.0) == []  # exactly at the limit: still online
    assert liveness(p, "a") is Liveness.ONLINE
    assert p.sweep(T0 + 30.1) == ["a"]
    rec = p.agents["a"]
    assert rec.liveness is Liveness.OFFLINE
    assert rec.reason.startswith("no heartbeat for 30.1")
    assert p.sweep(T0 + 100) == []  # already offline: not reported again


def test_sweep_uses_each_agents_own_interval() -> None:
    p = Presence(timeout_factor=2.0)
    p.on_heartbeat(hb("fast", interval_s=1.0), T0)
    p.on_heartbeat(hb("slow", interval_s=60.0), T0)
    assert p.sweep(T0 + 5) == ["fast"]
    assert liveness(p, "slow") is Liveness.ONLINE
    assert p.sweep(T0 + 121) == ["slow"]


def test_sweep_min_timeout() -> None:
    p = Presence(timeout_factor=3.0, min_timeout_s=5.0)
    p.on_heartbeat(hb("a", interval_s=0.1), T0)
    assert p.sweep(T0 + 4.9) == []
    assert p.sweep(T0 + 5.1) == ["a"]


def test_heartbeat_resets_the_sweep_clock() -> None:
    p = Presence(timeout_factor=3.0)
    p.on_heartbeat(hb("a", interval_s=1.0), T0)
    p.on_heartbeat(hb("a", interval_s=1.0), T0 + 2.5)
    assert p.sweep(T0 + 5) == []
    assert p.sweep(T0 + 5.6) == ["a"]


def test_sweep_skips_agents_without_heartbeat() -> None:
    p = Presence()
    p.on_connect(client("a"), (S1, 1), T0)
    assert p.sweep(T0 + 10_000) == []
    assert liveness(p, "a") is Liveness.ONLINE


# --------------------------------------------------------------------------- expected


@pytest.fixture
def fleet() -> Presence:
    p = Presence()
    p.on_heartbeat(hb("web-1", ("web", "eu")), T0)
    p.on_heartbeat(hb("web-2", ("web",)), T0)
    p.on_heartbeat(hb("db-1", ("db", "eu")), T0)
    p.on_heartbeat(hb("db-2", ("db",)), T0)
    p.on_heartbeat(hb("web-2", ("web",), bye=True), T0 + 1)
    p.on_connect(client("db-2"), (S1, 4), T0)
    p.on_disconnect(client("db-2"), (S1, 4), "x", T0 + 1)
    return p


def test_expected_fleet(fleet: Presence) -> None:
    assert fleet.expected(Scope.FLEET, FLEET_TARGET) == {
        "online": ["db-1", "web-1"],
        "offline": ["db-2", "web-2"],
    }


@pytest.mark.parametrize(
    ("group", "online", "offline"),
    [
        ("web", ["web-1"], ["web-2"]),
        ("db", ["db-1"], ["db-2"]),
        ("eu", ["db-1", "web-1"], []),
        ("none", [], []),
    ],
)
def test_expected_group(fleet: Presence, group: str, online: list[str], offline: list[str]) -> None:
    assert fleet.expected(Scope.GROUP, group) == {"online": online, "offline": offline}


@pytest.mark.parametrize(
    ("host", "online", "offline"),
    [("web-1", ["web-1"], []), ("web-2", [], ["web-2"]), ("nobody", [], [])],
)
def test_expected_host(fleet: Presence, host: str, online: list[str], offline: list[str]) -> None:
    assert fleet.expected(Scope.HOST, host) == {"online": online, "offline": offline}


def test_expected_group_needs_a_heartbeat() -> None:
    p = Presence()
    p.on_connect(client("a"), (S1, 1), T0)  # groups unknown until the first heartbeat
    assert p.expected(Scope.GROUP, "web") == {"online": [], "offline": []}
    assert p.expected(Scope.FLEET, FLEET_TARGET) == {"online": ["a"], "offline": []}


def test_expected_fleet_needs_star_target(fleet: Presence) -> None:
    assert fleet.expected(Scope.FLEET, "web") == {"online": [], "offline": []}


# --------------------------------------------------------------------------- ack ledger


def ack(cmd_id: str, host: str, status: AckStatus = AckStatus.APPLIED, rev: int = 1) -> Ack:
    return Ack(cmd_id=cmd_id, host=host, status=status, rev=rev)


def test_ledger_records_acks_per_command() -> None:
    ledger = AckLedger(size=4)
    ledger.record(ack("c1", "a"))
    ledger.record(ack("c1", "b", AckStatus.SUPERSEDED))
    ledger.record(ack("c2", "a"))
    c1 = ledger.get("c1")
    assert c1 is not None
    assert set(c1) == {"a", "b"}
    assert c1["b"].status is AckStatus.SUPERSEDED
    assert ledger.get("c3") is None
    assert ledger.evicted == 0


def test_ledger_latest_ack_per_host_wins() -> None:
    ledger = AckLedger()
    ledger.record(ack("c1", "a", AckStatus.SUPERSEDED, rev=1))
    ledger.record(ack("c1", "a", AckStatus.APPLIED, rev=2))
    c1 = ledger.get("c1")
    assert c1 is not None
    assert len(c1) == 1
    assert c1["a"].status is AckStatus.APPLIED


def test_ledger_evicts_oldest_command_and_counts() -> None:
    ledger = AckLedger(size=3)
    for i in range(5):
        ledger.record(ack(f"c{i}", "a"))
    assert ledger.evicted == 2
    assert ledger.get("c0") is None
    assert ledger.get("c1") is None
    assert list(ledger.commands) == ["c2", "c3", "c4"]
    # More acks for a command still held do not evict anything.
    ledger.record(ack("c2", "b"))
    assert ledger.evicted == 2
    c2 = ledger.get("c2")
    assert c2 is not None
    assert set(c2) == {"a", "b"}


# --------------------------------------------------------------------------- desired revision


def test_host_desired_revision() -> None:
    k = KeyLayout()
    revisions = {
        k.desired(Scope.FLEET, FLEET_TARGET): 10,
        k.desired(Scope.GROUP, "web"): 14,
        k.desired(Scope.GROUP, "db"): 20,
        k.desired(Scope.HOST, "web-1"): 12,
        k.desired(Scope.HOST, "web-2"): 30,
    }
    assert host_desired_revision(k, revisions, "web-1", ("web",)) == 14
    assert host_desired_revision(k, revisions, "web-1", ()) == 12
    assert host_desired_revision(k, revisions, "web-2", ("web",)) == 30
    assert host_desired_revision(k, revisions, "db-1", ("db", "web")) == 20
    assert host_desired_revision(k, revisions, "other", ()) == 10
    assert host_desired_revision(k, {}, "web-1", ("web",)) == 0


def test_host_desired_revision_respects_prefix() -> None:
    revisions = {"/hidsd/desired/fleet": 99, "/t1/desired/fleet": 5}
    assert host_desired_revision(KeyLayout("/t1/"), revisions, "h", ()) == 5
