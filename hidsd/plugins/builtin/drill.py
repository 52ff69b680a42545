"""drill: a plugin that misbehaves on purpose, for circuit-breaker drills and tests.

Params: `mode` = "burn" (busy-loop CPU for `duty` of each 100 ms, 0-1), "leak" (allocate and
touch `mb_per_s` MB per second up to `max_mb`, then hold it), "fds" (open descriptors until
its own table is full, or `max_fds`, then hold them) or "idle"; `after_s` seconds of
good behaviour first. It reports a STATUS record when it starts misbehaving, so a drill can
see the moment in the telemetry. Records for floods come from `loadgen`.
"""

from __future__ import annotations

import os
import time

from hidsd.plugins.builtin import Runner, run_main

_MB = 1 << 20


def _burn(r: Runner, duty: float) -> None:
    while not r.stopping:
        end = time.monotonic() + 0.1 * duty
        x = 0
        while time.monotonic() < end:
            x += 1
        if duty < 1.0:
            r.sleep(0.1 * (1.0 - duty))
        else:
            r.tasks()  # keep params current without sleeping


def _leak(r: Runner, mb_per_s: float, max_mb: float) -> None:
    held: list[bytearray] = []
    step = 0.1
    while not r.stopping:
        if len(held) < max_mb:
            want = min(max_mb, len(held) + mb_per_s * step)
            while len(held) < want:
                block = bytearray(_MB)
                for i in range(0, _MB, 4096):  # touch every page so it is resident
                    block[i] = 1
                held.append(block)
        r.sleep(step)


def _leak_fds(r: Runner, max_fds: int) -> None:
    held: list[int] = []
    while len(held) < max_fds:
        try:
            held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            break  # EMFILE: its own table is full; the agent's is not
    r.status("fds_exhausted", held=len(held))
    while not r.stopping:
        r.sleep(0.5)


def body(r: Runner) -> None:
    r.configure()
    mode = r.param_str("mode", "idle")
    after = r.param_float("after_s", 0.0, 0.0)
    if after:
        r.sleep(after)
    if r.stopping:
        return
    r.status("misbehaving", mode=mode)
    if mode == "burn":
        _burn(r, min(1.0, r.param_float("duty", 1.0, 0.01)))
    elif mode == "fds":
        _leak_fds(r, r.param_int("max_fds", 1 << 20, 1))
    elif mode == "leak":
        _leak(r, r.param_float("mb_per_s", 20.0, 0.1), r.param_float("max_mb", 1024.0, 1.0))
    else:
        while not r.stopping:
            r.sleep(None)


if __name__ == "__main__":
    raise SystemExit(run_main("drill", body))
