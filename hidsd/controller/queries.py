"""Fleet queries on the controller side: ranges re-parsed from the request, matches on the
wire, and the merge of every controller's share into one answer (pure)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any


def ranges_from_wire(wire: list[Any]) -> list[Any]:
    """Ranges as hidsctl sends them, re-parsed (never trusted as already valid)."""
    from dataclasses import replace

    from hidsd.wire.ranges import parse_vers

    out = []
    for r in wire:
        rng = parse_vers(str(r["spec"]), str(r["package"]))
        out.append(replace(rng, distro=r.get("distro"), release=r.get("release"),
                           source=str(r.get("source", ""))))  # fmt: skip
    return out


def match_to_wire(m: Any) -> dict[str, Any]:
    return {"ecosystem": m.ecosystem, "package": m.package, "version": m.version,
            "range": m.range_spec, "source": m.source}  # fmt: skip


def merge_query(
    results: dict[str, Any],
    how: dict[str, str],
    liveness: dict[str, str],
    max_age: float,
    started: float,
    now: float,
) -> dict[str, Any]:
    """Merge the shares into one answer that accounts for every known host (the indexed ones
    and those presence knows): matched, clean, or no answer and why."""
    evaluated: dict[str, float | None] = {}
    matches: dict[str, list[dict[str, Any]]] = {}
    uncomparable: dict[str, list[Any]] = {}
    counters: Counter[str] = Counter()
    shards = []
    for mid, res in results.items():
        evaluated.update(res["evaluated"])
        matches.update(res["matches"])
        uncomparable.update(res.get("uncomparable", {}))
        counters.update(res.get("counters", {}))
        shards.append({"member": mid, "controller": res.get("controller"),
                       "hosts": len(res["evaluated"]), "how": how.get(mid, "?")})  # fmt: skip
    universe = sorted(set(evaluated) | set(liveness))
    out: dict[str, list[dict[str, Any]]] = {"matched": [], "clean": [], "no_answer": []}
    for host in universe:
        live = liveness.get(host, "unknown")
        at = evaluated.get(host)
        if at is None:
            out["no_answer"].append({"host": host, "liveness": live,
                                     "reason": "no inventory reported"})  # fmt: skip
            continue
        age = round(now - at, 1)
        if live == "online" and age > max_age:
            out["no_answer"].append({"host": host, "liveness": live, "inventory_age_s": age,
                                     "reason": f"inventory {age:.0f}s old, over max age "
                                               f"{max_age:.0f}s"})  # fmt: skip
            continue
        row: dict[str, Any] = {"host": host, "liveness": live, "inventory_age_s": age}
        if host not in matches and host in uncomparable:
            what = ", ".join(f"{p} {v}" for p, v in uncomparable[host])
            out["no_answer"].append({**row, "reason": f"cannot compare installed {what} "
                                                      "with the range"})  # fmt: skip
            continue
        if host in matches:
            out["matched"].append({**row, "packages": matches[host]})
        else:
            out["clean"].append(row)
    answered = out["matched"] + out["clean"]
    counts = {
        "hosts": len(universe),
        "answered": len(answered),
        "matched": len(out["matched"]),
        "clean": len(out["clean"]),
        "offline_answered": sum(r["liveness"] != "online" for r in answered),
        "no_answer": len(out["no_answer"]),
    }
    return {**out, "counts": counts, "shards": shards, "counters": dict(counters),
            "complete": not out["no_answer"], "elapsed_ms": round(
                (time.monotonic() - started) * 1000, 2)}  # fmt: skip
