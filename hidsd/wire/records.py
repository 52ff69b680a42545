"""Record types and the built-in plugin list: what a frame header's data_type means.

The numbers live in one place because the agent forwards frames without decoding them:
consumers (agent routing, controller ingest, fleet queries) route on the header's data type
alone, without importing any plugin. They are unique across the built-ins, so a record is
self-describing even away from its `tel.<host>.<plugin>` subject.
"""

from __future__ import annotations

from enum import IntEnum

#: the plugins the agent ships, runnable as `python -m hidsd.plugins.builtin.NAME`
BUILTIN = ("inventory", "procmon", "fim", "authlog", "loadgen", "drill")


class DataType(IntEnum):
    """Record types of the built-in plugins (the frame header's data_type)."""

    ERROR = 1  # {plugin, op, path, error, errno}: could not read something; plugin goes on
    STATUS = 2  # {plugin, event, ...}: "ready" after setup, "reconfigured", "following" (authlog)
    # the agent itself (subject tel.<host>.agent): {kind: "breaker", old, state, reason, ...}
    AGENT_EVENT = 3
    # inventory: full snapshots, chunked ({snapshot_id, chunk, chunks, total, <items>})
    PACKAGES = 100  # packages: [{name, version, architecture, source, source_version, ecosystem}]
    PORTS = 101  # ports: [{proto, ip, port, pid, process}] (TCP listening, UDP bound)
    USERS = 102  # users: [{name, uid, gid, home, shell}] from passwd
    # inventory: deltas since the previous scan ({delta_id, chunk, chunks, added, removed, changed})
    PACKAGES_DELTA = 110
    # inventory: the whole package set in one record, for the fleet query index (R5); the agent
    # routes it (by this type alone) to the inventory stream, latest per host:
    # {os_id, os_version, count, digest, reason, packages_z: zlib(msgpack([[eco, name,
    # version, arch, source, source_version], ...]))}; sent when the set changes, and every
    # state_interval_s anyway
    PACKAGES_STATE = 120
    PORTS_DELTA = 111
    USERS_DELTA = 112
    # procmon: a new process (or a recent one that exec'd): {event, pid, ppid, exe, cmdline, ...}
    PROCESS = 200
    # fim: {path, status, type, sha256, size, mode, uid, gid, mtime} per watched path at start
    FIM_BASELINE = 300
    # fim: {path, change: modified|created|deleted|attrib, old_sha256, new_sha256, old, new}
    FIM_CHANGE = 301
    # authlog: {event, user, ip, port, method, pid, host, timestamp, time, path, line, ...}
    SSH_ACCEPTED = 400
    SSH_FAILED = 401
    SSH_INVALID_USER = 402
    # loadgen: {n, pad}, synthetic load for the telemetry path
    LOADGEN = 900
