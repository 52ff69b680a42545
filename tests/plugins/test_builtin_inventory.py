"""Inventory plugin: packages from a dpkg status file, an apk database and an rpm binary the
test writes, snapshots in chunks, deltas on a snapshot task and on the interval, listening
sockets the test opens, users from a passwd file, and the real dpkg database of this host."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from plugin_harness import start_plugin

from hidsd.plugins.builtin import DataType
from hidsd.wire.frames import TaskType

DPKG = """\
Package: openssl
Status: install ok installed
Priority: optional
Architecture: amd64
Version: 3.0.11-1~deb12u2
Description: Secure Sockets Layer toolkit
 This package contains the openssl binary.
 .
 A continuation paragraph that a naive parser would take for a new field: Version: 0

Package: libssl3
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Source: openssl
Version: 3.0.11-1~deb12u2

Package: bash
Essential: yes
Status: install ok installed
Architecture: amd64
Source: bash (5.2.15-2)
Version: 5.2.15-2+b2

Package: oldpkg
Status: deinstall ok config-files
Architecture: all
Version: 1.0-1

Package: gone
Status: purge ok not-installed
Architecture: amd64

Package: halfway
Status: install reinstreq unpacked
Architecture: amd64
Version: 0.9-1
"""

APK = """\
C:Q1abc=
P:musl
V:1.2.4-r2
A:x86_64
o:musl
T:the musl c library

P:busybox-binsh
V:1.36.1-r5
A:x86_64
o:busybox
"""

RPM_SCRIPT = """#!/bin/sh
# What `rpm -qa --queryformat ...` prints on an RPM host (two kernels side by side).
[ "$1" = "-qa" ] || exit 2
printf 'kernel\\t(none)\\t5.14.0-1.el9\\tx86_64\\tkernel-5.14.0-1.el9.src.rpm\\n'
printf 'kernel\\t(none)\\t5.14.0-2.el9\\tx86_64\\tkernel-5.14.0-2.el9.src.rpm\\n'
printf 'openssl-libs\\t1\\t3.0.7-24.el9\\tx86_64\\topenssl-3.0.7-24.el9.src.rpm\\n'
printf 'gpg-pubkey\\t(none)\\tfd431d51-4ae0493b\\t(none)\\t(none)\\n'
"""

PASSWD = """\
root:x:0:0:root:/root:/bin/bash
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash
broken line
"""


def _files(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "status").write_text(DPKG)
    (tmp_path / "apk").write_text(APK)
    (tmp_path / "passwd").write_text(PASSWD)
    rpm = tmp_path / "rpm"
    rpm.write_text(RPM_SCRIPT)
    rpm.chmod(0o755)
    return {
        "dpkg_status": str(tmp_path / "status"),
        "apk_installed": str(tmp_path / "apk"),
        "passwd": str(tmp_path / "passwd"),
        "rpm_binary": str(rpm),
    }


def _assemble(records: list[dict[str, Any]], kind: str, snapshot_id: str) -> list[dict[str, Any]]:
    """A consumer's view: the chunks of one snapshot, checked complete, joined in order."""
    chunks = sorted(
        (r for r in records if r["snapshot_id"] == snapshot_id), key=lambda r: r["chunk"]
    )
    assert [c["chunk"] for c in chunks] == list(range(chunks[0]["chunks"]))
    items = [item for c in chunks for item in c[kind]]
    assert len(items) == chunks[0]["total"]
    return items


def _by_name(packages: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(p["ecosystem"], p["name"] + "=" + p["version"]): p for p in packages}


def test_snapshot_of_written_databases_then_delta_on_snapshot_task(tmp_path: Path) -> None:
    params = {**_files(tmp_path), "chunk_size": 2, "interval_s": 300}
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
    ):
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        udp.bind(("127.0.0.1", 0))
        _snapshot_then_delta(params, tmp_path, tcp.getsockname()[1], udp.getsockname()[1])


def _snapshot_then_delta(params: dict[str, Any], tmp_path: Path, tcp: int, udp: int) -> None:
    with start_plugin("inventory", params, tmp_path) as p:
        ready = p.wait_for(DataType.STATUS, lambda r: r["event"] == "ready")
        assert ready["sources"] == {
            "deb": "ok",
            "rpm": "ok",
            "apk": "ok",
            "ports": "ok",
            "passwd": "ok",
        }
        first = p.of_type(DataType.PACKAGES)
        sid = first[0]["snapshot_id"]
        packages = _assemble(first, "packages", sid)
        assert first[0]["chunks"] == 5  # 9 packages, 2 per record
        got = _by_name(packages)
        assert set(got) == {
            ("deb", "openssl=3.0.11-1~deb12u2"),
            ("deb", "libssl3=3.0.11-1~deb12u2"),
            ("deb", "bash=5.2.15-2+b2"),
            ("deb", "halfway=0.9-1"),  # unpacked: its files are on disk
            ("apk", "musl=1.2.4-r2"),
            ("apk", "busybox-binsh=1.36.1-r5"),
            ("rpm", "kernel=5.14.0-1.el9"),
            ("rpm", "kernel=5.14.0-2.el9"),
            ("rpm", "openssl-libs=1:3.0.7-24.el9"),
        }  # not oldpkg (config-files only), not gone, not the gpg-pubkey pseudo-package
        assert got[("deb", "libssl3=3.0.11-1~deb12u2")] == {
            "name": "libssl3",
            "version": "3.0.11-1~deb12u2",
            "architecture": "amd64",
            "source": "openssl",
            "source_version": "3.0.11-1~deb12u2",
            "ecosystem": "deb",
        }
        bash = got[("deb", "bash=5.2.15-2+b2")]
        assert (bash["source"], bash["source_version"]) == ("bash", "5.2.15-2")
        busybox = got[("apk", "busybox-binsh=1.36.1-r5")]
        assert (busybox["source"], busybox["architecture"]) == ("busybox", "x86_64")
        ossl = got[("rpm", "openssl-libs=1:3.0.7-24.el9")]
        assert (ossl["source"], ossl["source_version"]) == ("openssl", "3.0.7-24.el9")

        users = _assemble(p.of_type(DataType.USERS), "users", sid)  # chunked like packages
        assert users == [
            {
                "name": "alice",
                "uid": 1000,
                "gid": 1000,
                "home": "/home/alice",
                "shell": "/bin/bash",
            },
            {
                "name": "daemon",
                "uid": 1,
                "gid": 1,
                "home": "/usr/sbin",
                "shell": "/usr/sbin/nologin",
            },
            {"name": "root", "uid": 0, "gid": 0, "home": "/root", "shell": "/bin/bash"},
        ]

        # Change everything, then ask for a snapshot: deltas first, then the new snapshot.
        mark = p.mark()
        text = DPKG.replace("Version: 3.0.11-1~deb12u2\n", "Version: 3.0.13-1~deb12u1\n")
        text = text.replace("Package: bash\n", "Package: bash-static\n")
        text += "\nPackage: nginx\nStatus: install ok installed\nArchitecture: amd64\n"
        text += "Version: 1.22.1-9\n"
        Path(params["dpkg_status"]).write_text(text)
        with open(params["passwd"], "a") as f:
            f.write("toor:x:0:0::/root:/bin/sh\n")
        p.send(TaskType.RUN, {"task": "snapshot"})

        # 6 changes, 2 per record: wait for the delta's last chunk, then reassemble it.
        delta = p.wait_for(DataType.PACKAGES_DELTA, lambda r: r["chunk"] == 2, since=mark)
        assert delta["chunks"] == 3
        deltas = [
            d
            for d in p.of_type(DataType.PACKAGES_DELTA, mark)
            if d["delta_id"] == delta["delta_id"]
        ]
        added = {x["name"] for d in deltas for x in d["added"]}
        removed = {x["name"] for d in deltas for x in d["removed"]}
        changed = {
            (c["old"]["name"], c["old"]["version"], c["new"]["version"])
            for d in deltas
            for c in d["changed"]
        }
        assert added == {"nginx", "bash-static"}
        assert removed == {"bash"}
        assert changed == {
            ("openssl", "3.0.11-1~deb12u2", "3.0.13-1~deb12u1"),
            ("libssl3", "3.0.11-1~deb12u2", "3.0.13-1~deb12u1"),
        }
        users_delta = p.wait_for(DataType.USERS_DELTA, since=mark)
        assert users_delta["added"] == [
            {"name": "toor", "uid": 0, "gid": 0, "home": "/root", "shell": "/bin/sh"}
        ]
        assert users_delta["removed"] == users_delta["changed"] == []

        new = p.wait_for(DataType.PACKAGES, lambda r: r["snapshot_id"] != sid, since=mark)
        p.wait_for(DataType.PACKAGES, lambda r: r["chunk"] == r["chunks"] - 1, since=mark)
        again = _by_name(
            _assemble(p.of_type(DataType.PACKAGES, mark), "packages", new["snapshot_id"])
        )
        assert ("deb", "nginx=1.22.1-9") in again
        assert ("deb", "bash=5.2.15-2+b2") not in again
        assert new["reason"] == "task"

        # The sockets the test opened before the start are listed with its pid.
        ports = _assemble(p.of_type(DataType.PORTS), "ports", sid)
        me = psutil.Process().name()
        assert {
            "proto": "tcp",
            "ip": "127.0.0.1",
            "port": tcp,
            "pid": os.getpid(),
            "process": me,
        } in ports
        assert {
            "proto": "udp",
            "ip": "127.0.0.1",
            "port": udp,
            "pid": os.getpid(),
            "process": me,
        } in ports


def test_deltas_on_the_interval_only_when_something_changed(tmp_path: Path) -> None:
    params = {**_files(tmp_path), "interval_s": 0.2}
    with start_plugin("inventory", params, tmp_path) as p:
        p.wait_for(DataType.STATUS, lambda r: r["event"] == "ready")
        mark = p.mark()
        with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as srv:
            srv.bind(("::1" if socket.has_ipv6 else "127.0.0.1", 0))
            srv.listen()
            port = srv.getsockname()[1]
            opened = p.wait_for(
                DataType.PORTS_DELTA, lambda r: any(x["port"] == port for x in r["added"])
            )
            # Other processes on this host open and close sockets too: look at ours only.
            mine = [x for x in opened["added"] if x["port"] == port]
            assert [(x["proto"], x["pid"]) for x in mine] == [("tcp", os.getpid())]
        closed = p.wait_for(
            DataType.PORTS_DELTA, lambda r: any(x["port"] == port for x in r["removed"]), since=mark
        )
        assert closed["reason"] == "interval"
        # Nothing in the files changed: no package or user delta was sent.
        assert p.of_type(DataType.PACKAGES_DELTA) == p.of_type(DataType.USERS_DELTA) == []

        status = Path(params["dpkg_status"])
        status.write_text(
            DPKG.replace(
                "Package: halfway\nStatus: install reinstreq unpacked",
                "Package: halfway\nStatus: deinstall ok config-files",
            )
        )
        Path(params["passwd"]).write_text(PASSWD.replace("alice:x:1000:1000", "alice:x:0:0"))
        pkg = p.wait_for(DataType.PACKAGES_DELTA)
        assert [x["name"] for x in pkg["removed"]] == ["halfway"]
        assert pkg["added"] == pkg["changed"] == []
        user = p.wait_for(DataType.USERS_DELTA)
        assert user["changed"] == [
            {
                "old": {
                    "name": "alice",
                    "uid": 1000,
                    "gid": 1000,
                    "home": "/home/alice",
                    "shell": "/bin/bash",
                },
                "new": {
                    "name": "alice",
                    "uid": 0,
                    "gid": 0,
                    "home": "/home/alice",
                    "shell": "/bin/bash",
                },
            }
        ]
        # A snapshot is only sent at start and on request.
        assert len({r["snapshot_id"] for r in p.of_type(DataType.PACKAGES)}) == 1


@pytest.mark.skipif(not os.path.exists("/var/lib/dpkg/status"), reason="not a dpkg host")
def test_real_dpkg_database_of_this_host(tmp_path: Path) -> None:
    with start_plugin("inventory", {"ports": False}, tmp_path) as p:
        p.wait_for(DataType.STATUS, lambda r: r["event"] == "ready", timeout=20)
        records = p.of_type(DataType.PACKAGES)
        assert all(r["chunks"] == len(records) for r in records)
        packages = _assemble(records, "packages", records[0]["snapshot_id"])
        assert len(packages) > 100
        assert all(len(r["packages"]) <= 500 for r in records)
        mine = {
            pkg["name"] + ":" + pkg["architecture"]: pkg["version"]
            for pkg in packages
            if pkg["ecosystem"] == "deb"
        }
        assert any(name.startswith("dpkg:") for name in mine)
        if shutil.which("dpkg-query"):  # dpkg's own view must match, package by package
            out = subprocess.run(
                [
                    "dpkg-query",
                    "-W",
                    "-f",
                    "${db:Status-Abbrev} ${Package}:${Architecture} ${Version}\n",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            theirs = {
                line.split()[1]: line.split()[2]
                for line in out.splitlines()
                if line.startswith("ii ")
            }
            assert theirs
            assert {k: mine.get(k) for k in theirs} == theirs
        users = p.of_type(DataType.USERS)[0]["users"]
        assert {"name": "root", "uid": 0, "gid": 0, "home": "/root"}.items() <= next(
            u for u in users if u["name"] == "root"
        ).items()


def test_unreadable_database_is_an_error_record_not_a_crash(tmp_path: Path) -> None:
    params = {**_files(tmp_path), "rpm_binary": str(tmp_path / "no-rpm-here")}
    params["dpkg_status"] = str(tmp_path)  # a directory: read fails with EISDIR
    params["apk_installed"] = str(tmp_path / "absent")
    with start_plugin("inventory", params, tmp_path) as p:
        ready = p.wait_for(DataType.STATUS, lambda r: r["event"] == "ready")
        assert ready["sources"]["deb"] == "error"
        assert ready["sources"]["rpm"] == "skipped"  # no rpm binary: skipped, not an error
        assert ready["sources"]["apk"] == "absent"
        err = p.wait_for(DataType.ERROR)
        assert (err["plugin"], err["op"], err["path"], err["errno"]) == (
            "inventory",
            "read_deb",
            str(tmp_path),
            "EISDIR",
        )
        assert len(p.of_type(DataType.ERROR)) == 1  # rpm and apk are not errors
        assert p.of_type(DataType.PACKAGES)[0]["packages"] == []
        assert len(p.of_type(DataType.USERS)[0]["users"]) == 3

        p.send(TaskType.RUN, {"task": "bogus"})
        bad = p.wait_for(DataType.ERROR, lambda r: r["op"] == "task")
        assert "bogus" in bad["error"]
        p.send(TaskType.SHUTDOWN)  # stdin stays open: SHUTDOWN alone must end it
        assert p.proc.wait(5) == 0


def rows_of(rows: list[list[str]], name: str) -> list[str]:
    return next(r for r in rows if r[1] == name)


def test_package_state_record_for_the_query_index(tmp_path: Path) -> None:
    """One PACKAGES_STATE record with the whole set (zlib'd msgpack) at start, another only
    when the set changes, with the host's OS from os-release."""
    import zlib

    import msgpack

    osr = tmp_path / "os-release"
    osr.write_text('ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12"\n')
    params = {**_files(tmp_path), "interval_s": 0.2, "os_release": str(osr), "ports": False}
    with start_plugin("inventory", params, tmp_path) as p:
        first = p.wait_for(DataType.PACKAGES_STATE)
        rows = msgpack.unpackb(zlib.decompress(first["packages_z"]), raw=False)
        assert (first["os_id"], first["os_version"], first["reason"]) == ("debian", "12", "start")
        assert first["count"] == len(rows)
        assert rows_of(rows, "openssl")[:4] == ["deb", "openssl", "3.0.11-1~deb12u2", "amd64"]
        assert rows == sorted(rows)
        libssl = rows_of(rows, "libssl3")
        assert libssl[4] == "openssl"  # its source package travels with it
        mark = p.mark()
        p.wait_for(DataType.STATUS, lambda r: r["event"] == "ready")
        time.sleep(0.6)  # a few unchanged scans: no new state record
        assert p.of_type(DataType.PACKAGES_STATE, since=mark) == []
        status = Path(params["dpkg_status"])
        status.write_text(status.read_text().replace("3.0.11-1~deb12u2", "3.0.13-1~deb12u1"))
        new = p.wait_for(DataType.PACKAGES_STATE, since=mark)
        rows = msgpack.unpackb(zlib.decompress(new["packages_z"]), raw=False)
        assert rows_of(rows, "openssl")[:4] == ["deb", "openssl", "3.0.13-1~deb12u1", "amd64"]
        assert new["digest"] != first["digest"] and new["reason"] == "interval"
