"""Every request/reply verb by name with its reply type: hidsctl asks by these, the
controllers' endpoint tables answer by them (a handler must return the verb's reply type).

Pure: constants only."""

from __future__ import annotations

from hidsd.wire.fleetquery import QueryResult, QueryShare
from hidsd.wire.replies import (
    Acks,
    AgentDetail,
    AgentsList,
    ConfigStatus,
    Expected,
    FleetStatus,
)
from hidsd.wire.rpc import Verb
from hidsd.wire.status import (
    Controllers,
    EndpointsReply,
    InventoryStats,
    Ping,
    StatsShare,
    TelemetryStats,
)

# hidsctl's verbs: `<prefix>.ctl.<name>`, any controller answers
AGENTS_LIST = Verb("agents.list", AgentsList.from_wire)
AGENTS_SHOW = Verb("agents.show", AgentDetail.from_wire)
FLEET_STATUS = Verb("fleet.status", FleetStatus.from_wire)
EXPECTED = Verb("expected", Expected.from_wire)
ACKS = Verb("acks", Acks.from_wire)
PING = Verb("ping", Ping.from_wire)
CONFIG_STATUS = Verb("config.status", ConfigStatus.from_wire)
TELEMETRY_STATS = Verb("telemetry.stats", TelemetryStats.from_wire)
QUERY = Verb("query", QueryResult.from_wire)
CONTROLLERS = Verb("controllers", Controllers.from_wire)
INVENTORY_STATS = Verb("inventory.stats", InventoryStats.from_wire)
ENDPOINTS = Verb("endpoints", EndpointsReply.from_wire)

# between controllers: `<prefix>.ctlpeer.<id>.<name>`, one member's share of split work
PEER_QUERY = Verb("query", QueryShare.from_wire)
PEER_STATS = Verb("stats", StatsShare.from_wire)
