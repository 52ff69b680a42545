"""The inventory plugin's sources as plain functions: package databases, rpm output, passwd,
/proc/net listening sockets (a fake /proc) and a file re-read only when it changes. The
plugin end to end is in test_builtin_inventory.py."""

from __future__ import annotations

import sys
from pathlib import Path

from hidsd.plugins.builtin.invsources import (
    FileSource,
    listening_sockets,
    parse_apk_installed,
    parse_dpkg_status,
    parse_passwd,
    parse_rpm_output,
    read_rpm,
)


def test_dpkg_keeps_packages_on_disk_with_their_source() -> None:
    text = (
        "Package: libssl3\nStatus: install ok installed\nArchitecture: amd64\n"
        "Source: openssl (3.0.11-1)\nVersion: 3.0.11-1+b1\n\n"
        "Package: old\nStatus: deinstall ok config-files\nVersion: 1\n\n"
        "Package: half\nStatus: install reinstreq half-configured\nVersion: 2\n"
    )
    got = {p["name"]: p for p in parse_dpkg_status(text)}
    assert set(got) == {"libssl3", "half"}
    assert (got["libssl3"]["source"], got["libssl3"]["source_version"]) == ("openssl", "3.0.11-1")
    assert (got["half"]["source"], got["half"]["source_version"]) == ("half", "2")


def test_apk_origin_is_the_source() -> None:
    text = "P:busybox-binsh\nV:1.36.1-r5\nA:x86_64\no:busybox\n\nP:musl\nV:1.2.4-r2\n"
    got = parse_apk_installed(text)
    assert [(p["name"], p["source"], p["ecosystem"]) for p in got] == [
        ("busybox-binsh", "busybox", "apk"),
        ("musl", "musl", "apk"),
    ]


def test_rpm_epoch_source_rpm_and_keys_skipped() -> None:
    text = (
        "openssl-libs\t1\t3.0.7-24.el9\tx86_64\topenssl-3.0.7-24.el9.src.rpm\n"
        "gpg-pubkey\t(none)\tfd431d51-4ae0493b\t(none)\t(none)\n"
        "noarch-thing\t(none)\t1.0-1\t(none)\tweird\n"
    )
    first, second = parse_rpm_output(text)
    assert (first["version"], first["source"], first["source_version"]) == (
        "1:3.0.7-24.el9",
        "openssl",
        "3.0.7-24.el9",
    )
    assert (second["architecture"], second["source"]) == ("", "noarch-thing")


def test_rpm_absent_is_skipped() -> None:
    assert read_rpm("/nonexistent/rpm") == ([], "skipped")


def test_passwd_skips_comments_includes_and_garbage() -> None:
    text = "root:x:0:0:root:/root:/bin/bash\n# c\n+nis::::::\nbad:x:a:0::/:/bin/sh\nshort\n"
    assert parse_passwd(text) == [
        {"name": "root", "uid": 0, "gid": 0, "home": "/root", "shell": "/bin/bash"}
    ]


def _proc_net_line(local: str, remote: str, state: str, inode: int) -> str:
    """One line as the kernel prints it (the inode is the tenth field)."""
    return (
        f"   0: {local} {remote} {state} 00000000:00000000 00:00000000 00000000 1000 0 {inode} 1\n"
    )


def test_listening_sockets_from_a_fake_proc(tmp_path: Path) -> None:
    net = tmp_path / "net"
    net.mkdir()
    head = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
    loopback = "0100007F" if sys.byteorder == "little" else "7F000001"
    (net / "tcp").write_text(
        head
        + _proc_net_line(f"{loopback}:1F90", "00000000:0000", "0A", 1111)  # listening
        + _proc_net_line(f"{loopback}:1F91", f"{loopback}:C350", "01", 2222)  # established
    )
    (net / "udp").write_text(
        head
        + _proc_net_line("00000000:0035", "00000000:0000", "07", 3333)  # bound
        + _proc_net_line("00000000:0036", f"{loopback}:0035", "07", 4444)  # connected
    )
    got = listening_sockets(str(tmp_path))  # no tcp6/udp6: an IPv4-only host
    assert {i: (s["proto"], s["ip"], s["port"]) for i, s in got.items()} == {
        1111: ("tcp", "127.0.0.1", 8080),
        3333: ("udp", "0.0.0.0", 53),
    }


def test_file_source_rereads_only_on_change(tmp_path: Path) -> None:
    calls: list[str] = []

    def parse(text: str) -> list[dict[str, object]]:
        calls.append(text)
        return [{"line": line} for line in text.splitlines()]

    src = FileSource(parse)
    path = tmp_path / "db"
    assert src.read(str(path)) == ([], "absent")
    path.write_text("a\n")
    assert src.read(str(path)) == ([{"line": "a"}], "ok")
    assert src.read(str(path)) == ([{"line": "a"}], "ok") and len(calls) == 1
    path.write_text("a\nb\n")
    assert len(src.read(str(path))[0]) == 2 and len(calls) == 2
