"""Fleet queries on the controller side: the merge of every controller's share into one answer
(pure)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping

from hidsd.wire.fleetquery import (
    HostAnswer,
    NoAnswer,
    PackageMatch,
    QueryCounts,
    QueryResult,
    QueryShare,
    Shard,
)
from hidsd.wire.replies import Liveness


def merge_query(
    results: Mapping[str, QueryShare],
    how: Mapping[str, str],
    liveness: Mapping[str, Liveness],
    max_age: float,
    started: float,
    now: float,
) -> QueryResult:
    """Merge the shares into one answer that accounts for every known host (the indexed ones
    and those presence knows): matched, clean, or no answer and why."""
    evaluated: dict[str, float | None] = {}
    matches: dict[str, tuple[PackageMatch, ...]] = {}
    uncomparable: dict[str, tuple[tuple[str, str], ...]] = {}
    counters: Counter[str] = Counter()
    shards = []
    for mid, res in results.items():
        evaluated.update(res.evaluated)
        matches.update(res.matches)
        uncomparable.update(res.uncomparable)
        counters.update(res.counters)
        shards.append(Shard(mid, res.controller, len(res.evaluated), how.get(mid, "?")))
    universe = sorted(set(evaluated) | set(liveness))
    matched: list[HostAnswer] = []
    clean: list[HostAnswer] = []
    no_answer: list[NoAnswer] = []
    for host in universe:
        live = liveness.get(host, Liveness.UNKNOWN)
        at = evaluated.get(host)
        if at is None:
            no_answer.append(NoAnswer(host, live, "no inventory reported"))
            continue
        age = round(now - at, 1)
        if live is Liveness.ONLINE and age > max_age:
            no_answer.append(NoAnswer(host, live, f"inventory {age:.0f}s old, over max age "
                                                  f"{max_age:.0f}s", age))  # fmt: skip
            continue
        if host not in matches and host in uncomparable:
            what = ", ".join(f"{p} {v}" for p, v in uncomparable[host])
            no_answer.append(NoAnswer(host, live, f"cannot compare installed {what} with the "
                                                  "range", age))  # fmt: skip
            continue
        if host in matches:
            matched.append(HostAnswer(host, live, age, matches[host]))
        else:
            clean.append(HostAnswer(host, live, age))
    answered = matched + clean
    counts = QueryCounts(
        hosts=len(universe),
        answered=len(answered),
        matched=len(matched),
        clean=len(clean),
        offline_answered=sum(r.liveness is not Liveness.ONLINE for r in answered),
        no_answer=len(no_answer),
    )
    return QueryResult(tuple(matched), tuple(clean), tuple(no_answer), counts, tuple(shards),
                       dict(counters), complete=not no_answer,
                       elapsed_ms=round((time.monotonic() - started) * 1000, 2))  # fmt: skip
