"""The kill-switch benchmark's notes and summary (`benchmarks/killswitch.py`)."""

from __future__ import annotations

from typing import Any

from harness.report import fmt, print_rows

NOTES = (
    "Every simulated host is a real hidsd.agent.app.Agent (harness SimFleet), not a lite agent: "
    "its own NATS connection, CommandService (verify, revision order, state file, work gate, "
    "heartbeat poke, ack), ConvergenceService (start read, resync on reconnect, etcd watch "
    "{watch}), config and plugin-state followers, HeartbeatService (every {heartbeat_s} s and "
    "on each mode change), breaker with cgroups off and no plugins, storage service. Not N "
    "hosts: {workers} worker processes of about {per_worker} agents, each on one uvloop loop, "
    "share {cpus} cores with nats-server, etcd and the coordinator over loopback (no TLS, no "
    "etcd auth). A worker's agents handle a broadcast or a watch event one after another, so "
    "first_ack, p50 and p99 include waiting behind up to {per_worker} others, which N hosts "
    "would not: all_acked_ms is close to the fleet's total CPU work divided by the cores (a "
    "throughput figure for this machine, not a per-host latency). A worker's agents share one "
    "etcd gRPC channel (each watch is its own stream: etcd counted {watchers} watchers, "
    "{desired} on desired-state keys) and one log level. Data dirs (state files) are under "
    "{data_dir} (tmpfs: N hosts have N disks). gc_freeze={gc_freeze}: the workers move the "
    "started agents out of the cyclic GC's reach. "
    "Kill switch: t0 just before the etcd record, made by hidsctl's own issue_command without "
    "a bus (one transaction: the signed desired state and the audit entry), then a raw signed "
    "broadcast on cmd.all with its revision; latency = first applied ack per host - t0 "
    "(published_ms says when the broadcast left). With the watch on, an agent may apply the "
    "stop from its etcd watch before the broadcast arrives (ack detail 'converged from etcd', "
    "then 'already applied' for the broadcast): first_ack_path counts each host's first ack by "
    "path, later_acks_path the second ones; --no-watch gives the NATS path alone. Against the "
    "lite-agent version: latencies start before the etcd record instead of at the publish "
    "(record_ms earlier), real agents do more per command (work gate, heartbeat poke, more "
    "subscriptions and watches), 'offline' agents are stopped as on SIGTERM and started again "
    "as a restarted host (fresh Agent, state file, start read, ack once connected) rather than "
    "a closed and reopened connection, the etcd-watch reference uses the agents' own watches "
    "(M = every agent, none with --no-watch) instead of extra ones, issue_command asks a real "
    "controller (presence from heartbeats) instead of a stub, and the StateFile save-cost "
    "probe is gone. floor_ms is the median of {floor_rounds} rounds with all N connections "
    "(floor.online_only: the connections of the kill switch); the kill switch is one shot. "
    "issue_command's first_ack_ms and elapsed_ms are its own (from its publish, after its etcd "
    "record); its expected set is what the controller, started for that phase, heard heartbeat."
)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 2)


def print_summary(r: dict[str, Any]) -> None:
    ks = r["killswitch"]
    rows = [
        ("agents (N)", fmt(r["agents"], "")),
        ("expected (online)", fmt(r["expected"], "")),
        ("acked (applied)", fmt(r["acked"], "")),
        ("etcd record (t0 -> written)", fmt(ks.get("record_ms"))),
        ("broadcast published", fmt(ks.get("published_ms"))),
        ("first ack", fmt(r["first_ack_ms"])),
        ("p50 ack", fmt(r["p50_ms"])),
        ("p99 ack", fmt(r["p99_ms"])),
        ("all acked", fmt(r["all_acked_ms"])),
        ("first acks by path", " ".join(f"{k}={v}" for k, v in r["first_ack_path"].items())),
        (f"offline converge ({r['offline_converged']}/{r['offline_agents']})",
         fmt(r["offline_converge_ms"])),
        ("floor (N empty replies)", fmt(r["floor_ms"])),
        ("floor (online only)", fmt(r["floor"]["online_only"]["all_ms_median"])),
        (f"etcd watch, all acked (M={r['etcd_watch_agents']})",
         fmt(r["etcd_watch_all_acked_ms"])),
        ("all acked / floor", fmt(r["ratios"]["all_acked_over_floor"], "x")),
        ("etcd watch / all acked", fmt(r["ratios"]["etcd_watch_over_all_acked"], "x")),
    ]  # fmt: skip
    issue = r.get("issue_command") or {}
    if issue:
        rows.append((f"hidsctl issue_command ({issue['acked']}/{issue['expected']})",
                     fmt(issue["elapsed_ms"])))  # fmt: skip
    title = (
        f"hidsd kill switch, N={r['agents']} (etcd watch {'on' if r['setup']['watch'] else 'off'})"
    )
    print_rows(title, rows, r["quick"])
    if r.get("cut"):
        print(f"cut (time budget): {', '.join(r['cut'])}")
