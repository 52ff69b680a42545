"""Figures of `benchmarks/telemetry_path.py`: the stream read back, a run's derived figures and
its stop accounting, the per-size row (the old result keys), the cProfile summary."""

from __future__ import annotations

import pstats
import statistics
from pathlib import Path
from typing import Any

import msgpack

from hidsd.bus.transport import Bus
from hidsd.wire import frames

#: frames that never enter a batch when dropped (the others were batched first)
UNBATCHED_DROPS = ("dropped_queue_full", "dropped_rate_limit")


def per_10k_ms(cpu_s: float, records: int) -> float | None:
    return round(cpu_s * 1000 * 10_000 / records, 2) if records > 0 else None


async def inspect_stream(bus: Bus, stream: str) -> dict[str, Any]:
    """Stream totals, and the last stored batch split back into frames (its sequence headers
    say how many records the stream holds: order is kept and sequences start at 1)."""
    js = bus.client.jetstream(timeout=30)
    st = (await js.stream_info(stream)).state
    out: dict[str, Any] = {"stream_messages": st.messages, "stream_bytes": st.bytes,
                           "stored_records": 0}  # fmt: skip
    if not st.messages:
        return out
    msg = await js.get_msg(stream, seq=st.last_seq)
    body, headers = msg.data or b"", msg.headers or {}
    parts = list(frames.iter_frames(body))
    sizes = [len(p) for _, p in parts]
    record = msgpack.unpackb(parts[-1][1], raw=False) if parts else None
    count = int(headers.get(frames.H_COUNT, "-1"))
    out.update(
        stored_records=int(headers.get(frames.H_SEQ, "0")) + count - 1,
        stored_epoch=int(headers.get(frames.H_EPOCH, "0")),
        last_batch_frames=len(parts), last_batch_count_header=count,
        last_batch_body_bytes=len(body),
        payload_bytes=round(statistics.fmean(sizes), 1) if sizes else None,
        payload_bytes_min=min(sizes, default=None), payload_bytes_max=max(sizes, default=None),
        frame_bytes=round(statistics.fmean(sizes) + frames.HEADER_SIZE, 1) if sizes else None,
        frame_bytes_max=max(sizes, default=0) + frames.HEADER_SIZE,
        last_record_keys=sorted(record) if isinstance(record, dict) else None,
        last_record_pad_chars=len(record.get("pad", "")) if isinstance(record, dict) else None,
        intact=len(parts) == count,
    )  # fmt: skip
    return out


def stop_accounting(r: dict[str, Any]) -> dict[str, Any]:
    """A run's derived figures, and every frame the pipeline counted checked against the
    stream and the spool after the supervisor stopped the plugin."""
    c = {k.removeprefix("tel."): v for k, v in r["counters"].items() if k.startswith("tel.")}
    drops = {k: v for k, v in c.items() if k.startswith("dropped_")}
    batched = int(c["next_seq"]) - 1  # every frame put in a batch, saved ones included
    stored = int(r["stored_records"]) if r.get("stored_epoch", r["epoch"]) == r["epoch"] else 0
    spool = [(int(s), int(n)) for s, n in r["spool"]]
    both = sum(n for s, n in spool if s + n - 1 <= stored)
    records = int(r["records"])
    acct = {
        "frames_in": c["frames_in"], "batched": batched, "stored_records": stored,
        "spool_records": sum(n for _, n in spool), "spool_batches": len(spool),
        "records_out": c["records_out"], "spooled_records": c["spooled_records"],
        # counted in by offer, but in no batch and not dropped: lost without a count
        "lost_uncounted": c["frames_in"] - batched - sum(c.get(k, 0) for k in UNBATCHED_DROPS),
        # stored by JetStream (its ack cancelled, or seen) and also saved to the spool by the
        # stop: resent when the plugin runs again, then de-duplicated by its message id
        "stored_and_spooled": both,
        # counted as acknowledged and as spooled (or dropped) too: over-counted records
        "counted_twice": c["records_out"] + c["spooled_records"] - batched
        + c.get("dropped_spool_full", 0) + c.get("dropped_not_publishable", 0),
        # batched frames neither stored nor in the spool nor counted as dropped after batching
        "batched_unaccounted": batched - stored - sum(n for _, n in spool) + both
        - c.get("dropped_spool_full", 0) - c.get("dropped_not_publishable", 0),
    }  # fmt: skip
    return {
        "agent_cpu_ms_per_10k": per_10k_ms(r["agent_cpu_s"], records),
        "plugin_cpu_ms_per_10k": per_10k_ms(r["plugin_cpu_s"], records),
        "nats_cpu_ms_per_10k": per_10k_ms(r["nats_cpu_s"], records),
        "batches_per_s": round(r["batches"] / r["window_s"], 1),
        "mean_batch_records": round(records / r["batches"], 1) if r["batches"] else 0,
        "drops": drops,
        "publish_failures": c.get("publish_failures", 0),
        "unsent_at_stop": c["frames_in"] - c["records_out"] - c["spooled_records"]
        - sum(drops.values()),
        "stop_accounting": acct,
    }  # fmt: skip


def row_for(size: int, got: dict[str, Any], profiles: dict[str, Any]) -> dict[str, Any]:
    """One record size: the best run of each variant under the old keys."""
    d, e = got["best"]["direct"], got["best"]["reencode"]
    runs = got["runs"]
    drops: dict[str, int] = {}
    for r in runs:
        for k, v in r["drops"].items():
            drops[k] = drops.get(k, 0) + int(v)
    accts = [r["stop_accounting"] for r in runs]
    row: dict[str, Any] = {
        "record_bytes": size,
        "records_per_s": d["records_per_s"], "reencode_records_per_s": e["records_per_s"],
        "agent_cpu_ms_per_10k": d["agent_cpu_ms_per_10k"],
        "reencode_agent_cpu_ms_per_10k": e["agent_cpu_ms_per_10k"],
        "records_per_s_median": d["records_per_s_median"],
        "reencode_records_per_s_median": e["records_per_s_median"],
        "repeats": d["repeats"],
        "agent_cpu_util": d["agent_cpu_util"], "reencode_agent_cpu_util": e["agent_cpu_util"],
        "mean_queued": d["mean_queued"], "mean_ready_batches": d["mean_ready_batches"],
        "encode_once_speedup": round(d["records_per_s"] / e["records_per_s"], 2),
        "reencode_cpu_ratio": round(e["agent_cpu_ms_per_10k"] / d["agent_cpu_ms_per_10k"], 2),
        "payload_bytes": d.get("payload_bytes"), "frame_bytes": d.get("frame_bytes"),
        "batch_max_records": d["batch_max_records"],
        "reencode_batch_max_records": e["batch_max_records"],
        "batches": d["batches"], "batches_per_s": d["batches_per_s"],
        "mean_batch_records": d["mean_batch_records"],
        "plugin_cpu_ms_per_10k": d["plugin_cpu_ms_per_10k"],
        "nats_cpu_ms_per_10k": d["nats_cpu_ms_per_10k"],
        "reencode_plugin_cpu_ms_per_10k": e["plugin_cpu_ms_per_10k"],
        "reencode_nats_cpu_ms_per_10k": e["nats_cpu_ms_per_10k"],
        "drops": drops,
        "publish_failures": sum(int(r["publish_failures"]) for r in runs),
        "max_unsent_at_stop": max(int(r["unsent_at_stop"]) for r in runs),
        "stop_accounting": {
            "max_lost_uncounted": max(a["lost_uncounted"] for a in accts),
            "runs_lost_uncounted": sum(1 for a in accts if a["lost_uncounted"]),
            "max_stored_and_spooled": max(a["stored_and_spooled"] for a in accts),
            "runs_stored_and_spooled": sum(1 for a in accts if a["stored_and_spooled"]),
            "max_counted_twice": max(a["counted_twice"] for a in accts),
            "runs_counted_twice": sum(1 for a in accts if a["counted_twice"]),
            "max_batched_unaccounted": max(abs(a["batched_unaccounted"]) for a in accts),
            "max_stop_s": max(r["stop_s"] for r in runs),
        },
        "batch_sizes_tried": sorted({int(r["batch_max_records"]) for r in runs}),
        "batch_sizes_skipped": got["skipped"],
        "runs": [{k: v for k, v in r.items() if k != "profile"} for r in runs],
    }  # fmt: skip
    if profiles:
        row["profile"] = profiles
    return row


def profile_summary(path: Path, top: int) -> dict[str, Any]:
    """The agent's hottest functions (own time) and the biggest cumulative ones."""
    raw: dict[Any, Any] = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    total = sum(tt for (_cc, _nc, tt, _ct, _callers) in raw.values())

    def where(key: tuple[str, int, str]) -> str:
        file, line, func = key
        for marker in ("site-packages/", "/hidsd/", "lib/python3.11/"):
            if marker in file:
                file = file.split(marker, 1)[1]
                break
        return f"{file}:{line}({func})"

    def row(key: Any, value: Any) -> dict[str, Any]:
        _cc, nc, tt, ct, _callers = value
        return {"where": where(key), "calls": nc, "tottime_s": round(tt, 4),
                "tottime_pct": round(100 * tt / total, 1) if total else None,
                "cumtime_s": round(ct, 4)}  # fmt: skip

    by_tt = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    by_ct = sorted(raw.items(), key=lambda kv: kv[1][3], reverse=True)[:top]
    return {"total_tottime_s": round(total, 3), "by_tottime": [row(k, v) for k, v in by_tt],
            "by_cumtime": [row(k, v) for k, v in by_ct]}  # fmt: skip
