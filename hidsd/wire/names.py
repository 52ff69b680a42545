"""Names on the bus and in the store: subjects under a prefix, etcd keys, scopes.

Pure: no I/O, no state; every decoder takes untrusted bytes and returns a validated value
or raises `ProtocolError`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from hidsd.base.errors import ProtocolError

PROTOCOL_VERSION = 1


DEFAULT_SUBJECT_PREFIX = "hidsd"


DEFAULT_KEY_PREFIX = "/hidsd/"


#: Target of a fleet-wide command.
FLEET_TARGET = "*"


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


class Scope(StrEnum):
    """Who a command or a desired state is for."""

    FLEET = "fleet"
    GROUP = "group"
    HOST = "host"


def check_name(value: str, what: str) -> str:
    """Host ids and group names become subject tokens and key segments: keep them plain."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ProtocolError(
            f"invalid {what} {value!r}: use 1-128 letters, digits, '-' or '_' "
            "(no dots, spaces or wildcards)",
            field=what,
        )
    return value


@dataclass(frozen=True, slots=True)
class Subjects:
    """NATS subject names under a configurable prefix."""

    prefix: str = DEFAULT_SUBJECT_PREFIX

    def cmd_all(self) -> str:
        return f"{self.prefix}.cmd.all"

    def cmd_group(self, group: str) -> str:
        return f"{self.prefix}.cmd.group.{group}"

    def cmd_host(self, host: str) -> str:
        return f"{self.prefix}.cmd.host.{host}"

    def cmd_for(self, scope: Scope, target: str) -> str:
        if scope is Scope.FLEET:
            return self.cmd_all()
        if scope is Scope.GROUP:
            return self.cmd_group(target)
        return self.cmd_host(target)

    def ack(self, cmd_id: str) -> str:
        return f"{self.prefix}.ack.{cmd_id}"

    def ack_all(self) -> str:
        return f"{self.prefix}.ack.*"

    def heartbeat(self, host: str) -> str:
        return f"{self.prefix}.hb.{host}"

    def heartbeat_all(self) -> str:
        return f"{self.prefix}.hb.*"

    def event(self, host: str) -> str:
        """Agent events (config rejected, state changes): low volume, for operators."""
        return f"{self.prefix}.evt.{host}"

    def event_all(self) -> str:
        return f"{self.prefix}.evt.*"

    def telemetry(self, host: str, plugin: str) -> str:
        return f"{self.prefix}.tel.{host}.{plugin}"

    def telemetry_all(self) -> str:
        return f"{self.prefix}.tel.>"

    def telemetry_stream(self) -> str:
        """The JetStream stream that holds this prefix's telemetry."""
        return "HIDSD_TEL_" + re.sub(r"[^A-Za-z0-9]", "_", self.prefix).upper()

    def ctl_sync(self) -> str:
        """Controllers forwarding what each received to the others (and announcing)."""
        return f"{self.prefix}.ctlsync"

    def ctl_peer(self, member_id: str, verb: str) -> str:
        """A request to one controller (its share of a split query)."""
        return f"{self.prefix}.ctlpeer.{member_id}.{verb}"

    def inventory(self, host: str) -> str:
        """A host's latest package set (one message per host kept: the query index's source)."""
        return f"{self.prefix}.inv.{host}"

    def inventory_all(self) -> str:
        return f"{self.prefix}.inv.*"

    def inventory_stream(self) -> str:
        return "HIDSD_INV_" + re.sub(r"[^A-Za-z0-9]", "_", self.prefix).upper()

    def ctl(self, verb: str) -> str:
        """Controller request/reply subjects (served by a queue group)."""
        return f"{self.prefix}.ctl.{verb}"

    def ctl_all(self) -> str:
        return f"{self.prefix}.ctl.>"


#: Queue group the controllers share for request/reply work.
CONTROLLER_QUEUE = "hidsd-controllers"


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """etcd key layout. Desired state has one key per scope; commands are an audit log."""

    prefix: str = DEFAULT_KEY_PREFIX

    @property
    def desired_prefix(self) -> str:
        return f"{self.prefix}desired/"

    def desired(self, scope: Scope, target: str) -> str:
        if scope is Scope.FLEET:
            return f"{self.prefix}desired/fleet"
        return f"{self.prefix}desired/{scope.value}/{target}"

    def applicable(self, host: str, groups: tuple[str, ...]) -> list[str]:
        """The desired-state keys that govern one agent."""
        keys = [self.desired(Scope.FLEET, FLEET_TARGET)]
        keys += [self.desired(Scope.GROUP, g) for g in groups]
        keys.append(self.desired(Scope.HOST, host))
        return keys

    def parse_desired(self, key: str) -> tuple[Scope, str]:
        """Map a desired-state key back to (scope, target); ProtocolError if it is not one."""
        if not key.startswith(self.desired_prefix):
            raise ProtocolError("not a desired-state key", key=key)
        rest = key[len(self.desired_prefix) :]
        if rest == "fleet":
            return Scope.FLEET, FLEET_TARGET
        kind, _, target = rest.partition("/")
        if kind in (Scope.GROUP.value, Scope.HOST.value) and target:
            return Scope(kind), target
        raise ProtocolError("not a desired-state key", key=key)

    def command_log(self, cmd_id: str) -> str:
        return f"{self.prefix}commands/{cmd_id}"

    # Plugin desired state (start/stop by an operator), one key per scope and plugin.

    def plugin_scope_prefix(self, scope: Scope, target: str) -> str:
        if scope is Scope.FLEET:
            return f"{self.prefix}plugins/fleet/"
        return f"{self.prefix}plugins/{scope.value}/{target}/"

    def plugin_desired(self, scope: Scope, target: str, plugin: str) -> str:
        return self.plugin_scope_prefix(scope, target) + plugin

    @property
    def plugins_prefix(self) -> str:
        return f"{self.prefix}plugins/"

    def plugin_applicable(self, host: str, groups: tuple[str, ...]) -> list[str]:
        """Prefixes of the plugin desired state that governs one agent."""
        return [
            self.plugin_scope_prefix(Scope.FLEET, FLEET_TARGET),
            *(self.plugin_scope_prefix(Scope.GROUP, g) for g in groups),
            self.plugin_scope_prefix(Scope.HOST, host),
        ]

    # Config versions: immutable keys of their own (compaction never loses history) and a
    # `current` pointer per scope that writers compare-and-swap.

    @staticmethod
    def scope_label(scope: Scope, target: str) -> str:
        """'fleet', 'group:web', 'host:h1': how operators and heartbeats name a scope."""
        return "fleet" if scope is Scope.FLEET else f"{scope.value}:{target}"

    def _config_base(self, scope: Scope, target: str) -> str:
        if scope is Scope.FLEET:
            return f"{self.prefix}config/fleet/"
        return f"{self.prefix}config/{scope.value}/{target}/"

    def config_current(self, scope: Scope, target: str) -> str:
        return self._config_base(scope, target) + "current"

    def config_versions(self, scope: Scope, target: str) -> str:
        return self._config_base(scope, target) + "versions/"

    def config_version(self, scope: Scope, target: str, version: int) -> str:
        return f"{self.config_versions(scope, target)}{version:010d}"

    def config_scope_prefix(self, scope: Scope, target: str) -> str:
        return self._config_base(scope, target)

    @property
    def config_prefix(self) -> str:
        return f"{self.prefix}config/"

    def config_applicable(self, host: str, groups: tuple[str, ...]) -> list[tuple[Scope, str]]:
        """Scopes whose config governs one agent, lowest precedence first."""
        return [
            (Scope.FLEET, FLEET_TARGET),
            *((Scope.GROUP, g) for g in sorted(groups)),
            (Scope.HOST, host),
        ]


def parse_scope(label: str) -> tuple[Scope, str]:
    """'fleet' | 'group:G' | 'host:H' -> (Scope, target); ProtocolError names the format."""
    if label == "fleet":
        return Scope.FLEET, FLEET_TARGET
    kind, sep, target = label.partition(":")
    if sep and kind in (Scope.GROUP.value, Scope.HOST.value):
        return Scope(kind), check_name(target, f"{kind} name")
    raise ProtocolError(f"invalid scope {label!r}: use fleet, group:NAME or host:NAME")
