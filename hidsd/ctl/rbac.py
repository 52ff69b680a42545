"""Who may read and write what in etcd (R7): the roles, as key grants. Pure.

* admin: etcd's built-in `root` role (everything, including users and roles);
* operator: read everything under the prefix, write desired state, config and the command log;
* viewer: read everything under the prefix;
* agent: one role per host, reading only the desired-state keys and config scopes that govern
  it (fleet, its groups, itself). `agent` (shared) reads all desired state and config: for
  fleets too large for a role per host.
"""

from __future__ import annotations

from hidsd.bus.store import Grant
from hidsd.wire.names import KeyLayout

ROLES = ("operator", "viewer", "agent")


def _stem(keys: KeyLayout) -> str:
    # '/' becomes '.', which a host id or group can never contain: '/a/b/' -> 'a.b' and
    # '/a-b/' -> 'a-b' stay distinct
    return keys.prefix.strip("/").replace("/", ".") or "root"


def role_name(keys: KeyLayout, role: str) -> str:
    """Role names carry the key prefix, so deployments sharing an etcd do not collide."""
    return f"{_stem(keys)}-{role}"


def agent_user(keys: KeyLayout, host: str) -> str:
    """The agent's etcd user, also per prefix (ensure_user resets a user's roles)."""
    return f"{_stem(keys)}-agent-{host}"


def standard_roles(keys: KeyLayout) -> dict[str, list[Grant]]:
    p = keys.prefix
    return {
        role_name(keys, "operator"): [
            Grant(p, "read", prefix=True),
            Grant(keys.desired_prefix, "readwrite", prefix=True),
            Grant(keys.config_prefix, "readwrite", prefix=True),
            Grant(keys.plugins_prefix, "readwrite", prefix=True),
            Grant(f"{p}commands/", "readwrite", prefix=True),
        ],
        role_name(keys, "viewer"): [Grant(p, "read", prefix=True)],
        role_name(keys, "agent"): [
            Grant(keys.desired_prefix, "read", prefix=True),
            Grant(keys.config_prefix, "read", prefix=True),
            Grant(keys.plugins_prefix, "read", prefix=True),
        ],
    }


def host_role(keys: KeyLayout, host: str, groups: tuple[str, ...]) -> tuple[str, list[Grant]]:
    """A role that reads exactly what governs one agent, and nothing else."""
    grants = [Grant(k, "read") for k in keys.applicable(host, groups)]
    grants += [
        Grant(keys.config_scope_prefix(s, t), "read", prefix=True)
        for s, t in keys.config_applicable(host, groups)
    ]
    grants += [Grant(p, "read", prefix=True) for p in keys.plugin_applicable(host, groups)]
    return role_name(keys, f"agent-{host}"), grants
