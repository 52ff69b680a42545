"""hidsd.wire.replies: every agent-facing reply survives the wire unchanged, and a malformed one
is refused with the field named."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from hidsd.base.errors import ProtocolError
from hidsd.base.storage import StorageReport, StorageStatus
from hidsd.wire.commands import AckStatus, RunMode
from hidsd.wire.heartbeat import (
    AccountingReport,
    BreakerReport,
    ClockReport,
    ConfigRejection,
    ConfigReport,
    DenylistEntry,
    Heartbeat,
    HostFacts,
    PluginReport,
)
from hidsd.wire.replies import (
    Acks,
    AckSummary,
    AgentDetail,
    AgentReport,
    AgentRow,
    AgentsList,
    BreakerSummary,
    ConfigAgentRow,
    ConfigStatus,
    Expected,
    FleetStatus,
    Liveness,
    StorageSummary,
)
from hidsd.wire.rpc import Event, decode_reply, encode_reply

BEAT = Heartbeat(
    host="web-1", version="0.1.0", groups=("web", "eu"), mode=RunMode.RUNNING, applied_rev=7,
    held=False, interval_s=10.0, seq=42, sent_at=1000.0, uptime_s=3600.5, cpu_pct=1.25,
    rss_bytes=50_000_000, facts=HostFacts(hostname="web-1", os="debian", cpus=2, ips=("10.0.0.1",)),
    rejections={"bad_signature": 1},
    config=ConfigReport({"fleet": 3}, "f00d", "rejected", "bad",
                        ConfigRejection("host:web-1", 4, "unknown key")),
    plugins={"procmon": PluginReport("running", 321, 2.5, 10_000, 7, "", 5, 1.0,
                                     {"records": 9, "starts": 2}, {"dropped_queue": 1})},
    breaker=BreakerReport("tripped", 12.5, "memory", 2, "rss", ("procmon",), False,
                          {"fim": DenylistEntry(2000.0, 600, "crash loop")}, 3, 4, True,
                          AccountingReport("cgroup-v1", "hierarchy"), "limits not set"),
    storage=StorageReport(StorageStatus.FULL, "/var/lib/hidsd", "ENOSPC", 0,
                          {"statefile": "full"}, 5, 1, 20, 1024),
    clock=ClockReport(0.25, 1, 0, "expired"),
)  # fmt: skip


REPORT = AgentReport.of(BEAT)


def row(report: AgentReport | None = REPORT, **kw: Any) -> AgentRow:
    values: dict[str, Any] = {
        "host": "web-1", "liveness": Liveness.ONLINE, "reason": "heartbeat", "last_seen": 1000.5,
        "last_seen_ago_s": 1.5, "since": 990.0, "clock_skew_s": -0.5, "report": report,
        "desired_rev": 7, "converged": True, **kw,
    }  # fmt: skip
    return AgentRow(**values)


FLEET = FleetStatus(
    agents=3, online=2, offline=1, offline_hosts=("db-1",), by_mode={"running": 2},
    by_breaker={"normal": 1, "tripped": 1},
    breaker_not_normal={"web-1": BreakerSummary("tripped", "memory", ("fim",))},
    by_storage={"ok": 1, "full": 1},
    storage_not_ok={"web-1": StorageSummary(StorageStatus.FULL, "/var/lib/hidsd", "ENOSPC")},
    clock_skewed={"web-2": 600}, held=(), not_converged=("web-2",), store_ok=True,
    desired={"/hidsd/desired/fleet": 5},
)  # fmt: skip

REPLIES: list[Any] = [
    AgentsList((row(), row(None, host="new-1", desired_rev=None, converged=None)), True),
    AgentsList((), False),
    AgentDetail(row(), (Event("web-1", "breaker", 1000, {"old": "normal", "n": [1, 2]}),)),
    AgentDetail(row(None, liveness=Liveness.OFFLINE, last_seen_ago_s=None), ()),
    FLEET,
    ConfigStatus(True, {"fleet": 3, "host:web-1": 4}, (
        ConfigAgentRow("web-1", Liveness.ONLINE, {"fleet": 3}, {"fleet": 3, "host:web-1": 4},
                       False, "rejected", ConfigRejection("host:web-1", 4, "bad"), "f00d"),
        ConfigAgentRow("web-2", Liveness.OFFLINE, {}, None, None, "bootstrap", None, None),
    )),
    Expected(("a", "b"), ("c",)),
    Acks({"a": AckSummary(AckStatus.APPLIED, 5, ""), "b": AckSummary(AckStatus.REJECTED, 0, "x")}),
    Acks({}),
]  # fmt: skip


def over_the_wire(obj: Any) -> Any:
    return decode_reply(encode_reply(obj))


@pytest.mark.parametrize("reply", REPLIES, ids=lambda r: type(r).__name__)
def test_reply_round_trips(reply: Any) -> None:
    wire = over_the_wire(reply.to_wire())
    back = type(reply).from_wire(wire)
    assert back == reply
    assert back.to_wire() == wire  # decoded and encoded again: the same map, the same JSON


def test_a_row_without_heartbeat_has_only_presence_keys() -> None:
    wire = row(None, desired_rev=None, converged=None).to_wire()
    assert set(wire) == {"host", "liveness", "reason", "last_seen", "last_seen_ago_s", "since",
                         "clock_skew_s", "desired_rev", "converged"}  # fmt: skip
    full = row().to_wire()
    assert full["mode"] == "running" and full["breaker"]["state"] == "tripped"
    assert full["plugins"]["procmon"]["tel.dropped_queue"] == 1


def test_an_agent_without_breaker_or_storage_report() -> None:
    from dataclasses import replace

    bare = AgentReport.of(replace(BEAT, breaker=None, storage=None))
    wire = over_the_wire(row(bare).to_wire())
    assert wire["breaker"] == {} and wire["storage"] is None
    assert AgentRow.from_wire(wire, "r").report == bare


def agents_list_wire() -> dict[str, Any]:
    w: dict[str, Any] = over_the_wire(REPLIES[0].to_wire())
    return w


def broken(path: tuple[Any, ...], value: Any = KeyError) -> dict[str, Any]:
    """The agents.list reply with one field removed (KeyError) or replaced."""
    w = copy.deepcopy(agents_list_wire())
    node = w
    for p in path[:-1]:
        node = node[p]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return w


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("store_ok",), KeyError, "agents.list reply: missing field 'store_ok'"),
        (("agents",), {"a": 1}, r"agents\.list reply\.agents: expected a list, got dict"),
        (("agents", 0, "host"), 5, r"agents\[0\]\.host: expected text, got int"),
        (("agents", 0, "liveness"), "asleep", "'asleep' is not one of online, offline"),
        (("agents", 0, "mode"), "paused", "'paused' is not one of running"),
        (("agents", 0, "applied_rev"), "7", r"applied_rev: expected a whole number, got str"),
        (("agents", 0, "groups"), [1], r"groups\[0\]: expected text"),
        (
            ("agents", 0, "facts"),
            {"cpus": "2"},
            r"agents\[0\]\.facts\.cpus: expected a whole number",
        ),
        (
            ("agents", 0, "plugins", "procmon", "state"),
            1,
            r"agents\[0\]\.plugins\.procmon\.state: expected text",
        ),
        (
            ("agents", 0, "breaker", "since_s"),
            "x",
            r"agents\[0\]\.breaker\.since_s: expected a number",
        ),
        (
            ("agents", 0, "storage", "status"),
            "melted",
            r"agents\[0\]\.storage\.status: 'melted' is not one of",
        ),
        (("agents", 0, "clock"), KeyError, r"agents\[0\]: missing field 'clock'"),
        (("agents", 1, "converged"), "yes", r"agents\[1\]\.converged: expected true or false"),
        (("agents", 1, "last_seen"), None, r"agents\[1\]\.last_seen: expected a number"),
    ],
)
def test_malformed_agents_list_is_refused(path: tuple[Any, ...], value: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        AgentsList.from_wire(broken(path, value))


@pytest.mark.parametrize(
    ("reply", "wire", "message"),
    [
        (AgentsList, None, "agents.list reply: expected a map keyed by text, got NoneType"),
        (AgentsList, [1], "expected a map"),
        (AgentDetail, {**REPLIES[2].to_wire(), "events": [{"host": "h", "kind": "k"}]},
         r"events\[0\]: missing field 'at'"),
        (FleetStatus, {**FLEET.to_wire(), "clock_skewed": {"a": "far"}},
         r"clock_skewed\.a: expected a number"),
        (FleetStatus, {**FLEET.to_wire(), "storage_not_ok": {"h": {"status": "ok"}}},
         r"storage_not_ok\.h: missing field 'path'"),
        (ConfigStatus, {"store_ok": True, "current": {"fleet": "3"}, "agents": []},
         r"current\.fleet: expected a whole number"),
        (Expected, {"online": ["a"]}, "expected reply: missing field 'offline'"),
        (Acks, {"a": {"status": "maybe", "rev": 1, "detail": ""}}, r"acks reply\.a\.status"),
        (Acks, {"a": {"status": "applied", "rev": None, "detail": ""}}, r"a\.rev: expected a"),
    ],
)  # fmt: skip
def test_malformed_reply_is_refused(reply: Any, wire: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        reply.from_wire(wire)
