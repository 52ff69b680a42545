"""Where the inventory plugin's data comes from: package databases, passwd, sockets.

Parsers for dpkg's status file, apk's installed database, `rpm -qa` output and passwd, the
listening-socket scan of /proc/net with owners, and `FileSource` (a parsed file re-read only
when it changes). The plugin itself (`hidsd.plugins.builtin.inventory`) keys, diffs and
reports what these return.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from debian.deb822 import Deb822

Item = dict[str, Any]
Key = tuple[Any, ...]

# dpkg states whose files are on disk (a half-configured package's binaries can still be
# vulnerable); "config-files" and "not-installed" leave only conffiles or nothing.
DPKG_PRESENT = frozenset(
    {
        "installed",
        "half-configured",
        "unpacked",
        "half-installed",
        "triggers-awaited",
        "triggers-pending",
    }
)
DPKG_FIELDS = ["Package", "Status", "Version", "Architecture", "Source"]
# rpm expands the backslash escapes itself, as with a shell-quoted format.
RPM_QUERYFORMAT = r"%{NAME}\t%{EPOCH}\t%{VERSION}-%{RELEASE}\t%{ARCH}\t%{SOURCERPM}\n"
RPM_TIMEOUT_S = 120.0


def _package(
    name: str, version: str, arch: str, source: str, source_version: str, ecosystem: str
) -> Item:
    return {
        "name": name,
        "version": version,
        "architecture": arch,
        "source": source,
        "source_version": source_version,
        "ecosystem": ecosystem,
    }


def parse_dpkg_status(text: str) -> list[Item]:
    """Packages whose files are installed, from dpkg's status database.

    deb822 handles continuation lines, odd paragraph separators and field case; Status is
    "want flag state" and only the state says whether the package is on disk."""
    out: list[Item] = []
    paragraphs = Deb822.iter_paragraphs(
        text.splitlines(keepends=True), fields=DPKG_FIELDS, use_apt_pkg=False
    )
    for para in paragraphs:
        name = para.get("Package", "")
        state = para.get("Status", "").split()
        if not name or len(state) != 3 or state[2] not in DPKG_PRESENT:
            continue
        version = para.get("Version", "")
        source, source_version = name, version
        src = para.get("Source", "").split()
        if src:  # "Source: glibc" or "Source: glibc (2.36-9)" when versions differ
            source = src[0]
            if len(src) > 1:
                source_version = src[1].strip("()")
        out.append(
            _package(name, version, para.get("Architecture", ""), source, source_version, "deb")
        )
    return out


def parse_apk_installed(text: str) -> list[Item]:
    """Packages from apk's installed database: blank-line separated blocks of `X:value` lines
    (P name, V version, A arch, o origin = the source package)."""
    out: list[Item] = []
    block: dict[str, str] = {}

    def flush() -> None:
        if block.get("P"):
            version = block.get("V", "")
            source = block.get("o") or block["P"]
            out.append(_package(block["P"], version, block.get("A", ""), source, version, "apk"))
        block.clear()

    for line in text.splitlines():
        if not line.strip():
            flush()
        elif len(line) >= 2 and line[1] == ":" and line[0] in "PVAo":
            block.setdefault(line[0], line[2:])
    flush()
    return out


def _split_srpm(srpm: str) -> tuple[str, str] | None:
    """ "glibc-2.34-60.el9.src.rpm" -> ("glibc", "2.34-60.el9")."""
    for suffix in (".src.rpm", ".nosrc.rpm"):
        if srpm.endswith(suffix):
            parts = srpm[: -len(suffix)].rsplit("-", 2)
            if len(parts) == 3:
                return parts[0], f"{parts[1]}-{parts[2]}"
    return None


def parse_rpm_output(text: str) -> list[Item]:
    """Lines of RPM_QUERYFORMAT; the epoch goes into the version (it orders versions)."""
    out: list[Item] = []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) != 5 or fields[0] == "gpg-pubkey":  # imported keys, not software
            continue
        name, epoch, version, arch, srpm = fields
        if epoch not in ("(none)", ""):
            version = f"{epoch}:{version}"
        source = _split_srpm(srpm) or (name, version)
        arch = "" if arch == "(none)" else arch
        out.append(_package(name, version, arch, source[0], source[1], "rpm"))
    return out


def parse_passwd(text: str) -> list[Item]:
    out: list[Item] = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) != 7 or not fields[0] or fields[0][0] in "+-#":
            continue  # blank, comment, NIS include or malformed
        try:
            uid, gid = int(fields[2]), int(fields[3])
        except ValueError:
            continue
        out.append(
            {"name": fields[0], "uid": uid, "gid": gid, "home": fields[5], "shell": fields[6]}
        )
    return out


PROC_NET = (
    ("tcp", "tcp", socket.AF_INET),
    ("tcp", "tcp6", socket.AF_INET6),
    ("udp", "udp", socket.AF_INET),
    ("udp", "udp6", socket.AF_INET6),
)
TCP_LISTEN = "0A"
UDP_UNCONNECTED = "07"  # TCP_CLOSE: bound, no peer


def _address(field: str, family: int) -> tuple[str, int]:
    """ "0100007F:1F90" -> ("127.0.0.1", 8080): the kernel prints each 32-bit word of the
    address in host byte order."""
    ip_hex, port_hex = field.split(":")
    raw = bytes.fromhex(ip_hex)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(family, raw), int(port_hex, 16)


def listening_sockets(proc: str = "/proc") -> dict[int, Item]:
    """Listening TCP and bound, unconnected UDP sockets by inode, from /proc/net: only the
    listening lines are decoded, so a host with 100k connections costs a file read, not 100k
    objects."""
    out: dict[int, Item] = {}
    for proto, name, family in PROC_NET:
        try:
            with open(f"{proc}/net/{name}") as f:
                lines = f.readlines()[1:]
        except FileNotFoundError:
            continue  # no IPv6 on this host
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            if fields[3] != (TCP_LISTEN if proto == "tcp" else UDP_UNCONNECTED):
                continue
            if proto == "udp" and int(fields[2].split(":")[1], 16) != 0:
                continue
            ip, port = _address(fields[1], family)
            inode = int(fields[9])
            if inode:
                out[inode] = {"proto": proto, "ip": ip, "port": port, "pid": None, "process": None}
    return out


def socket_owners(inodes: set[int], proc: str = "/proc") -> dict[int, int]:
    """inode -> lowest pid holding it (the parent of pre-forked workers). Scans file
    descriptors in pid order and stops once every inode is found; another user's descriptors
    are invisible without root."""
    owners: dict[int, int] = {}
    pids = sorted(int(n) for n in os.listdir(proc) if n.isdigit())
    for pid in pids:
        try:
            fds = os.listdir(f"{proc}/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"{proc}/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inode = int(link[8:-1])
                if inode in inodes and inode not in owners:
                    owners[inode] = pid
        if len(owners) == len(inodes):
            break
    return owners


def process_name(pid: int, proc: str = "/proc") -> str | None:
    try:
        with open(f"{proc}/{pid}/comm", "rb") as f:
            return f.read().decode("utf-8", "replace").rstrip("\n")
    except OSError:
        return None


def port_key(p: Item) -> Key:
    return (p["proto"], p["ip"], p["port"])


class PortScanner:
    """Listening sockets with their owners. Owners are cached by socket inode (a socket does
    not change hands): the descriptor walk over every process runs only for sockets not seen
    before or whose owner exited, so a host whose listeners stay put pays one read of
    /proc/net per scan. A socket with no visible owner (another user's without root, another
    pid namespace) is remembered as such."""

    def __init__(self) -> None:
        self._owners: dict[int, tuple[int | None, str | None]] = {}

    def scan(self) -> list[Item]:
        sockets = listening_sockets()
        self._owners = {
            inode: owner
            for inode, owner in self._owners.items()
            if inode in sockets and (owner[0] is None or os.path.exists(f"/proc/{owner[0]}"))
        }
        unknown = set(sockets) - set(self._owners)
        if unknown:
            owners = socket_owners(unknown)
            for inode in unknown:
                pid = owners.get(inode)
                self._owners[inode] = (pid, process_name(pid) if pid is not None else None)
        found: dict[Key, Item] = {}
        for inode in sorted(sockets):
            item = sockets[inode]
            item["pid"], item["process"] = self._owners[inode]
            key = port_key(item)
            prev = found.get(key)  # SO_REUSEPORT: several sockets on one port; lowest pid
            if prev is None or (
                item["pid"] is not None and (prev["pid"] is None or item["pid"] < prev["pid"])
            ):
                found[key] = item
        return list(found.values())


class FileSource:
    """A parsed file, re-read only when its stat changes (dpkg replaces status by rename, so
    a re-scan of an unchanged host costs one stat per file)."""

    def __init__(self, parse: Callable[[str], list[Item]]) -> None:
        self._parse = parse
        self._sig: tuple[Any, ...] | None = None
        self._items: list[Item] = []

    def read(self, path: str) -> tuple[list[Item], str]:
        """(items, "ok") or ([], "absent"); OSError/ValueError when it cannot be read."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._sig, self._items = None, []
            return [], "absent"
        sig = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if sig != self._sig:
            with open(path, "rb") as f:
                data = f.read()
            self._items = self._parse(data.decode("utf-8", errors="replace"))
            self._sig = sig
        return self._items, "ok"


def read_rpm(binary: str) -> tuple[list[Item], str]:
    """The rpm database through `rpm -qa` (its format is private to rpm): (items, "ok"), or
    ([], "skipped") where there is no rpm; OSError when rpm fails."""
    path = shutil.which(binary)
    if path is None:
        return [], "skipped"  # not an rpm host
    proc = subprocess.run(
        [path, "-qa", "--queryformat", RPM_QUERYFORMAT],
        capture_output=True,
        timeout=RPM_TIMEOUT_S,
        check=False,
        env={**os.environ, "LC_ALL": "C"},
    )
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[:500]
        raise OSError(f"{path} -qa exited {proc.returncode}: {err}")
    return parse_rpm_output(proc.stdout.decode("utf-8", errors="replace")), "ok"
