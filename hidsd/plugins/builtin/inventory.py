"""Inventory: installed packages (dpkg, rpm, apk), listening ports and local users.

A full snapshot at start and on a "snapshot" RUN task, then a re-scan every `interval_s` that
emits only what changed: fleet-wide vulnerability lookup (R5) is answered from the snapshots,
and deltas keep that view current without resending a thousand packages per host each time.

Params: interval_s (300), chunk_size (500 items per record), dpkg_status, apk_installed,
passwd, rpm_binary ("rpm" on PATH; absent = rpm skipped), ports (true), state_interval_s
(3600), os_release (/etc/os-release).

For fleet queries the whole package set also goes out as one PACKAGES_STATE record (zlib'd
msgpack, a few tens of kB for a thousand packages) whenever it changes and at least every
`state_interval_s`, so the controllers' index always has a recent, complete view per host and
can tell its age.

Snapshots are chunked: {snapshot_id, chunk, chunks, total, reason, <kind>: [...]}; a consumer
holds the whole set once it has chunks 0..chunks-1 of one snapshot_id. Deltas are chunked the
same way: {delta_id, chunk, chunks, reason, added, removed, changed}, changed = [{old, new}].
A source that fails to read keeps its previous contents and reports an ERROR: an unreadable
dpkg database must not look as if every package had been removed.
"""

from __future__ import annotations

import math
import secrets
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

from hidsd.base.hostinfo import read_os_release
from hidsd.plugins.builtin import DataType, Runner, is_task, run_main
from hidsd.plugins.builtin.invsources import (
    FileSource,
    Item,
    Key,
    PortScanner,
    parse_apk_installed,
    parse_dpkg_status,
    parse_passwd,
    port_key,
    read_rpm,
)
from hidsd.wire.frames import TaskType
from hidsd.wire.inventory import (
    PackageRow,
    PackagesState,
    encode_packages_state,
    packages_digest,
)

ECOSYSTEMS = ("deb", "rpm", "apk")
DPKG_STATUS = "/var/lib/dpkg/status"
APK_INSTALLED = "/lib/apk/db/installed"
PASSWD = "/etc/passwd"
OS_RELEASE = "/etc/os-release"


def _pkg_key(p: Item) -> Key:
    # The version is part of the key: rpm installs several kernels side by side.
    return (p["ecosystem"], p["name"], p["architecture"], p["version"])


def _keyed(items: Iterable[Item], key: Callable[[Item], Key]) -> dict[Key, Item]:
    out: dict[Key, Item] = {}
    for item in items:
        out.setdefault(key(item), item)
    return out


def _keyed_users(users: list[Item]) -> dict[Key, Item]:
    """Keyed by (name, n-th occurrence): a second "root" line must show, not shadow the first."""
    seen: dict[str, int] = defaultdict(int)
    out: dict[Key, Item] = {}
    for u in users:
        out[(u["name"], seen[u["name"]])] = u
        seen[u["name"]] += 1
    return out


def diff(
    old: dict[Key, Item], new: dict[Key, Item], ignore: tuple[str, ...] = ()
) -> tuple[list[Item], list[Item], list[Item]]:
    """(added, removed, changed) between two keyed sets; `ignore` fields never count as a
    change (a listening daemon's pid churns with restarts of its workers)."""

    def strip(i: Item) -> Item:
        return {k: v for k, v in i.items() if k not in ignore}

    added = [new[k] for k in sorted(new.keys() - old.keys(), key=repr)]
    removed = [old[k] for k in sorted(old.keys() - new.keys(), key=repr)]
    changed = [
        {"old": old[k], "new": new[k]}
        for k in sorted(old.keys() & new.keys(), key=repr)
        if strip(old[k]) != strip(new[k])
    ]
    return added, removed, changed


def diff_packages(
    old: dict[Key, Item], new: dict[Key, Item]
) -> tuple[list[Item], list[Item], list[Item]]:
    """Like `diff`, but one removed and one added version of the same package is an upgrade
    (or downgrade): reported as changed."""
    added, removed, changed = diff(old, new)

    def by_name(items: list[Item]) -> dict[Key, list[Item]]:
        out: dict[Key, list[Item]] = defaultdict(list)
        for p in items:
            out[(p["ecosystem"], p["name"], p["architecture"])].append(p)
        return out

    add_n, rem_n = by_name(added), by_name(removed)
    pairs = {k for k in add_n.keys() & rem_n.keys() if len(add_n[k]) == len(rem_n[k]) == 1}
    for k in sorted(pairs):
        changed.append({"old": rem_n[k][0], "new": add_n[k][0]})
    added = [p for p in added if (p["ecosystem"], p["name"], p["architecture"]) not in pairs]
    removed = [p for p in removed if (p["ecosystem"], p["name"], p["architecture"]) not in pairs]
    return added, removed, changed


class Inventory:
    """Scans, remembers what was last reported, and emits snapshots and deltas."""

    def __init__(self, rt: Runner) -> None:
        self.rt = rt
        self._dpkg = FileSource(parse_dpkg_status)
        self._apk = FileSource(parse_apk_installed)
        self._passwd = FileSource(parse_passwd)
        self._ports = PortScanner()
        self.sources: dict[str, str] = {}  # ecosystem -> ok | absent | skipped | error
        self._by_source: dict[str, dict[Key, Item]] = {}
        self._last: dict[str, dict[Key, Item]] | None = None
        self._state_digest = ""
        self._state_at = 0.0

    def interval(self) -> float:
        return self.rt.param_float("interval_s", 300.0, minimum=0.05)

    # ------------------------------------------------------------------ reading

    def _read(
        self,
        name: str,
        path: str | None,
        read: Callable[[], tuple[list[Item], str]],
        key: Callable[[list[Item]], dict[Key, Item]],
    ) -> dict[Key, Item]:
        """One source; on failure its previous contents and an ERROR record."""
        try:
            items, state = read()
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            self.rt.error(f"read_{name}", exc, path)
            self.sources[name] = "error"
            return self._by_source.get(name, {})
        self.rt.ok(f"read_{name}", path)
        self.sources[name] = state
        self._by_source[name] = key(items)
        return self._by_source[name]

    def scan(self) -> dict[str, dict[Key, Item]]:
        p = self.rt
        dpkg = p.param_str("dpkg_status", DPKG_STATUS)
        apk = p.param_str("apk_installed", APK_INSTALLED)
        passwd = p.param_str("passwd", PASSWD)

        def pkgs(items: list[Item]) -> dict[Key, Item]:
            return _keyed(items, _pkg_key)

        packages: dict[Key, Item] = {}
        packages.update(self._read("deb", dpkg, lambda: self._dpkg.read(dpkg), pkgs))
        rpm = p.param_str("rpm_binary", "rpm")
        packages.update(self._read("rpm", rpm, lambda: read_rpm(rpm), pkgs))
        packages.update(self._read("apk", apk, lambda: self._apk.read(apk), pkgs))
        ports: dict[Key, Item] = {}
        if p.param_bool("ports", True):
            ports = self._read(
                "ports",
                None,
                lambda: (self._ports.scan(), "ok"),
                lambda items: _keyed(items, port_key),
            )
        users = self._read("passwd", passwd, lambda: self._passwd.read(passwd), _keyed_users)
        return {"packages": packages, "ports": ports, "users": users}

    # ------------------------------------------------------------------ reporting

    def _emit_chunked(
        self, data_type: int, base: Item, lists: dict[str, list[Item]], ts_ns: int
    ) -> None:
        size = self.rt.param_int("chunk_size", 500, minimum=1)
        flat = [(name, item) for name, items in lists.items() for item in items]
        chunks = max(1, math.ceil(len(flat) / size))
        for i in range(chunks):
            record: Item = {**base, "chunk": i, "chunks": chunks}
            record.update({name: [] for name in lists})
            for name, item in flat[i * size : (i + 1) * size]:
                record[name].append(item)
            self.rt.emit(data_type, record, ts_ns)

    def report(self, snapshot: bool, reason: str) -> None:
        ts_ns = time.time_ns()
        new = self.scan()
        if self._last is not None:
            delta_types = (
                (
                    "packages",
                    DataType.PACKAGES_DELTA,
                    diff_packages(self._last["packages"], new["packages"]),
                ),
                ("ports", DataType.PORTS_DELTA, diff(self._last["ports"], new["ports"], ("pid",))),
                ("users", DataType.USERS_DELTA, diff(self._last["users"], new["users"])),
            )
            for kind, data_type, (added, removed, changed) in delta_types:
                if added or removed or changed:
                    self.rt.log.info(
                        "%s: +%d -%d ~%d", kind, len(added), len(removed), len(changed)
                    )
                    base: Item = {"delta_id": secrets.token_hex(8), "reason": reason}
                    self._emit_chunked(
                        data_type,
                        base,
                        {"added": added, "removed": removed, "changed": changed},
                        ts_ns,
                    )
        if snapshot:
            sid = secrets.token_hex(8)
            for kind, data_type in (
                ("packages", DataType.PACKAGES),
                ("ports", DataType.PORTS),
                ("users", DataType.USERS),
            ):
                items = [new[kind][k] for k in sorted(new[kind], key=repr)]
                base = {"snapshot_id": sid, "reason": reason, "total": len(items)}
                if kind == "packages":
                    base["sources"] = {k: self.sources.get(k) for k in ECOSYSTEMS}
                self._emit_chunked(data_type, base, {kind: items}, ts_ns)
        self._last = new
        self.report_state(new["packages"], reason)

    def report_state(self, packages: dict[Key, Item], reason: str) -> None:
        """The whole package set in one record, if it changed or is due for a refresh."""
        rows = tuple(sorted(
            PackageRow(p["ecosystem"], p["name"], p["version"], p.get("architecture") or "",
                       p.get("source") or "", p.get("source_version") or "")
            for p in packages.values()
        ))  # fmt: skip
        digest = packages_digest(rows)
        due = time.monotonic() - self._state_at >= self.rt.param_float(
            "state_interval_s", 3600.0, minimum=1.0
        )
        if digest == self._state_digest and not due:
            return
        osr = read_os_release(self.rt.param_str("os_release", OS_RELEASE))
        state = PackagesState(
            os_id=osr.get("ID", ""),
            os_version=osr.get("VERSION_ID", ""),
            count=len(rows),
            digest=digest,
            reason=reason if digest != self._state_digest else "refresh",
            packages=rows,
            sources={k: self.sources.get(k) for k in ECOSYSTEMS},
        )
        self.rt.emit_payload(DataType.PACKAGES_STATE, encode_packages_state(state))
        self._state_digest, self._state_at = digest, time.monotonic()


def run(rt: Runner) -> None:
    rt.configure()
    inv = Inventory(rt)
    inv.report(snapshot=True, reason="start")
    rt.status("ready", interval_s=inv.interval(), sources=dict(inv.sources))
    next_scan = time.monotonic() + inv.interval()
    while not rt.stopping:
        rt.sleep(next_scan - time.monotonic())
        snapshot, reason = False, "interval"
        for task_type, payload in rt.tasks():
            if task_type == TaskType.RUN and is_task(payload, "snapshot"):
                snapshot = True
            elif task_type == TaskType.RUN:
                rt.error("task", f"unknown task {payload!r} (known: snapshot)")
            elif task_type == TaskType.CONFIG:
                next_scan, reason = time.monotonic(), "config"  # new paths or interval
        if rt.stopping:
            break
        if snapshot or time.monotonic() >= next_scan:
            inv.report(snapshot, "task" if snapshot else reason)
            next_scan = time.monotonic() + inv.interval()


def main() -> int:
    return run_main("inventory", run)


if __name__ == "__main__":
    sys.exit(main())
