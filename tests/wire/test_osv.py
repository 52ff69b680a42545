"""OSV advisories: the OSV event rules, each ecosystem's naming of distros and releases, what
cannot be answered reported, and errors that name the JSON path."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hidsd.wire.osv import parse_osv
from hidsd.wire.ranges import AffectedRange, QueryError, parse_vers

DSA = {  # as osv.dev serves Debian's DSAs (source package names)
    "id": "DSA-5417-1",
    "summary": "openssl - security update",
    "schema_version": "1.6.0",
    "published": "2023-05-30T00:00:00Z",
    "modified": "2023-06-01T05:17:02Z",
    "related": ["CVE-2023-0464", "CVE-2023-0465", "CVE-2023-0466", "CVE-2023-2650"],
    "affected": [
        {
            "package": {
                "ecosystem": "Debian:11",
                "name": "openssl",
                "purl": "pkg:deb/debian/openssl?arch=source",
            },
            "ranges": [
                {
                    "type": "ECOSYSTEM",
                    "events": [{"introduced": "0"}, {"fixed": "1.1.1n-0+deb11u5"}],
                }
            ],
            "versions": [
                "1.1.1k-1",
                "1.1.1n-0+deb11u1",
                "1.1.1n-0+deb11u2",
                "1.1.1n-0+deb11u3",
                "1.1.1n-0+deb11u4",
            ],
        }
    ],
    "references": [{"type": "ADVISORY", "url": "https://www.debian.org/security/2023/dsa-5417"}],
}

ALSA = {  # AlmaLinux: binary package names, fixed versions with the epoch
    "id": "ALSA-2024:0310",
    "summary": "Moderate: openssl security update",
    "aliases": [],
    "related": ["CVE-2023-5678", "CVE-2023-6129", "CVE-2023-6237", "CVE-2024-0727"],
    "affected": [
        {
            "package": {"ecosystem": "AlmaLinux:9", "name": name},
            "ranges": [
                {
                    "type": "ECOSYSTEM",
                    "events": [{"introduced": "0"}, {"fixed": "1:3.0.7-25.el9_3"}],
                }
            ],
        }
        for name in ("openssl", "openssl-devel", "openssl-libs", "openssl-perl")
    ]
    + [
        {
            "package": {"ecosystem": "Red Hat:enterprise_linux:7::server", "name": "openssl"},
            "ranges": [
                {
                    "type": "ECOSYSTEM",
                    "events": [{"introduced": "0"}, {"fixed": "1:1.0.2k-26.el7_9"}],
                }
            ],
        }
    ],
}

ALPINE = {
    "id": "ALPINE-CVE-2023-5363",
    "details": "Issue summary: A bug has been identified in the processing of key and\n"
    "initialisation vector (IV) lengths.",
    "aliases": ["CVE-2023-5363"],
    "affected": [
        {
            "package": {"ecosystem": "Alpine:v3.18", "name": "openssl"},
            "ranges": [
                {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.1.4-r0"}]}
            ],
        },
        {
            "package": {"ecosystem": "Alpine:v3.17", "name": "openssl"},
            "ranges": [
                {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.0.12-r0"}]}
            ],
        },
    ],
}

MIXED = {  # a GHSA-style record: PyPI (not ours) beside Debian's own package
    "id": "GHSA-j8r2-6x86-q33q",
    "summary": "Unintended leak of Proxy-Authorization header in requests",
    "aliases": ["CVE-2023-32681", "PYSEC-2023-74"],
    "affected": [
        {
            "package": {"ecosystem": "PyPI", "name": "requests", "purl": "pkg:pypi/requests"},
            "ranges": [
                {"type": "ECOSYSTEM", "events": [{"introduced": "2.3.0"}, {"fixed": "2.31.0"}]},
                {
                    "type": "GIT",
                    "repo": "https://github.com/psf/requests",
                    "events": [
                        {"introduced": "0"},
                        {"fixed": "74ea7cf7a6a27a4eeb2ae24e162bcc942a6706d5"},
                    ],
                },
            ],
        },
        {
            "package": {"ecosystem": "Debian:12", "name": "requests"},
            "ranges": [
                {
                    "type": "ECOSYSTEM",
                    "events": [{"introduced": "0"}, {"fixed": "2.28.1+dfsg-1+deb12u1"}],
                },
                {
                    "type": "GIT",
                    "repo": "https://github.com/psf/requests",
                    "events": [
                        {"introduced": "0"},
                        {"fixed": "74ea7cf7a6a27a4eeb2ae24e162bcc942a6706d5"},
                    ],
                },
            ],
        },
    ],
}


def _osv(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def test_debian_advisory() -> None:
    adv = parse_osv(_osv(DSA))
    assert (adv.id, adv.summary, adv.aliases, adv.unsupported) == (
        "DSA-5417-1",
        "openssl - security update",
        (),
        (),
    )
    fixed, listed = adv.ranges
    assert fixed == AffectedRange(
        "deb", "openssl", "vers:deb/<1.1.1n-0+deb11u5", "debian", "11", "DSA-5417-1"
    )
    assert listed.spec.startswith("vers:deb/1.1.1k-1|1.1.1n-0+deb11u1|")
    assert (listed.distro, listed.release) == ("debian", "11")
    assert fixed.contains("1.1.1n-0+deb11u4") and not fixed.contains("1.1.1n-0+deb11u5")
    assert listed.contains("1.1.1n-0+deb11u3") and not listed.contains("1.1.1n-0+deb11u5")
    # what hidsctl sends is accepted as is by the controller's parse_vers
    assert parse_vers(listed.spec, "openssl").spec == listed.spec


def test_rpm_advisory_with_epochs() -> None:
    adv = parse_osv(json.dumps(ALSA))
    assert [(r.package, r.distro, r.release) for r in adv.ranges] == [
        ("openssl", "almalinux", "9"),
        ("openssl-devel", "almalinux", "9"),
        ("openssl-libs", "almalinux", "9"),
        ("openssl-perl", "almalinux", "9"),
        ("openssl", "rhel", "7"),
    ]
    libs = adv.ranges[2]
    assert libs.spec == "vers:rpm/<1:3.0.7-25.el9_3"
    assert libs.contains("1:3.0.7-24.el9")
    assert not libs.contains("1:3.0.7-25.el9_3")
    assert not libs.contains("1:3.0.7-27.el9")
    assert libs.contains("3.0.9-1.el9")  # epoch 0 < 1, whatever the version says
    rhel7 = adv.ranges[4]
    assert rhel7.contains("1:1.0.2k-25.el7_9") and not rhel7.contains("1:1.0.2k-26.el7_9")
    assert rhel7.applies_to("rhel", "7.9") and not rhel7.applies_to("rhel", "9.3")


def test_alpine_advisory() -> None:
    adv = parse_osv(_osv(ALPINE))
    assert adv.summary == "Issue summary: A bug has been identified in the processing of key and"
    assert adv.aliases == ("CVE-2023-5363",)
    v318, v317 = adv.ranges
    assert (v318.ecosystem, v318.distro, v318.release, v318.spec) == (
        "apk",
        "alpine",
        "3.18",
        "vers:apk/<3.1.4-r0",
    )
    assert v318.contains("3.1.3-r0") and v318.contains("3.1.4_rc1-r0")
    assert not v318.contains("3.1.4-r0") and not v318.contains("3.1.4-r1")
    assert v317.release == "3.17" and v317.contains("3.0.11-r1")
    assert v318.applies_to("alpine", "3.18.4") and not v318.applies_to("alpine", "3.17.5")


def test_mixed_advisory_reports_what_it_cannot_answer() -> None:
    adv = parse_osv(_osv(MIXED))
    assert adv.unsupported == ("PyPI/requests",)  # the GIT range beside ECOSYSTEM is no gap
    (deb,) = adv.ranges
    assert (deb.ecosystem, deb.package, deb.distro, deb.release) == (
        "deb",
        "requests",
        "debian",
        "12",
    )
    assert deb.contains("2.28.1+dfsg-1") and not deb.contains("2.28.1+dfsg-1+deb12u1")
    assert adv.aliases == ("CVE-2023-32681", "PYSEC-2023-74")


def _one(events: list[dict[str, str]], eco: str = "Debian") -> str | None:
    doc = {
        "id": "T-1",
        "affected": [
            {
                "package": {"ecosystem": eco, "name": "p"},
                "ranges": [{"type": "ECOSYSTEM", "events": events}],
            }
        ],
    }
    ranges = parse_osv(_osv(doc)).ranges
    return ranges[0].spec if ranges else None


@pytest.mark.parametrize(
    ("events", "spec"),
    [
        ([{"introduced": "0"}], "vers:deb/*"),
        ([{"introduced": "1.0-1"}], "vers:deb/>=1.0-1"),
        ([{"introduced": "0"}, {"fixed": "1.2-1"}], "vers:deb/<1.2-1"),
        ([{"introduced": "1.0"}, {"last_affected": "1.4"}], "vers:deb/>=1.0|<=1.4"),
        # two intervals, listed out of order: OSV sorts events by version
        (
            [{"fixed": "2.1"}, {"introduced": "2.0"}, {"introduced": "1.0"}, {"fixed": "1.5"}],
            "vers:deb/>=1.0|<1.5|>=2.0|<2.1",
        ),
        # ordered by dpkg, not by text: 1.0~rc1 < 1.0 < 1:0.5
        (
            [{"introduced": "1:0.5"}, {"introduced": "1.0~rc1"}, {"fixed": "1.0"}],
            "vers:deb/>=1.0~rc1|<1.0|>=1:0.5",
        ),
        # re-introduced where fixed: one interval
        (
            [{"introduced": "1.0"}, {"fixed": "1.5"}, {"introduced": "1.5"}, {"fixed": "2.0"}],
            "vers:deb/>=1.0|<2.0",
        ),
        ([{"introduced": "1.0"}, {"last_affected": "1.0"}], "vers:deb/1.0"),
        ([{"introduced": "1.0"}, {"fixed": "1.0"}], None),  # nothing affected
        ([{"introduced": "0"}, {"limit": "2.0"}], "vers:deb/<2.0"),
        (
            [
                {"introduced": "1.0"},
                {"last_affected": "1.4"},
                {"introduced": "3.0"},
                {"limit": "2.0"},
            ],
            "vers:deb/>=1.0|<=1.4",
        ),
    ],
)
def test_osv_events(events: list[dict[str, str]], spec: str | None) -> None:
    assert _one(events) == spec


@pytest.mark.parametrize(
    ("ecosystem", "expected"),
    [
        ("Debian", ("deb", "debian", None)),
        ("Debian:11", ("deb", "debian", "11")),
        ("Ubuntu", ("deb", "ubuntu", None)),
        ("Ubuntu:22.04:LTS", ("deb", "ubuntu", "22.04")),
        ("Ubuntu:Pro:FIPS-updates:18.04:LTS", ("deb", "ubuntu", "18.04")),
        ("Alpine:v3.18", ("apk", "alpine", "3.18")),
        ("Wolfi", ("apk", "wolfi", None)),
        ("Red Hat", ("rpm", "rhel", None)),
        ("Red Hat:enterprise_linux:9::appstream", ("rpm", "rhel", "9")),
        ("Red Hat:rhel_eus:8.6::baseos", ("rpm", "rhel", "8.6")),
        ("Red Hat:openshift:4.13::el9", ("rpm", "rhel", None)),  # not an OS release
        ("AlmaLinux", ("rpm", "almalinux", None)),
        ("AlmaLinux:9", ("rpm", "almalinux", "9")),
        ("Rocky Linux:8", ("rpm", "rocky", "8")),
        ("openSUSE:Leap 15.5", ("rpm", "opensuse", "15.5")),
        ("openSUSE:Tumbleweed", ("rpm", "opensuse", None)),
        ("SUSE:Linux Enterprise Server 15 SP5", ("rpm", "suse", "15.5")),
        ("SUSE:Linux Enterprise Server 12", ("rpm", "suse", "12")),
        ("Mageia:9", ("rpm", "mageia", "9")),
        ("openEuler:22.03-LTS-SP1", ("rpm", "openeuler", "22.03")),
    ],
)
def test_osv_ecosystems(ecosystem: str, expected: tuple[str, str, str | None]) -> None:
    doc = {
        "id": "T-2",
        "affected": [{"package": {"ecosystem": ecosystem, "name": "p"}, "versions": ["1.0"]}],
    }
    (rng,) = parse_osv(_osv(doc)).ranges
    assert (rng.ecosystem, rng.distro, rng.release) == expected


def test_purl_identifies_an_unknown_ecosystem() -> None:
    doc = {
        "id": "T-3",
        "affected": [
            {
                "package": {
                    "ecosystem": "Debian-ish",
                    "name": "openssl",
                    "purl": "pkg:deb/debian/openssl?arch=source&distro=bookworm",
                },
                "ranges": [
                    {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.0.11-1"}]}
                ],
            },
            {
                "package": {
                    "ecosystem": "NewDistro",
                    "name": "zlib",
                    "purl": "pkg:rpm/redhat/zlib",
                },
                "versions": ["1.2.11-40.el9"],
            },
            {
                "package": {"ecosystem": "Go", "name": "x", "purl": "pkg:golang/x"},
                "versions": ["1"],
            },
        ],
    }
    adv = parse_osv(_osv(doc))
    assert [(r.ecosystem, r.package, r.distro, r.release) for r in adv.ranges] == [
        ("deb", "openssl", "debian", "12"),
        ("rpm", "zlib", "rhel", None),
    ]
    assert adv.unsupported == ("Go/x",)


def test_git_only_and_empty_entries_are_reported() -> None:
    doc = {
        "id": "T-4",
        "affected": [
            {
                "package": {"ecosystem": "Debian:12", "name": "a"},
                "ranges": [
                    {
                        "type": "GIT",
                        "repo": "https://example.org/a.git",
                        "events": [{"introduced": "0"}, {"fixed": "abc123"}],
                    }
                ],
            },
            {"package": {"ecosystem": "Alpine:v3.19", "name": "b"}},
            {
                "package": {"ecosystem": "Debian:12", "name": "c"},
                "versions": ["1.0-1", "bad version"],
            },
        ],
    }
    adv = parse_osv(_osv(doc))
    assert adv.unsupported == (
        "Debian:12/a (GIT ranges only)",
        "Alpine:v3.19/b (no ranges or versions listed)",
        "Debian:12/c version 'bad version' (not a valid deb version)",
    )
    assert [r.spec for r in adv.ranges] == ["vers:deb/1.0-1"]


def test_duplicate_ranges_are_one() -> None:
    entry = {
        "package": {"ecosystem": "Debian:12", "name": "p"},
        "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "2"}]}],
    }
    adv = parse_osv(_osv({"id": "T-5", "affected": [entry, entry]}))
    assert len(adv.ranges) == 1


def _bad(doc: Any) -> QueryError:
    with pytest.raises(QueryError) as info:
        parse_osv(doc if isinstance(doc, (str, bytes)) else json.dumps(doc))
    return info.value


def test_malformed_advisories_name_the_path() -> None:
    assert "not valid JSON" in _bad(b"{not json").message
    assert "not valid JSON" in _bad(b"\xff\xfe").message
    assert _bad([]).message == "$: expected an OSV object"
    assert _bad({"affected": []}).fields["field"] == "id"
    assert _bad({"id": "X", "affected": {}}).message == "affected: expected a list"
    ok = {"package": {"ecosystem": "Debian", "name": "p"}, "versions": ["1"]}
    e = _bad(
        {
            "id": "X",
            "affected": [
                ok,
                ok,
                {
                    "package": {"ecosystem": "Debian", "name": "p"},
                    "ranges": [{"type": "ECOSYSTEM", "events": {}}],
                },
            ],
        }
    )
    assert e.message == "affected[2].ranges[0].events: expected a list"
    assert e.fields["field"] == "affected[2].ranges[0].events"
    assert _bad({"id": "X", "affected": [{"package": {"name": "p"}}]}).message == (
        "affected[0].package.ecosystem: expected a string"
    )
    assert _bad({"id": "X", "affected": [{"versions": []}]}).message == (
        "affected[0].package: expected an object"
    )

    def events(evs: Any) -> QueryError:
        return _bad(
            {
                "id": "X",
                "affected": [
                    {
                        "package": {"ecosystem": "Debian", "name": "p"},
                        "ranges": [{"type": "ECOSYSTEM", "events": evs}],
                    }
                ],
            }
        )

    assert (
        "events[1].fixed: 'not valid!' is not a valid deb version"
        in events([{"introduced": "0"}, {"fixed": "not valid!"}]).message
    )
    assert "no 'introduced' event" in events([{"fixed": "1.0"}]).message
    assert "unknown event 'patched'" in events([{"introduced": "0"}, {"patched": "1"}]).message
    assert "exactly one" in events([{"introduced": "0", "fixed": "1"}]).message
    assert events([{"introduced": 0}]).message.endswith("events[0].introduced: expected a string")
