"""vers ranges: each ecosystem's own version order (through univers), the distro and release
scope, and errors that name what to fix."""

from __future__ import annotations

from dataclasses import asdict, replace

import pytest

from hidsd.wire.ranges import (
    ECOSYSTEMS,
    AffectedRange,
    QueryError,
    parse_vers,
)

# ------------------------------------------------------------------ version semantics


@pytest.mark.parametrize(
    ("spec", "installed", "expected"),
    [
        # deb: the security update number, not the string, orders versions
        ("vers:deb/<1.1.1n-0+deb11u5", "1.1.1n-0+deb11u4", True),
        ("vers:deb/<1.1.1n-0+deb11u5", "1.1.1n-0+deb11u5", False),
        ("vers:deb/<1.1.1n-0+deb11u10", "1.1.1n-0+deb11u9", True),  # "u9" > "u10" as text
        # tilde sorts before everything, even the end of the string
        ("vers:deb/<1.0", "1.0~rc1", True),
        ("vers:deb/<3.0.11-1", "3.0.11-1~deb12u2", True),  # a backport precedes the original
        # an epoch outranks any upstream version
        ("vers:deb/<2.0", "1:0.9", False),
        ("vers:deb/>=1:0", "2.0", False),
        ("vers:deb/<=1.0", "1.0-0", True),  # no revision == revision 0
        # rpm: release compared numerically, segment by segment
        ("vers:rpm/<1.0.2k-25.el7_9", "1.0.2k-8", True),
        ("vers:rpm/<1.0.2k-8", "1.0.2k-25.el7_9", False),
        ("vers:rpm/>=1.0|<1.0.2k-25", "1.0.2k-8", True),
        ("vers:rpm/<5.14.0-362.24.1.el9_3", "5.14.0-362.8.1.el9_3", True),
        # rpm epochs: 1:1.0-1 is newer than 2.0-1; a missing epoch is 0
        ("vers:rpm/<2.0-1", "1:1.0-1", False),
        ("vers:rpm/>2.0-1", "1:1.0-1", True),
        ("vers:rpm/<1:3.0.7-25.el9_3", "1:3.0.7-24.el9", True),
        ("vers:rpm/<=0:1.0-1", "1.0-1", True),
        # rpm tilde (pre-release) and caret (post-release snapshot)
        ("vers:rpm/<1.0-1", "1.0~rc1-1", True),
        ("vers:rpm/<=1.0-1", "1.0^git1-1", False),
        # apk: -rN revisions are numbers, _rc before the release, _p after it
        ("vers:apk/<1.2.3-r10", "1.2.3-r1", True),
        ("vers:apk/<1.2.3-r2", "1.2.3-r10", False),
        ("vers:apk/<1.2.3", "1.2.3_rc1", True),
        ("vers:apk/<1.2.3-r0", "1.2.3_rc1-r0", True),
        ("vers:apk/<=1.2.3-r0", "1.2.3_p1-r0", False),
        ("vers:apk/<3.1.4-r0", "3.0.12-r1", True),
    ],
)
def test_version_order_is_the_ecosystems(spec: str, installed: str, expected: bool) -> None:
    assert parse_vers(spec, "pkg").contains(installed) is expected


def test_several_intervals_and_exact_versions() -> None:
    rng = parse_vers("vers:deb/>=1.0|<1.2|>=2.0|<2.1", "p")
    assert [rng.contains(v) for v in ("0.9", "1.0", "1.1.5", "1.2", "1.5", "2.0.5", "2.1")] == [
        False,
        True,
        True,
        False,
        False,
        True,
        False,
    ]
    listed = parse_vers("vers:deb/1.0-1|1.0-2", "p")
    assert listed.contains("1.0-2") and not listed.contains("1.0-3")
    assert parse_vers("vers:apk/*", "p").contains("0.1-r0")


def test_an_unparsable_installed_version_cannot_be_compared() -> None:
    rng = parse_vers("vers:apk/<1.0-r0", "p")
    assert rng.check("0.9-r0") is True
    assert rng.check("1.0-r0") is False
    # univers follows Gentoo's suffixes for apk: Alpine's _git/_svn/_cvs/_hg are refused
    assert rng.check("0.5.11_git20210310-r0") is None
    assert rng.contains("0.5.11_git20210310-r0") is False
    assert parse_vers("vers:deb/<1.0", "p").check("not a version") is None
    assert parse_vers("vers:rpm/<1.0", "p").check("") is None


def test_univers_rpm_release_quirk() -> None:
    """A bound without a release sorts below every release of its version in univers (rpm's
    dependency matching would ignore the missing release). Advisories give full EVRs; this
    pins the behaviour so that an upgrade changing it is noticed."""
    assert not parse_vers("vers:rpm/<=1.0.2k", "p").contains("1.0.2k-8")
    assert parse_vers("vers:rpm/>1.0.2k", "p").contains("1.0.2k-8")


# ------------------------------------------------------------------ parse_vers


def test_parse_vers_canonical_form() -> None:
    rng = parse_vers(" vers:Alpine/ <1.2.3-r10 | >=1.0 ", "openssl")
    assert rng == AffectedRange("apk", "openssl", "vers:apk/>=1.0|<1.2.3-r10", source="cli")
    assert parse_vers("VERS:debian/<1:2.0-1", "p").spec == "vers:deb/<1:2.0-1"
    assert parse_vers("vers:rpm/<2|>=1", "p", source="RHSA-1").source == "RHSA-1"


@pytest.mark.parametrize(
    ("spec", "package", "field", "words"),
    [
        ("deb/<1.0", "p", "range", "must start with 'vers:'"),
        ("<1.0", "p", "range", "must start with 'vers:'"),
        ("vers:pypi/<2.0", "p", "ecosystem", "use vers:deb/, vers:rpm/ or vers:apk/"),
        ("vers:deb/", "p", "range", "no constraints"),
        ("vers:deb/>>1.0", "p", "range", "'>>1.0'"),
        ("vers:deb/<not a version!", "p", "version", "not a valid deb version"),
        ("vers:apk/<1.0-rc1", "p", "version", "'1.0-rc1'"),
        ("vers:deb/>=1.0|>=2.0", "p", "range", "alternate"),
        ("vers:deb/1.0|<2.0", "p", "range", "do not form intervals"),
        ("vers:deb/1.0|1.0-0", "p", "range", "appears once"),  # equal in dpkg's order
        ("vers:apk/1.0|1.0-r0", "p", "range", "appears once"),
        ("vers:deb/*|<1.0", "p", "range", "must stand alone"),
        ("vers:deb/<1.0", "", "package", "package"),
        ("vers:deb/<1.0", "two words", "package", "package"),
    ],
)
def test_parse_vers_errors_name_the_bad_part(
    spec: str, package: str, field: str, words: str
) -> None:
    with pytest.raises(QueryError) as info:
        parse_vers(spec, package)
    assert info.value.fields["field"] == field
    assert words in info.value.message
    assert info.value.to_dict()["error"] == "query"


def test_ranges_travel_as_plain_fields() -> None:
    """hidsctl sends asdict() fields; the controller rebuilds with parse_vers and replace()."""
    rng = parse_vers("vers:deb/<1.1.1n-0+deb11u5", "openssl")
    wire = asdict(rng)
    assert wire == {
        "ecosystem": "deb",
        "package": "openssl",
        "spec": rng.spec,
        "distro": None,
        "release": None,
        "source": "cli",
    }
    again = replace(parse_vers(wire["spec"], wire["package"]), distro="debian", release="11")
    assert again.contains("1.1.1n-0+deb11u4")
    assert hash(again) != hash(rng) and again != rng
    with pytest.raises(QueryError):
        AffectedRange("deb", "openssl", "vers:deb/<<1")
    with pytest.raises(QueryError):
        AffectedRange("deb", "openssl", "vers:rpm/<1")  # spec of another ecosystem
    with pytest.raises(QueryError, match="ecosystem"):
        AffectedRange("pypi", "requests", "vers:pypi/<2")
    assert ECOSYSTEMS == ("deb", "rpm", "apk")


@pytest.mark.parametrize(
    ("distro", "release", "os_id", "os_version", "expected"),
    [
        (None, None, "alpine", "3.19.1", True),
        ("debian", "11", "debian", "11", True),
        ("debian", "11", "debian", "11.7", True),
        ("debian", "11", "debian", "12", False),
        ("debian", "11", "ubuntu", "22.04", False),
        ("debian", "11", "", "", True),  # unknown OS: evaluated anyway
        ("debian", "11", "debian", "", True),  # testing/sid: no VERSION_ID
        ("debian", None, "debian", "12", True),
        ("alpine", "3.18", "alpine", "3.18.4", True),
        ("alpine", "3.18", "alpine", "3.180.1", False),
        ("rhel", "9", "rhel", "9.3", True),
        ("rhel", "9", "almalinux", "9.3", False),
        ("suse", "15.5", "sles", "15.5", True),
        ("opensuse", None, "opensuse-tumbleweed", "20240101", True),
        ("openeuler", "22.03", "openEuler", "22.03", True),
        ("mydistro", None, "mydistro", "1", True),
        ("Debian", "11", "debian", "11", True),  # as a hand-written wire request may say
    ],
)
def test_distro_and_release_scope(
    distro: str | None, release: str | None, os_id: str, os_version: str, expected: bool
) -> None:
    rng = AffectedRange("deb", "p", "vers:deb/<1", distro, release)
    assert rng.applies_to(os_id, os_version) is expected
