"""Host pressure: PSI where present, else the load average; never raises on a broken /proc."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hidsd.agent.pressure import HostPressure, read_host_pressure

MEMINFO = """\
MemTotal:       16000000 kB
MemFree:         1000000 kB
MemAvailable:    4000000 kB
Buffers:          100000 kB
"""
PSI_CPU = """\
some avg10=12.50 avg60=3.00 avg300=1.00 total=123456
full avg10=0.00 avg60=0.00 avg300=0.00 total=0
"""
PSI_MEM = """\
some avg10=7.25 avg60=1.00 avg300=0.10 total=999
full avg10=2.00 avg60=0.50 avg300=0.00 total=500
"""


def fake_proc(
    root: Path,
    *,
    loadavg: str | None = "3.00 2.00 1.00 3/200 12345\n",
    meminfo: str | None = MEMINFO,
    psi_cpu: str | None = None,
    psi_mem: str | None = None,
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in (("loadavg", loadavg), ("meminfo", meminfo)):
        if text is not None:
            (root / name).write_text(text)
    if psi_cpu is not None or psi_mem is not None:
        (root / "pressure").mkdir()
        if psi_cpu is not None:
            (root / "pressure" / "cpu").write_text(psi_cpu)
        if psi_mem is not None:
            (root / "pressure" / "memory").write_text(psi_mem)
    return root


def test_psi_present(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, psi_cpu=PSI_CPU, psi_mem=PSI_MEM)
    assert read_host_pressure(proc, cpus=2) == HostPressure(12.5, 25.0, 7.25, "psi")


def test_without_psi_the_load_average_counts(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path)
    # load 3 on 2 CPUs: a third of the runnable tasks wait
    p = read_host_pressure(proc, cpus=2)
    assert p.source == "loadavg"
    assert p.cpu_pct == pytest.approx(100 / 3)
    assert p.mem_available_pct == 25.0
    assert p.mem_pressure_pct is None
    # a load below the CPU count is no pressure
    assert read_host_pressure(proc, cpus=4).cpu_pct == 0.0


def test_garbled_psi_falls_back_to_loadavg(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, psi_cpu="some avg10=lots\n", psi_mem=PSI_MEM)
    p = read_host_pressure(proc, cpus=2)
    assert p.source == "loadavg"
    assert p.cpu_pct == pytest.approx(100 / 3)
    assert p.mem_pressure_pct is None


def test_garbled_psi_memory_only_loses_that_figure(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, psi_cpu=PSI_CPU, psi_mem="full avg10=1.00\n")
    assert read_host_pressure(proc, cpus=2) == HostPressure(12.5, 25.0, None, "psi")


@pytest.mark.parametrize(
    ("loadavg", "meminfo", "cpu", "avail"),
    [
        ("garbage", MEMINFO, 0.0, 25.0),
        (None, MEMINFO, 0.0, 25.0),
        ("3.0 2.0 1.0 1/1 1", "MemTotal: 100 kB\n", 100 / 3, 100.0),  # no MemAvailable
        ("3.0 2.0 1.0 1/1 1", "MemTotal: x kB\nMemAvailable: 1 kB\n", 100 / 3, 100.0),
        ("3.0 2.0 1.0 1/1 1", None, 100 / 3, 100.0),
        (None, None, 0.0, 100.0),
    ],
)
def test_unreadable_figures_are_neutral_and_flagged(
    tmp_path: Path, loadavg: str | None, meminfo: str | None, cpu: float, avail: float
) -> None:
    p = read_host_pressure(fake_proc(tmp_path, loadavg=loadavg, meminfo=meminfo), cpus=2)
    assert p.source == "unavailable"
    assert p.cpu_pct == pytest.approx(cpu)
    assert p.mem_available_pct == pytest.approx(avail)


def test_missing_proc_root_does_not_raise(tmp_path: Path) -> None:
    assert read_host_pressure(tmp_path / "nope") == HostPressure(0.0, 100.0, None, "unavailable")


def test_real_proc() -> None:
    p = read_host_pressure()
    assert p.source == ("psi" if os.path.exists("/proc/pressure/cpu") else "loadavg")
    assert 0.0 <= p.cpu_pct <= 100.0
    assert 0.0 < p.mem_available_pct <= 100.0
    if p.source == "loadavg":
        assert p.mem_pressure_pct is None
