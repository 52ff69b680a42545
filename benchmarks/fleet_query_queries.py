"""The fleet query benchmark's query mix, parsed as `hidsctl query package|advisory` parses it.

vers ranges for deb, rpm and apk (`parse_vers`, as `hidsctl query package NAME --affected`)
and OSV advisories (JSON as osv.dev serves it, `parse_osv`, as `hidsctl query advisory FILE`)
with several ranges each. The first is the typical query: a patched fleet's laggards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from hidsd.wire.osv import parse_osv
from hidsd.wire.ranges import AffectedRange, parse_vers


@dataclass(frozen=True, slots=True)
class Query:
    """One query as hidsctl would send it: a `package` range or an `advisory` file."""

    name: str
    kind: str  # "package" | "advisory"
    package: str = ""
    spec: str = ""
    osv: str = ""  # the advisory's JSON text

    def ranges(self) -> list[AffectedRange]:
        if self.kind == "package":
            return [parse_vers(self.spec, self.package)]
        adv = parse_osv(self.osv)
        if adv.unsupported:
            raise ValueError(f"{self.name}: unsupported parts {adv.unsupported}")
        return list(adv.ranges)


def _osv(adv_id: str, summary: str, aliases: list[str],
         entries: list[tuple[str, str, list[dict[str, str]]]]) -> str:  # fmt: skip
    """An OSV document: one affected entry per (ecosystem, package, events)."""
    return json.dumps({
        "schema_version": "1.6.0",
        "id": adv_id,
        "modified": "2024-04-18T08:11:52Z",
        "published": "2024-04-17T00:00:00Z",
        "aliases": aliases,
        "summary": summary,
        "affected": [
            {"package": {"ecosystem": eco, "name": name},
             "ranges": [{"type": "ECOSYSTEM", "events": events}]}
            for eco, name, events in entries
        ],
        "references": [{"type": "ADVISORY", "url": f"https://osv.dev/vulnerability/{adv_id}"}],
    })  # fmt: skip


def _fixed(version: str) -> list[dict[str, str]]:
    return [{"introduced": "0"}, {"fixed": version}]


def queries() -> list[Query]:
    """The query mix: the first is the typical one (a patched fleet's laggards)."""
    openssl = _osv("BENCH-2024-0001", "openssl: laggards behind the last security update",
                   ["CVE-2023-5678"], [
        ("Debian:12", "openssl", _fixed("3.0.11-1~deb12u2")),
        ("Debian:11", "openssl", _fixed("1.1.1w-0+deb11u1")),
        ("Ubuntu:22.04:LTS", "openssl", _fixed("3.0.2-0ubuntu1.15")),
        ("Red Hat:enterprise_linux:9::baseos", "openssl", _fixed("1:3.0.7-27.el9")),
        ("Alpine:v3.18", "openssl", _fixed("3.1.4-r5")),
    ])  # fmt: skip
    ssh = _osv("BENCH-2024-0002", "openssh and curl: several releases, several fixes",
               ["CVE-2023-48795"], [
        ("Debian:12", "openssh", _fixed("1:9.2p1-2+deb12u2")),
        ("Debian:11", "openssh", _fixed("1:8.4p1-5+deb11u3")),
        ("Ubuntu:22.04:LTS", "openssh", _fixed("1:8.9p1-3ubuntu0.6")),
        ("Red Hat:enterprise_linux:9::appstream", "openssh", _fixed("8.7p1-34.el9_3.3")),
        ("Alpine:v3.18", "openssh", _fixed("9.3_p2-r1")),
        ("Debian:12", "curl", _fixed("7.88.1-10+deb12u5")),
        ("Debian:11", "curl", _fixed("7.74.0-1.3+deb11u11")),
        ("Alpine:v3.18", "curl", _fixed("8.5.0-r0")),
    ])  # fmt: skip
    fresh = _osv("BENCH-2024-0003", "glibc: a new advisory, no host patched yet",
                 ["CVE-2024-2961"], [
        ("Debian:12", "glibc", _fixed("2.36-9+deb12u7")),
        ("Debian:11", "glibc", _fixed("2.31-13+deb11u10")),
        ("Ubuntu:22.04:LTS", "glibc", _fixed("2.35-0ubuntu3.7")),
    ])  # fmt: skip
    return [
        Query("deb-curl-laggards", "package", "curl", "vers:deb/>=7.88.1-10|<7.88.1-10+deb12u5"),
        Query("rpm-openssl", "package", "openssl", "vers:rpm/<1:3.0.7-27.el9"),
        Query("apk-openssl", "package", "openssl", "vers:apk/<3.1.4-r5"),
        Query("osv-openssl-5-ranges", "advisory", osv=openssl),
        Query("deb-sudo", "package", "sudo", "vers:deb/<1.9.13p3-1+deb12u1"),
        Query("osv-openssh-curl-8-ranges", "advisory", osv=ssh),
        Query("osv-glibc-unpatched-3-ranges", "advisory", osv=fresh),
    ]
