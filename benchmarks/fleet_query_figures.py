"""Figures of `benchmarks/fleet_query.py`: per-query summaries and the printed summary."""

from __future__ import annotations

import statistics
from typing import Any

from harness.report import fmt, print_rows


def r2(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def summarize_queries(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by.setdefault(r["name"], []).append(r)
    out = []
    for name, rs in by.items():
        ok = [r for r in rs if r["ok"]]
        lat = [r["latency_ms"] for r in ok]
        last = ok[-1] if ok else rs[-1]
        out.append({"name": name, "runs": len(rs), "failed": len(rs) - len(ok),
                    "ranges": last.get("ranges"), "p50_ms": r2(statistics.median(lat)) if lat
                    else None, "max_ms": r2(max(lat)) if lat else None,
                    "controller_elapsed_ms_p50": r2(statistics.median(
                        [r["controller_elapsed_ms"] for r in ok])) if ok else None,
                    **{k: last.get(k) for k in ("reply_bytes", "reply_result_bytes", "counts",
                                                "counters", "shards")},
                    "complete": len(ok) == len(rs) and all(r["complete"] for r in ok),
                    "error": None if ok else last.get("error")})  # fmt: skip
    return out


def print_summary(r: dict[str, Any]) -> None:
    idx, m = r["index"], r["machine_during_queries"]
    rows = [
        ("agents (N)", fmt(r["agents"], "")), ("controllers (K)", fmt(r["controllers"], "")),
        (f"answered ({r['first_query']})", fmt(r["answered"], "")),
        (f"  of which offline ({r['offline_agents']} offline)", fmt(r["offline_answered"], "")),
        ("matched", fmt(r["matched"], "")),
        ("all queries complete", "yes" if r["complete"] else "NO"),
        (f"p50 latency ({r['queries']} queries)", fmt(r["p50_ms"])),
        ("p99 latency", fmt(r["p99_ms"])),
        ("controller-side p50", fmt(r["latency_ms"]["controller_elapsed_p50"])),
        ("hidsctl path p50 (connect + query)", fmt(r["hidsctl_path"]["p50_ms"])),
        ("index build, live (all controllers)", fmt(idx["live_build_s"], "s")),
        ("index rebuild, one new controller", fmt(idx["cold_rebuild"].get("index_complete_s"),
                                                   "s")),
        ("heartbeat bytes", fmt(r["heartbeat"]["bytes"], "")),
        ("machine during queries: busy / other", f"{m['busy_pct']:.0f}% / "
                                                 f"{m['foreign_cpu_pct']:.0f}% CPU"),
    ]  # fmt: skip
    print_rows(f"hidsd fleet query, N={r['agents']}, K={r['controllers']}", rows, r["quick"])
    print(f"{'query':<32} {'ranges':>6} {'p50 ms':>9} {'max ms':>9} {'matched':>8} "
          f"{'answered':>8} {'reply kB':>9}")  # fmt: skip
    for q in r["by_query"]:
        c = q["counts"] or {}
        print(f"{q['name']:<32} {q['ranges'] or '-':>6} {fmt(q['p50_ms'], ''):>9} "
              f"{fmt(q['max_ms'], ''):>9} {c.get('matched', '-'):>8} {c.get('answered', '-'):>8} "
              f"{(q['reply_bytes'] or 0) / 1000:>9.0f}"
              + (f"  FAILED: {q['error']}" if q["error"] else ""))  # fmt: skip
