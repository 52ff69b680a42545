"""Figures of `benchmarks/controller_scale.py`: one phase's samples summed up, the CPU cost
model from the paced phases, the cost of decoding one heartbeat here, and the summary table."""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from typing import Any

from harness.report import fmt

from hidsd.wire.heartbeat import PluginReport, decode_heartbeat
from hidsd.wire.status import StatsShare


@dataclass
class Sample:
    """Every controller's own stats (`ctlpeer.<id>.stats`) at `t` seconds into the load,
    with the CPU seconds of every process and the machine's busy seconds then."""

    t: float
    latency: float
    rows: dict[str, StatsShare]
    cpu: dict[str, float | None]
    busy: float

    def count(self, name: str, key: str) -> int:
        return int(self.rows[name].counters.get(key, 0))

    def cluster(self, name: str, key: str) -> int:
        return int(self.rows[name].cluster.get(key, 0))

    def msgs(self, name: str) -> int:
        return self.count(name, "heartbeats") + self.count(name, "acks")

    def forwarded_in(self, name: str) -> int:
        return self.count(name, "heartbeats_forwarded_in") + self.count(name, "acks_forwarded_in")

    def total(self) -> int:
        return sum(self.msgs(n) for n in self.rows)

    def cpu_s(self, name: str) -> float:
        return self.cpu.get(name) or 0.0


def summarize(k: int, seconds: float, ctl: list[str], others: list[str], samples: list[Sample],
              end: Sample, done: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """The figures over the steady window: from the first sample at least 1 s into the load
    to the last one answered before it stopped (a sample's counters are those the controller
    had when it answered, so reply times bound the window); offered vs counted and the
    replication over the whole phase, to the end of the drain."""
    inside = [x for x in samples[1:] if x.t <= seconds]
    first = next((x for x in inside if x.t >= 1.0), samples[0])
    last = inside[-1] if inside and inside[-1] is not first else end
    window = max(1e-9, last.t - first.t)
    s0 = samples[0]
    per = []
    for name in ctl:
        got = last.msgs(name) - first.msgs(name)
        per.append({
            "name": name, "msgs": got, "msgs_per_s": round(got / window),
            "heartbeats": last.count(name, "heartbeats") - first.count(name, "heartbeats"),
            "acks": last.count(name, "acks") - first.count(name, "acks"),
            "forwarded_in_per_s": round((last.forwarded_in(name) - first.forwarded_in(name))
                                        / window),
            "cpu_pct": round((last.cpu_s(name) - first.cpu_s(name)) / window * 100, 1),
        })  # fmt: skip
    absorbed = sum(x["msgs"] for x in per)
    ctl_cpu = sum(last.cpu_s(n) - first.cpu_s(n) for n in ctl)
    cores = os.cpu_count() or 1
    busy = (last.busy - first.busy) / window / cores
    ours = sum(last.cpu_s(n) - first.cpu_s(n) for n in ctl + others) / window
    offered = sum(x["heartbeats"] + x["acks"] for x in done)
    counted = end.total() - s0.total()
    fwd_in = sum(end.forwarded_in(n) - s0.forwarded_in(n) for n in end.rows)
    owed = (k - 1) * counted
    gen_elapsed = max((x["elapsed_s"] for x in done), default=seconds)
    return {
        "controllers": k, "msgs_per_s": round(absorbed / window),
        "window_s": [round(first.t, 2), round(last.t, 2)],
        "msgs_per_controller_cpu_s": round(absorbed / ctl_cpu) if ctl_cpu else None,
        "controllers_cpu_pct": round(ctl_cpu / window * 100, 1),
        "machine_busy_pct": round(busy * 100, 1),
        "foreign_cpu_pct": round(max(0.0, busy * cores - ours) * 100, 1),
        "cpu_pct": {n: round((last.cpu_s(n) - first.cpu_s(n)) / window * 100, 1) for n in others},
        "per_controller": per, "offered": offered,
        "offered_per_s": round(offered / gen_elapsed) if gen_elapsed else None,
        "counted": counted, "drained_after_stop": end.total() - samples[-1].total(),
        "lost": offered - counted,
        "replication": {
            "owed": owed, "applied": fwd_in, "missing": owed - fwd_in,
            "missing_frac": round(1 - fwd_in / owed, 4) if owed else 0.0,
            "items_lost_sending": sum(end.cluster(n, "sync_lost_items")
                                      - s0.cluster(n, "sync_lost_items") for n in end.rows),
        },
        "generators": done,
        "timeline": [{"t_s": round(y.t, 2), "request_ms": round(y.latency * 1000, 1),
                      "msgs_per_s": round((y.total() - x.total()) / max(1e-9, y.t - x.t))}
                     for x, y in itertools.pairwise(samples)],
    }  # fmt: skip


def cost_model(paced: list[dict[str, Any]]) -> dict[str, Any]:
    """CPU per received message and per applied forwarded copy, from the paced runs (below
    saturation, so nothing else limits), and what K controllers with a core each would absorb
    if every copy were applied: K / (c_recv + (K - 1) * c_fwd)."""
    one = next((r for r in paced if r["controllers"] == 1), None)
    if one is None or not one["msgs_per_s"]:
        return {}
    c_recv = one["controllers_cpu_pct"] / 100 / one["msgs_per_s"]
    fwd = {}
    for r in paced:
        fin = sum(p["forwarded_in_per_s"] for p in r["per_controller"])
        if r["controllers"] > 1 and fin:
            c = (r["controllers_cpu_pct"] / 100 - r["msgs_per_s"] * c_recv) / fin
            fwd[str(r["controllers"])] = round(c * 1e6, 1)
    if not fwd:
        return {"recv_us": round(c_recv * 1e6, 1)}
    c_fwd = sum(fwd.values()) / len(fwd) / 1e6
    return {
        "recv_us": round(c_recv * 1e6, 1), "forwarded_copy_us": fwd,
        "forwarded_copy_us_mean": round(c_fwd * 1e6, 1),
        "projected_msgs_per_s_one_core_each": {
            str(k): round(k / (c_recv + (k - 1) * c_fwd)) for k in (1, 2, 3, 4, 6, 8)
        } if c_fwd > 0 else {},
        "asymptote_msgs_per_s": round(1 / c_fwd) if c_fwd > 0 else None,
        "note": "each controller applies every message of the fleet (its own once, the others' "
                "as forwarded copies), so adding controllers approaches 1 / c_fwd; a "
                "projection from CPU costs measured at the paced rate, not a measurement",
    }  # fmt: skip


def decode_cost(heartbeat: bytes, rounds: int = 2000) -> dict[str, Any]:
    """What the controller's first step costs, measured here: `decode_heartbeat` of one
    generated heartbeat, and the share of it in `PluginReport.from_wire` (its plugin maps)."""
    from hidsd.wire.codec import unpack

    t0 = time.perf_counter()
    for _ in range(rounds):
        decode_heartbeat(heartbeat)
    total = (time.perf_counter() - t0) / rounds
    plugins = unpack(heartbeat, "heartbeat")["plugins"]
    t0 = time.perf_counter()
    for _ in range(rounds):
        for m in plugins.values():
            PluginReport.from_wire(m)
    part = (time.perf_counter() - t0) / rounds
    return {"decode_heartbeat_us": round(total * 1e6, 1),
            "plugin_report_from_wire_us": round(part * 1e6, 1),
            "plugin_share": round(part / total, 2) if total else None,
            "note": "in the coordinator's process, one heartbeat decoded again and again: a "
                    "floor for the controller's receive cost (it also applies and "
                    "forwards)"}  # fmt: skip


COLS = ("K", "phase", "absorbed/s", "offered/s", "ctl CPU %", "per ctl CPU %", "nats CPU %",
        "load CPU %", "busy %", "other CPU %", "msgs/ctl-CPU-s", "fwd in/s", "repl. missing",
        "lost")  # fmt: skip


def print_summary(r: dict[str, Any]) -> None:
    rows = []
    for run in r["runs"] + r["paced"]:
        per = run["per_controller"]
        load = sum(v for k, v in run["cpu_pct"].items() if k.startswith("worker-"))
        rows.append((
            str(run["controllers"]), run["phase"], fmt(run["msgs_per_s"], ""),
            fmt(run["offered_per_s"], ""), f"{run['controllers_cpu_pct']:.0f}",
            "/".join(f"{p['cpu_pct']:.0f}" for p in per),
            f"{run['cpu_pct'].get('nats_server', 0):.0f}", f"{load:.0f}",
            f"{run['machine_busy_pct']:.0f}", f"{run['foreign_cpu_pct']:.0f}",
            fmt(run["msgs_per_controller_cpu_s"], ""),
            fmt(sum(p["forwarded_in_per_s"] for p in per), ""),
            f"{run['replication']['missing_frac']:.1%}", fmt(run["lost"], ""),
        ))  # fmt: skip
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(COLS)]
    p = r["params"]
    print(f"\nhidsd controller scale-out, {p['seconds']:.0f} s per phase, {p['hosts']:,} hosts, "
          f"{r['machine']['cpus']} CPUs; msgs_per_s {r['msgs_per_s']} (x {r['ratio_to_first']})"
          + (" (quick: figures not comparable)" if r["quick"] else ""))  # fmt: skip
    line = "  ".join(c.rjust(w) for c, w in zip(COLS, widths, strict=True))
    print("-" * len(line), line, "-" * len(line), sep="\n")
    for row in rows:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
    print("-" * len(line))
    m, d = r["cost_model"], r["decode_cost"]
    print(f"receive cost {m.get('recv_us', 'n/a')} us/msg (paced, K=1); forwarded copy "
          f"{m.get('forwarded_copy_us_mean', 'n/a')} us; decode_heartbeat here "
          f"{d['decode_heartbeat_us']} us ({d['plugin_share']:.0%} in PluginReport.from_wire); "
          f"heartbeat {r['heartbeat_bytes']} B, ack {r['ack_bytes']} B")  # fmt: skip
