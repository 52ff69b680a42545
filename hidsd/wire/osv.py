"""OSV advisories (osv.dev JSON) reduced to the vers ranges the fleet can answer.

An OSV entry names its ecosystem ("Debian:11", "Alpine:v3.18", "Red Hat:...") or only a purl;
both map to one of ours (deb, rpm, apk) plus the distro and release it is about, so a host is
matched only against the advisories of its own OS. Events are evaluated as the OSV schema
says and become the same `AffectedRange`s a `vers:` spec gives (`hidsd.wire.ranges`).

Only hidsctl and the controller import this module; the agent never needs univers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from hidsd.wire.ranges import (
    ECOSYSTEMS,
    AffectedRange,
    QueryError,
    parse_vers,
    valid_version,
    version_class,
)

#: OSV ecosystem (the part before the first ":", lowercased) -> (ecosystem, distro)
_OSV_ECOSYSTEMS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "debian": ("deb", "debian"),
        "ubuntu": ("deb", "ubuntu"),
        "alpine": ("apk", "alpine"),
        "wolfi": ("apk", "wolfi"),
        "chainguard": ("apk", "chainguard"),
        "alpaquita": ("apk", "alpaquita"),
        "minimos": ("apk", "minimos"),
        "red hat": ("rpm", "rhel"),
        "almalinux": ("rpm", "almalinux"),
        "rocky linux": ("rpm", "rocky"),
        "opensuse": ("rpm", "opensuse"),
        "suse": ("rpm", "suse"),
        "mageia": ("rpm", "mageia"),
        "openeuler": ("rpm", "openeuler"),
        "photon os": ("rpm", "photon"),
        "azure linux": ("rpm", "azurelinux"),
        "mariner": ("rpm", "mariner"),
    }
)

#: purl namespace -> distro, for affected entries whose OSV ecosystem we do not know
_PURL_DISTROS: Mapping[str, str] = MappingProxyType(
    {"redhat": "rhel", "rocky-linux": "rocky", "rockylinux": "rocky", "photon": "photon"}
)
#: release codenames that purls carry in `?distro=`
_CODENAMES: Mapping[str, str] = MappingProxyType(
    {
        "stretch": "9",
        "buster": "10",
        "bullseye": "11",
        "bookworm": "12",
        "trixie": "13",
        "bionic": "18.04",
        "focal": "20.04",
        "jammy": "22.04",
        "noble": "24.04",
    }
)
_RELEASE_RE = re.compile(r"^v?(\d+(?:\.\d+)*)(?:$|[-_ ])")
_SUSE_RELEASE_RE = re.compile(r"(\d+)(?:\.(\d+)|\s+SP(\d+))?")


@dataclass(frozen=True)
class Advisory:
    """An OSV advisory reduced to what the fleet can answer.

    `unsupported` lists what it cannot ("PyPI/requests", or a deb package with only GIT
    ranges), so that an operator sees it rather than a silent "nothing affected".
    """

    id: str
    summary: str
    aliases: tuple[str, ...]
    ranges: tuple[AffectedRange, ...]
    unsupported: tuple[str, ...]


def _want(obj: Any, typ: type | tuple[type, ...], path: str, what: str) -> Any:
    if not isinstance(obj, typ):
        raise QueryError(f"{path}: expected {what}", field=path)
    return obj


def _list(obj: dict[str, Any], key: str, path: str) -> list[Any]:
    """An optional list member: absent or null is empty, anything else must be a list."""
    value = obj.get(key)
    return [] if value is None else list(_want(value, list, path, "a list"))


def _release_of(distro: str, parts: list[str]) -> str | None:
    """The OS release an OSV ecosystem suffix names ("Debian:11" -> "11", "Alpine:v3.18" ->
    "3.18", "SUSE:Linux Enterprise Server 15 SP5" -> "15.5"), comparable to VERSION_ID."""
    if distro in ("suse", "opensuse"):
        m = _SUSE_RELEASE_RE.search(" ".join(parts))
        if m is None:
            return None
        minor = m.group(2) or m.group(3)
        return f"{m.group(1)}.{minor}" if minor else m.group(1)
    if distro == "rhel" and not (parts and parts[0].startswith(("enterprise_linux", "rhel"))):
        return None  # another Red Hat product: its version is not the OS release
    for part in parts:
        m = _RELEASE_RE.match(part.strip())
        if m:
            return m.group(1)
    return None


def _osv_ecosystem(ecosystem: str, purl: str | None) -> tuple[str, str | None, str | None] | None:
    """(ecosystem, distro, release) for an OSV package, or None if not deb/rpm/apk."""
    base, *parts = ecosystem.split(":")
    known = _OSV_ECOSYSTEMS.get(base.strip().lower())
    if known is not None:
        return known[0], known[1], _release_of(known[1], parts)
    if not purl or not purl.startswith("pkg:"):
        return None
    body, _, qualifiers = purl[4:].partition("?")
    ptype, _, rest = body.partition("/")
    ptype = ptype.lower()
    if ptype not in ECOSYSTEMS:
        return None
    namespace = rest.split("/")[0].lower() if "/" in rest else ""
    purl_distro = _PURL_DISTROS.get(namespace, namespace) or None
    release: str | None = None
    for q in qualifiers.split("&"):
        key, _, value = q.partition("=")
        if key == "distro" and value:
            value = value.lower()
            release = _CODENAMES.get(value)
            if release is None:
                m = re.search(r"(\d+(?:\.\d+)*)", value)
                release = m.group(1) if m else None
    return ptype, purl_distro, release


def _events_to_spec(ecosystem: str, events: list[tuple[str, str]], path: str) -> str | None:
    """OSV's events, evaluated as the OSV schema says (sorted by version; introduced opens an
    interval, fixed closes it before, last_affected after; versions at or past the highest
    limit are unaffected), as a vers string; None if no version is affected."""
    for i, (kind, version) in enumerate(events):
        if not (kind == "introduced" and version == "0") and not valid_version(ecosystem, version):
            raise QueryError(
                f"{path}[{i}].{kind}: {version!r} is not a valid {ecosystem} version",
                field=f"{path}[{i}]",
            )
    if not any(kind == "introduced" for kind, _ in events):
        raise QueryError(f"{path}: no 'introduced' event", field=path)
    vcls = version_class(ecosystem)

    def key(ev: tuple[str, str]) -> tuple[int, Any]:
        # stable: events at one version keep the advisory's order ("fixed 1.5, introduced
        # 1.5" continues an interval, "introduced 1.0, fixed 1.0" is empty)
        return (0, None) if ev == ("introduced", "0") else (1, vcls(ev[1]))

    # intervals [low, high) or [low, high]; None = unbounded
    intervals: list[tuple[str | None, str | None, str]] = []
    low: str | None = None
    is_open = False
    for kind, version in sorted(events, key=key):
        if kind == "introduced" and not is_open:
            low, is_open = (None if version == "0" else version), True
        elif kind in ("fixed", "last_affected") and is_open:
            intervals.append((low, version, "<" if kind == "fixed" else "<="))
            is_open = False
    if is_open:
        intervals.append((low, None, "<"))
    limits = [v for kind, v in events if kind == "limit"]
    if limits:  # only versions below the highest limit can be affected
        top_text = max(limits, key=vcls)
        top = vcls(top_text)
        clipped: list[tuple[str | None, str | None, str]] = []
        for lo, hi, comp in intervals:
            if lo is not None and vcls(lo) >= top:
                continue
            if hi is None or vcls(hi) > top or (vcls(hi) == top and comp == "<="):
                clipped.append((lo, top_text, "<"))
            else:
                clipped.append((lo, hi, comp))
        intervals = clipped
    merged: list[tuple[str | None, str | None, str]] = []
    for lo, hi, comp in intervals:
        if lo is not None and hi is not None and comp == "<" and vcls(lo) == vcls(hi):
            continue  # empty
        prev = merged[-1] if merged else None
        if (
            prev is not None
            and prev[1] is not None
            and lo is not None
            and vcls(prev[1]) == vcls(lo)
        ):
            merged[-1] = (prev[0], hi, comp)  # adjacent: one interval
            continue
        merged.append((lo, hi, comp))
    if not merged:
        return None
    constraints: list[str] = []
    for lo, hi, comp in merged:
        if lo is None and hi is None:
            return f"vers:{ecosystem}/*"
        if lo is not None and hi is not None and vcls(lo) == vcls(hi):
            constraints.append(lo)  # [v, v]: that one version
            continue
        if lo is not None:
            constraints.append(f">={lo}")
        if hi is not None:
            constraints.append(f"{comp}{hi}")
    return f"vers:{ecosystem}/" + "|".join(constraints)


def _versions_spec(ecosystem: str, versions: Iterable[str]) -> str | None:
    """An explicit list of affected versions as `=` constraints (one per distinct version)."""
    vcls = version_class(ecosystem)
    parsed = sorted((vcls(v), v) for v in versions)
    out: list[str] = []
    prev: Any = None
    for v, text in parsed:
        if prev is None or v != prev:
            out.append(text)
        prev = v
    return f"vers:{ecosystem}/" + "|".join(out) if out else None


def parse_osv(data: str | bytes) -> Advisory:
    """An OSV advisory (osv.dev JSON) as ranges for the packages we can answer (deb, rpm, apk).

    One AffectedRange per ECOSYSTEM range object, plus one for an entry's explicit `versions`
    list (OSV: affected if in any range or listed). GIT/SEMVER ranges beside an ECOSYSTEM range
    add nothing we can check and are skipped; an entry with only those is reported unsupported.
    Malformed structure raises QueryError naming the JSON path.
    """
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise QueryError(f"not valid JSON: {exc}", field="$") from exc
    _want(doc, dict, "$", "an OSV object")
    adv_id = _want(doc.get("id"), str, "id", "a string (the advisory id)")
    summary = doc.get("summary")
    if not isinstance(summary, str) or not summary:
        details = doc.get("details")
        summary = details.strip().split("\n", 1)[0][:200] if isinstance(details, str) else ""
    aliases = _list(doc, "aliases", "aliases")
    for i, a in enumerate(aliases):
        _want(a, str, f"aliases[{i}]", "a string")
    affected = _list(doc, "affected", "affected")
    ranges: list[AffectedRange] = []
    unsupported: list[str] = []
    for i, entry in enumerate(affected):
        p = f"affected[{i}]"
        _want(entry, dict, p, "an object")
        pkg = _want(entry.get("package"), dict, f"{p}.package", "an object")
        osv_eco = _want(pkg.get("ecosystem"), str, f"{p}.package.ecosystem", "a string")
        purl = pkg.get("purl")
        name = _want(pkg.get("name"), str, f"{p}.package.name", "a string")
        mapped = _osv_ecosystem(osv_eco, purl if isinstance(purl, str) else None)
        if mapped is None:
            unsupported.append(f"{osv_eco}/{name}")
            continue
        eco, distro, release = mapped
        rngs = _list(entry, "ranges", f"{p}.ranges")
        versions = _list(entry, "versions", f"{p}.versions")
        specs: list[str] = []
        other_types: set[str] = set()
        for j, r in enumerate(rngs):
            rp = f"{p}.ranges[{j}]"
            _want(r, dict, rp, "an object")
            rtype = _want(r.get("type"), str, f"{rp}.type", "a string")
            events = _want(r.get("events"), list, f"{rp}.events", "a list")
            if rtype != "ECOSYSTEM":
                other_types.add(rtype)
                continue
            pairs: list[tuple[str, str]] = []
            for k, ev in enumerate(events):
                ep = f"{rp}.events[{k}]"
                _want(ev, dict, ep, "an object")
                if len(ev) != 1:
                    raise QueryError(f"{ep}: expected exactly one of introduced, fixed, "
                                     "last_affected, limit", field=ep)  # fmt: skip
                ((kind, version),) = ev.items()
                if kind not in ("introduced", "fixed", "last_affected", "limit"):
                    raise QueryError(f"{ep}: unknown event {kind!r}", field=ep)
                pairs.append((kind, _want(version, str, f"{ep}.{kind}", "a string")))
            spec = _events_to_spec(eco, pairs, f"{rp}.events")
            if spec is not None:
                specs.append(spec)
        good: list[str] = []
        for k, v in enumerate(versions):
            _want(v, str, f"{p}.versions[{k}]", "a string")
            if valid_version(eco, v):
                good.append(v)
            else:
                unsupported.append(f"{osv_eco}/{name} version {v!r} (not a valid {eco} version)")
        if good:
            listed = _versions_spec(eco, good)
            if listed is not None:
                specs.append(listed)
        if not specs and other_types and not versions:
            kinds = ", ".join(sorted(other_types))
            unsupported.append(f"{osv_eco}/{name} ({kinds} ranges only)")
        elif not rngs and not versions:
            unsupported.append(f"{osv_eco}/{name} (no ranges or versions listed)")
        for spec in specs:
            try:
                rng = parse_vers(spec, name, source=adv_id)
            except QueryError as exc:
                raise QueryError(f"{p}: {exc.message}", field=p) from exc
            rng = AffectedRange(eco, name, rng.spec, distro, release, adv_id)
            if rng not in ranges:
                ranges.append(rng)
    return Advisory(adv_id, summary, tuple(aliases), tuple(ranges), tuple(unsupported))
