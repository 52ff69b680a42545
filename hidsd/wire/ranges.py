"""Affected version ranges: `vers:` specs, in each ecosystem's own order.

dpkg, rpm and apk order versions differently (epochs; `~` sorting before everything; rpm's
release and `^` rules; apk's `_rc`/`_p` suffixes and `-rN` revisions), so every comparison goes
through `univers` rather than code of our own. A range is checked against the installed version
string as agents report it: "EPOCH:VERSION-RELEASE" for rpm, dpkg's own string for deb. OSV
advisories become these ranges in `hidsd.wire.osv`.

Only hidsctl and the controller import this module; the agent never needs univers.

univers 32.0.1 quirks met here: apk versions follow Gentoo's suffixes, so Alpine's `_git`,
`_svn`, `_cvs` and `_hg` do not parse (check() answers None: "cannot compare", counted by the
caller); an rpm bound without a release (`<=1.0.2k`) sorts below every release of that version,
where rpm's dependency matching would ignore the missing release; and `validate=True` hashes
versions, which apk's cannot be, so the vers rules are checked in `_compile` instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from hidsd.base.errors import HidsError

ECOSYSTEMS = ("deb", "rpm", "apk")

#: vers scheme as written -> our ecosystem (univers itself calls Alpine's scheme "apk")
_SCHEMES: Mapping[str, str] = MappingProxyType(
    {"deb": "deb", "debian": "deb", "rpm": "rpm", "apk": "apk", "alpine": "apk"}
)
_COMPARATORS = ("<=", ">=", "!=", "<", ">", "=")

#: distro -> os-release IDs it covers; a distro not listed matches the os ID of the same name
_DISTRO_OS_IDS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "opensuse": (
            "opensuse",
            "opensuse-leap",
            "opensuse-tumbleweed",
            "opensuse-microos",
            "opensuse-leap-micro",
            "opensuse-slowroll",
        ),
        "suse": ("sles", "sled", "sles_sap", "sle_hpc", "sle-micro", "sl-micro"),
    }
)


class QueryError(HidsError):
    """A range, a vers spec or an advisory is invalid; `field` names the part to fix."""

    code = "query"


def version_class(ecosystem: str) -> Any:
    from univers.versions import AlpineLinuxVersion, DebianVersion, RpmVersion

    return {"deb": DebianVersion, "rpm": RpmVersion, "apk": AlpineLinuxVersion}[ecosystem]


def valid_version(ecosystem: str, version: str) -> bool:
    """Whether univers parses `version` for the ecosystem (its own errors are not for humans)."""
    try:
        version_class(ecosystem)(version)
    except (ValueError, TypeError):  # univers' InvalidVersion is a ValueError
        return False
    return True


def _compile(ecosystem: str, spec: str) -> Any:
    """univers' VersionRange for a spec already checked by parse_vers; QueryError otherwise.

    The vers rules (each version once, comparators alternating) are checked here rather than
    with univers' `validate=True`, which hashes versions and fails for apk's (unhashable)."""
    from itertools import pairwise

    from univers.version_constraint import validate_comparators
    from univers.version_range import VersionRange

    from_string: Callable[..., Any] = VersionRange.from_string
    check: Callable[[list[Any]], Any] = validate_comparators
    try:
        vr = from_string(spec)  # sorts the constraints by version
        if vr.scheme != ecosystem:
            raise QueryError(f"range {spec!r} is not a {ecosystem} range", field="ecosystem")
        for a, b in pairwise(vr.constraints):
            if a.version == b.version:
                raise ValueError(f"version {b.version.string!r} appears twice")
        check(list(vr.constraints))
    except (ValueError, TypeError) as exc:
        raise QueryError(f"invalid range {spec!r}: {exc}", field="range") from exc
    return vr


@dataclass(frozen=True)
class AffectedRange:
    """One package's affected versions in one ecosystem, maybe for one distro release only.

    `spec` is the canonical vers string (univers' own rendering, constraints sorted by version);
    constructing checks it, so an AffectedRange from the wire is as valid as one parsed here.
    """

    ecosystem: str  # deb | rpm | apk
    package: str
    spec: str  # canonical vers: string
    distro: str | None = None  # e.g. "debian" when the advisory is release-specific
    release: str | None = None  # e.g. "11" (matches os_version "11" and "11.x")
    source: str = ""  # advisory id, or "cli"

    def __post_init__(self) -> None:
        if self.ecosystem not in ECOSYSTEMS:
            raise QueryError(
                f"unknown ecosystem {self.ecosystem!r}: use deb, rpm or apk", field="ecosystem"
            )
        if not self.package:
            raise QueryError("a package name is required", field="package")
        # not a dataclass field: asdict(), replace() and == ignore it
        object.__setattr__(self, "_compiled", _compile(self.ecosystem, self.spec))

    def check(self, version: str) -> bool | None:
        """Whether the installed `version` is in the range; None if univers cannot parse it
        (the caller counts those rather than calling such a host clean)."""
        try:
            v = version_class(self.ecosystem)(version)
        except (ValueError, TypeError):
            return None
        return bool(v in self.__dict__["_compiled"])

    def contains(self, version: str) -> bool:
        return self.check(version) is True

    def applies_to(self, os_id: str, os_version: str) -> bool:
        """Whether a host with this os-release ID / VERSION_ID is in the range's scope.

        A range without distro applies everywhere; unknown host facts ("" os_id, or "" version
        for a release-specific range) count as in scope: better a match to verify than a miss.
        """
        if self.distro is None or not os_id:
            return True
        distro = self.distro.lower()
        ids = _DISTRO_OS_IDS.get(distro, (distro,))
        if os_id.lower() not in ids:
            return False
        if self.release is None or not os_version:
            return True
        return os_version == self.release or os_version.startswith(self.release + ".")


def _split_constraint(text: str) -> tuple[str, str]:
    for comp in _COMPARATORS:
        if text.startswith(comp):
            return comp, text[len(comp) :]
    return "=", text


def parse_vers(spec: str, package: str, source: str = "cli") -> AffectedRange:
    """A `vers:` range for one package (`vers:deb/<1.1.1n-0+deb11u5`), checked part by part so
    that the error names what to fix. Schemes: deb, rpm, apk (`alpine` and `debian` accepted)."""
    text = "".join(spec.split())  # spaces are not significant in vers
    if not package or any(c.isspace() for c in package):
        raise QueryError(f"invalid package name {package!r}", field="package")
    head, sep, rest = text.partition(":")
    if not sep or head.lower() != "vers":
        raise QueryError(
            f"range {spec!r} must start with 'vers:', e.g. vers:deb/<1.1.1n-0+deb11u5",
            field="range",
        )
    scheme, sep, constraints = rest.partition("/")
    ecosystem = _SCHEMES.get(scheme.lower())
    if ecosystem is None:
        raise QueryError(
            f"unknown ecosystem {scheme!r} in {spec!r}: use vers:deb/, vers:rpm/ or vers:apk/",
            field="ecosystem",
        )
    if not sep or not constraints.strip("|"):
        raise QueryError(f"range {spec!r} has no constraints after {scheme}/", field="range")
    if "*" in constraints and constraints != "*":
        raise QueryError(f"'*' (all versions) must stand alone in {spec!r}", field="range")
    if constraints != "*":
        for part in constraints.strip("|").split("|"):
            _, version = _split_constraint(part)
            if not version or version[0] in "<>=!*":
                raise QueryError(f"constraint {part!r} in {spec!r} is malformed", field="range")
            if not valid_version(ecosystem, version):
                raise QueryError(
                    f"{version!r} in {spec!r} is not a valid {ecosystem} version",
                    field="version",
                )
    try:
        rng = AffectedRange(ecosystem, package, f"vers:{ecosystem}/{constraints}", source=source)
    except QueryError as exc:
        raise QueryError(
            f"constraints of {spec!r} do not form intervals: sorted by version, each version "
            "appears once and '<'/'<=' alternate with '>'/'>=' ('=' and '!=' aside)",
            field="range",
        ) from exc
    canonical = str(rng.__dict__["_compiled"])
    return AffectedRange(ecosystem, package, canonical, source=source)
