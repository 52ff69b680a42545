"""loadgen: a load and fault generator for the telemetry path (benchmarks, tests, drills).

Params: `rate` records/s (0 = as fast as the pipe takes them), `size` payload bytes,
`count` records then idle (0 = unlimited), `batch` frames per write, and faults:
`garbage_after` (write bytes that are not a frame after N records), `die_after` (exit after
N records), `die_mid_frame` (exit halfway through a frame after N records).
"""

from __future__ import annotations

import os
import time

from hidsd.plugins.sdk import Plugin

LOADGEN_RECORD = 900


def main() -> None:
    plugin = Plugin("loadgen")
    p = plugin.wait_configured()
    rate = float(p.get("rate", 0))
    size = int(p.get("size", 100))
    count = int(p.get("count", 0))
    batch = max(1, int(p.get("batch", 64)))
    garbage_after = int(p.get("garbage_after", 0))
    die_after = int(p.get("die_after", 0))
    die_mid = int(p.get("die_mid_frame", 0))
    filler = "x" * max(0, size - 24)
    sent = 0
    start = time.monotonic()
    while not plugin.stopping and (count == 0 or sent < count):
        n = batch if count == 0 else min(batch, count - sent)
        chunk = b"".join(
            plugin.encode(LOADGEN_RECORD, {"n": sent + i, "pad": filler}) for i in range(n)
        )
        plugin.write(chunk, n)
        sent += n
        if garbage_after and sent >= garbage_after:
            plugin.write(b"this is not a frame" * 4, 0)
            garbage_after = 0
        if die_after and sent >= die_after:
            os._exit(3)
        if die_mid and sent >= die_mid:
            frame = plugin.encode(LOADGEN_RECORD, {"n": sent, "pad": filler})
            plugin.write(frame[: len(frame) // 2], 0)
            os._exit(4)
        if rate > 0:
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0 and not plugin.wait(ahead):
                break
    while plugin.wait(1.0):
        pass


if __name__ == "__main__":
    main()
