"""Resource control: discovery, cgroup v2 (fake tree), cgroup v1 (real, as root), psutil.

This machine has cgroup v1 for cpu and memory and a v2 hierarchy without those controllers, so
v2 is exercised only against a fake tree of regular files: that checks which files get which
values in which order, not what the kernel makes of them. The v1 tests use the real kernel
(they skip, saying why, without root or writable v1 hierarchies); they never move the pytest
process: a `sleep` child plays the agent and shims play plugins.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from hidsd.plugins.cgroups import (
    Accounting,
    CgroupError,
    CgroupMount,
    Limits,
    PsutilControl,
    ResourceControl,
    Usage,
    open_resource_control,
    own_cgroup_dirs,
    parse_mountinfo,
    parse_proc_cgroup,
)

MIB = 1 << 20

# ---------------------------------------------------------------------------------------------
# Discovery

# this machine: v1 controllers on separate mounts, an empty v2 at /sys/fs/cgroup/unified
MOUNTINFO_V1_SEPARATE = """\
22 1 0:20 / /sys rw,nosuid - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
CGROUP_V1_SEPARATE = """\
9:name=systemd:/
4:memory:/process_api/abc
2:cpuacct:/
1:cpu:/
0::/
"""

# systemd "hybrid" (e.g. Ubuntu 20.04): cpu,cpuacct co-mounted, v2 at unified for systemd only
MOUNTINFO_HYBRID = """\
25 18 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:14 - cgroup cgroup rw,cpu,cpuacct
33 25 0:31 / /sys/fs/cgroup/memory rw,nosuid shared:17 - cgroup cgroup rw,memory
"""  # noqa: E501
CGROUP_HYBRID = """\
12:memory:/system.slice/hidsd.service
4:cpu,cpuacct:/system.slice/hidsd.service
1:name=systemd:/system.slice/hidsd.service
0::/system.slice/hidsd.service
"""

# pure v2 (systemd, Delegate=yes)
MOUNTINFO_V2 = """\
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
"""  # noqa: E501
CGROUP_V2 = "0::/system.slice/hidsd.service\n"


def test_parse_proc_cgroup() -> None:
    assert parse_proc_cgroup(CGROUP_HYBRID) == {
        "memory": "/system.slice/hidsd.service",
        "cpu": "/system.slice/hidsd.service",
        "cpuacct": "/system.slice/hidsd.service",
        "name=systemd": "/system.slice/hidsd.service",
        "": "/system.slice/hidsd.service",
    }
    assert parse_proc_cgroup("garbage\n0::/a:b\n") == {"": "/a:b"}


def test_v1_separate_mounts_like_this_machine(tmp_path: Path) -> None:
    mounts = parse_mountinfo(MOUNTINFO_V1_SEPARATE, tmp_path)
    assert [m.mount_point for m in mounts] == [
        tmp_path / "cpu",
        tmp_path / "cpuacct",
        tmp_path / "memory",
        tmp_path / "systemd",
        tmp_path / "unified",
    ]
    v2, v1 = own_cgroup_dirs(mounts, parse_proc_cgroup(CGROUP_V1_SEPARATE))
    assert v2 == tmp_path / "unified"
    assert v1 == {
        "cpu": tmp_path / "cpu",
        "cpuacct": tmp_path / "cpuacct",
        "memory": tmp_path / "memory" / "process_api" / "abc",
    }


def test_v1_comounted_cpu_cpuacct(tmp_path: Path) -> None:
    v2, v1 = own_cgroup_dirs(
        parse_mountinfo(MOUNTINFO_HYBRID, tmp_path), parse_proc_cgroup(CGROUP_HYBRID)
    )
    svc = Path("system.slice/hidsd.service")
    assert v2 == tmp_path / "unified" / svc
    assert v1["cpu"] == v1["cpuacct"] == tmp_path / "cpu,cpuacct" / svc
    assert v1["memory"] == tmp_path / "memory" / svc


def test_pure_v2(tmp_path: Path) -> None:
    v2, v1 = own_cgroup_dirs(parse_mountinfo(MOUNTINFO_V2, tmp_path), parse_proc_cgroup(CGROUP_V2))
    assert v2 == tmp_path / "system.slice" / "hidsd.service"
    assert v1 == {}


def test_container_subtree_mounts_and_escapes() -> None:
    text = (
        "40 31 0:37 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
        "41 31 0:38 / /mnt/my\\040cgroups rw - cgroup cgroup rw,memory\n"
    )
    v2m, v1m = parse_mountinfo(text)
    assert v2m == CgroupMount(Path("/sys/fs/cgroup"), "/docker/abc", 2, frozenset())
    assert v1m.mount_point == Path("/mnt/my cgroups")
    assert v2m.resolve("/docker/abc") == Path("/sys/fs/cgroup")
    assert v2m.resolve("/docker/abc/x") == Path("/sys/fs/cgroup/x")
    assert v2m.resolve("/docker/abcd") is None  # not under the mounted subtree
    assert v2m.resolve("/../other") is None  # outside our cgroup namespace


# ---------------------------------------------------------------------------------------------
# Choosing a mode (fake trees)


def fake_system(tmp_path: Path, mountinfo: str, cgroup: str) -> tuple[Path, Path]:
    """A fake /proc (self and pid 4242 share `cgroup`) and an empty cgroup root."""
    proc, cg = tmp_path / "proc", tmp_path / "cg"
    for d in ("self", "4242"):
        (proc / d).mkdir(parents=True)
        (proc / d / "cgroup").write_text(cgroup)
    (proc / "self" / "mountinfo").write_text(mountinfo)
    cg.mkdir()
    return proc, cg


def fake_v2_own(cg: Path, *, controllers: str = "cpu io memory pids", procs: str = "") -> Path:
    own = cg / "system.slice" / "hidsd.service"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text(controllers + "\n")
    (own / "cgroup.subtree_control").write_text("\n")
    (own / "cgroup.procs").write_text(procs)
    (own / "cgroup.type").write_text("domain\n")
    return own


def test_mode_off_and_unknown() -> None:
    rc = open_resource_control("off")
    assert rc.mode is Accounting.PSUTIL
    assert rc.detail == "cgroups off by config"
    with pytest.raises(CgroupError):
        open_resource_control("systemd")


def test_auto_prefers_v2_with_controllers(tmp_path: Path) -> None:
    proc, cg = fake_system(tmp_path, MOUNTINFO_V2, CGROUP_V2)
    own = fake_v2_own(cg)
    rc = open_resource_control(cgroup_root=cg, proc_root=proc)
    assert rc.mode is Accounting.CGROUP_V2
    assert rc.detail == str(own / "hidsd")
    assert not (own / "hidsd").exists()  # nothing created before setup()


def test_auto_hybrid_without_v2_controllers_takes_v1(tmp_path: Path) -> None:
    proc, cg = fake_system(tmp_path, MOUNTINFO_HYBRID, CGROUP_HYBRID)
    svc = Path("system.slice/hidsd.service")
    (cg / "unified" / svc).mkdir(parents=True)
    (cg / "unified" / svc / "cgroup.controllers").write_text("\n")
    (cg / "unified" / svc / "cgroup.subtree_control").write_text("\n")
    for h in ("cpu,cpuacct", "memory"):
        (cg / h / svc).mkdir(parents=True)
    rc = open_resource_control(cgroup_root=cg, proc_root=proc)
    assert rc.mode is Accounting.CGROUP_V1
    assert rc.detail == f"cpu,cpuacct={cg / 'cpu,cpuacct' / svc / 'hidsd'}, " + (
        f"memory={cg / 'memory' / svc / 'hidsd'}"
    )
    with pytest.raises(CgroupError, match="no cpu,memory controller"):
        open_resource_control("cgroup-v2", cgroup_root=cg, proc_root=proc)


def test_auto_falls_back_to_psutil_and_says_why(tmp_path: Path) -> None:
    # like this machine, but nothing exists under the fake mount points: every mkdir fails
    proc, cg = fake_system(tmp_path, MOUNTINFO_V1_SEPARATE, CGROUP_V1_SEPARATE)
    (cg / "unified").mkdir()
    (cg / "unified" / "cgroup.controllers").write_text("hugetlb\n")
    (cg / "unified" / "cgroup.subtree_control").write_text("\n")
    rc = open_resource_control(cgroup_root=cg, proc_root=proc)
    assert rc.mode is Accounting.PSUTIL
    assert "cgroup v2" in rc.detail
    assert "no cpu,memory controller (available: hugetlb)" in rc.detail
    assert "cgroup v1 cpu not writable: [Errno 2]" in rc.detail
    assert isinstance(rc, PsutilControl)
    with pytest.raises(CgroupError, match="not writable"):
        open_resource_control("cgroup-v1", cgroup_root=cg, proc_root=proc)


def test_v2_refused_when_other_processes_share_our_cgroup(tmp_path: Path) -> None:
    proc, cg = fake_system(tmp_path, MOUNTINFO_V2, CGROUP_V2)
    fake_v2_own(cg, procs=f"{os.getpid()}\n1\n")
    rc = open_resource_control(cgroup_root=cg, proc_root=proc)
    assert rc.mode is Accounting.PSUTIL
    assert "no internal processes" in rc.detail


# ---------------------------------------------------------------------------------------------
# cgroup v2 writes (fake tree: the only way to exercise v2 on this machine)


def test_v2_layout_limits_weights_usage_teardown(tmp_path: Path) -> None:
    proc, cg = fake_system(tmp_path, MOUNTINFO_V2, CGROUP_V2)
    own = fake_v2_own(cg)
    root = own / "hidsd"
    # a root left by a crashed run: reused; its empty stale plugin cgroup goes, a busy one stays
    (root / "plugins" / "stale").mkdir(parents=True)
    (root / "plugins" / "busy").mkdir()
    (root / "plugins" / "busy" / "cgroup.procs").write_text("99\n")
    (root / "memory.swap.max").write_text("max\n")
    rc = open_resource_control("cgroup-v2", cgroup_root=cg, proc_root=proc)
    rc.apply_limits(Limits(cpu_quota_pct=20, memory_max_mb=512, memory_high_mb=384))
    assert not (root / "memory.max").exists()  # kept until setup()
    rc.setup(pid=4242)

    def read(p: Path) -> str:
        return p.read_text()

    assert read(root / "agent" / "cgroup.procs") == "4242"
    for d in (own, root, root / "plugins"):
        assert read(d / "cgroup.subtree_control") == "+cpu +memory"
    assert not (root / "plugins" / "stale").exists()
    assert (root / "plugins" / "busy").is_dir()
    assert read(root / "plugins" / "cpu.max") == "20000 100000"
    assert read(root / "memory.max") == str(512 * MIB)
    assert read(root / "memory.high") == str(384 * MIB)
    assert read(root / "memory.swap.max") == "0"
    assert read(root / "plugins" / "busy" / "memory.max") == str(256 * MIB)

    assert rc.plugin_join_paths("fim") == [str(root / "plugins" / "fim" / "cgroup.procs")]
    assert read(root / "plugins" / "fim" / "memory.max") == str(256 * MIB)
    with pytest.raises(CgroupError):
        rc.plugin_join_paths("../escape")
    rc.set_plugin_weight("fim", 0.1)
    assert read(root / "plugins" / "fim" / "cpu.weight") == "10"
    rc.set_plugin_weight("fim", 0.001)
    assert read(root / "plugins" / "fim" / "cpu.weight") == "1"
    rc.set_plugin_weight("not-running", 0.1)  # no cgroup: nothing to do

    rc.apply_limits(Limits(0, 0, 0, 0))
    assert read(root / "plugins" / "cpu.max") == "max 100000"
    assert read(root / "memory.max") == "max"
    assert read(root / "memory.high") == "max"
    assert read(root / "memory.swap.max") == "max"
    assert read(root / "plugins" / "fim" / "memory.max") == "max"
    with pytest.raises(CgroupError):
        rc.apply_limits(Limits(cpu_quota_pct=-1))

    # usage: what the kernel would show
    (root / "agent" / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\n")
    (root / "agent" / "memory.current").write_text(f"{10 * MIB}\n")
    (root / "agent" / "memory.stat").write_text(f"anon 1\ninactive_file {MIB}\n")
    assert rc.agent_usage() == Usage(1.5, 9 * MIB)
    fim = root / "plugins" / "fim"
    (fim / "cpu.stat").write_text("usage_usec 250000\n")
    (fim / "memory.current").write_text(f"{4 * MIB}\n")
    (fim / "memory.stat").write_text("inactive_file 0\n")
    assert rc.plugin_usage("fim") is None  # no process in it: not running
    (fim / "cgroup.procs").write_text("5555\n")
    assert rc.plugin_usage("fim") == Usage(0.25, 4 * MIB)
    assert rc.plugin_usage("unknown") is None

    rc.teardown()  # regular files make every rmdir fail: logged, never raised
    for d in (root / "plugins", root, own):
        assert read(d / "cgroup.subtree_control") == "-cpu -memory"
    assert read(own / "cgroup.procs") == "5555"  # moved back, the agent first, then leftovers


def test_v2_setup_failure_is_undone(tmp_path: Path) -> None:
    proc, cg = fake_system(tmp_path, MOUNTINFO_V2, CGROUP_V2)
    own = fake_v2_own(cg)
    rc = open_resource_control("cgroup-v2", cgroup_root=cg, proc_root=proc)
    (own / "cgroup.subtree_control").unlink()
    (own / "cgroup.subtree_control").mkdir()  # any write error will do
    with pytest.raises(CgroupError, match="cannot enable cpu and memory"):
        rc.setup(pid=4242)
    assert (own / "cgroup.procs").read_text() == "4242"  # moved back
    with pytest.raises(CgroupError, match="before setup"):
        rc.plugin_join_paths("fim")


# ---------------------------------------------------------------------------------------------
# cgroup v1 on the real kernel

BURN = "import time\nt = time.time() + 30\nwhile time.time() < t: pass\n"


def join_and_exec(paths: list[str], code: str) -> subprocess.Popen[bytes]:
    """A plugin-like child: its shim writes its own pid into every cgroup, then execs."""
    shim = 'for p in "$@"; do echo $$ > "$p" || exit 71; done; exec "$0" -S -c "$CODE"'
    return subprocess.Popen(
        ["sh", "-c", shim, sys.executable, *paths],
        env={**os.environ, "CODE": code},
        start_new_session=True,
    )


class RealV1:
    def __init__(self, rc: ResourceControl, name: str) -> None:
        self.rc = rc
        mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
        _, v1 = own_cgroup_dirs(mounts, parse_proc_cgroup(Path("/proc/self/cgroup").read_text()))
        self.roots = {role: d / name for role, d in v1.items()}
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str]) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(argv, start_new_session=True)
        self.children.append(p)
        return p

    def plugin(self, name: str, code: str) -> subprocess.Popen[bytes]:
        p = join_and_exec(self.rc.plugin_join_paths(name), code)
        self.children.append(p)
        return p

    def procs(self, role: str, leaf: str) -> list[int]:
        return [int(x) for x in (self.roots[role] / leaf / "cgroup.procs").read_text().split()]


@pytest.fixture
def v1() -> Iterator[RealV1]:
    if os.geteuid() != 0:
        pytest.skip("cgroup v1 test needs root (it creates cgroups)")
    name = f"hidsd-test-{uuid.uuid4().hex[:12]}"
    try:
        rc = open_resource_control("cgroup-v1", name)
    except CgroupError as e:
        pytest.skip(f"cgroup v1 cpu/cpuacct/memory not usable here: {e}")
    env = RealV1(rc, name)
    try:
        yield env
    finally:
        for p in env.children:
            if p.poll() is None:
                p.kill()
            p.wait()
        rc.teardown()
        leftovers = [str(r) for r in env.roots.values() if r.exists()]
        for r in env.roots.values():  # if teardown failed, do not leave litter behind
            for d in sorted(r.rglob("*"), key=lambda p: -len(p.parts)):
                if d.is_dir():
                    d.rmdir()
            if r.exists():
                r.rmdir()
        assert not leftovers, f"teardown left {leftovers}"


def test_v1_real_cpu_quota_weight_and_teardown(v1: RealV1) -> None:
    rc = v1.rc
    assert rc.mode is Accounting.CGROUP_V1
    agent = v1.start(["sleep", "60"])
    before = Path(f"/proc/{agent.pid}/cgroup").read_text()
    rc.setup(pid=agent.pid)
    for role in ("cpu", "cpuacct", "memory"):
        assert v1.procs(role, "agent") == [agent.pid]
    assert rc.agent_usage().mem_bytes > 0  # the sleep's RSS: its charges stayed behind

    burner = v1.plugin("burn", BURN)
    deadline = time.monotonic() + 5
    while burner.pid not in v1.procs("memory", "plugins/burn"):
        assert time.monotonic() < deadline, "the shim did not join"
        assert burner.poll() is None, f"shim failed: {burner.returncode}"
        time.sleep(0.01)
    rc.plugin_started("burn", burner.pid)
    for role in ("cpu", "cpuacct", "memory"):
        assert v1.procs(role, "plugins/burn") == [burner.pid]

    u0 = rc.plugin_usage("burn")
    time.sleep(0.5)
    u1 = rc.plugin_usage("burn")
    assert u0 is not None and u1 is not None
    assert u1.cpu_s - u0.cpu_s > 0.05, "no CPU accounted to the busy plugin"
    assert u1.mem_bytes > 0

    rc.apply_limits(Limits(cpu_quota_pct=20))  # hot: the plugin is running
    assert (v1.roots["cpu"] / "plugins" / "cpu.cfs_quota_us").read_text().strip() == "20000"
    u2 = rc.plugin_usage("burn")
    time.sleep(2.0)
    u3 = rc.plugin_usage("burn")
    assert u2 is not None and u3 is not None
    capped = u3.cpu_s - u2.cpu_s
    print(f"plugin CPU under a 20 % quota: {capped:.3f} s in 2 s (uncapped 0.5 s: "
          f"{u1.cpu_s - u0.cpu_s:.3f} s)")  # fmt: skip
    assert capped <= 0.6, f"{capped:.3f} CPU s in 2 s under a 20 % quota"

    rc.set_plugin_weight("burn", 0.1)
    assert (v1.roots["cpu"] / "plugins" / "burn" / "cpu.shares").read_text().strip() == "102"
    rc.set_plugin_weight("burn", 0.0001)
    assert (v1.roots["cpu"] / "plugins" / "burn" / "cpu.shares").read_text().strip() == "2"

    os.killpg(burner.pid, signal.SIGKILL)
    burner.wait()
    assert rc.plugin_usage("burn") is None
    rc.plugin_stopped("burn")
    assert not any((r / "plugins" / "burn").exists() for r in v1.roots.values())

    rc.teardown()
    assert not any(r.exists() for r in v1.roots.values())
    assert Path(f"/proc/{agent.pid}/cgroup").read_text() == before
    assert agent.poll() is None


def test_v1_real_plugin_memory_cap_kills_the_plugin_not_the_agent(v1: RealV1) -> None:
    rc = v1.rc
    agent = v1.start(["sleep", "60"])
    rc.setup(pid=agent.pid)
    rc.apply_limits(Limits(plugin_memory_max_mb=64))
    mem = v1.roots["memory"] / "plugins"
    hog = v1.plugin("hog", "x = b'1' * (200 << 20)\n")  # written pages, not lazy zeros
    assert (mem / "hog" / "memory.limit_in_bytes").read_text().strip() == str(64 * MIB)
    assert hog.wait(timeout=20) == -signal.SIGKILL
    oom = dict(
        line.split() for line in (mem / "hog" / "memory.oom_control").read_text().splitlines()
    )
    assert int(oom.get("oom_kill", "1")) >= 1
    assert agent.poll() is None  # the agent lives on
    assert rc.plugin_usage("hog") is None
    rc.plugin_stopped("hog")


# ---------------------------------------------------------------------------------------------
# psutil mode

TREE = (
    f"import subprocess, sys\nc = subprocess.Popen([sys.executable, '-S', '-c', {BURN!r}])\n{BURN}"
)


@pytest.fixture
def tree() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A plugin-like process group: a parent and one child, both burning CPU."""
    root = subprocess.Popen([sys.executable, "-S", "-c", TREE], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not (kids := psutil.Process(root.pid).children()):
            assert time.monotonic() < deadline, "the tree did not start"
            time.sleep(0.02)
        yield root, kids[0].pid
    finally:
        os.killpg(root.pid, signal.SIGKILL)
        root.wait()


def test_psutil_sums_the_plugin_tree(tree: tuple[subprocess.Popen[bytes], int]) -> None:
    root, child = tree
    rc = open_resource_control("off")
    rc.setup()
    rc.apply_limits(Limits())
    assert rc.plugin_join_paths("tree") == []
    assert rc.plugin_usage("tree") is None  # not started yet
    rc.plugin_started("tree", root.pid)
    time.sleep(0.3)
    parts = [psutil.Process(p).cpu_times() for p in (root.pid, child)]
    rss = [psutil.Process(p).memory_info().rss for p in (root.pid, child)]
    u = rc.plugin_usage("tree")
    assert u is not None
    assert u.cpu_s >= sum(t.user + t.system for t in parts)
    assert parts[1].user + parts[1].system > 0.02  # so the child really counted
    assert u.mem_bytes >= 0.8 * sum(rss)
    rc.set_plugin_weight("tree", 0.1)  # no-op
    a = rc.agent_usage()
    assert a.cpu_s > 0
    assert a.mem_bytes > 10 * MIB
    rc.plugin_stopped("tree")
    assert rc.plugin_usage("tree") is None
    rc.teardown()


def test_psutil_tolerates_races(
    tree: tuple[subprocess.Popen[bytes], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = tree
    rc = open_resource_control("off")
    rc.plugin_started("tree", root.pid)
    # a descendant that exits between children() and cpu_times(): a real NoSuchProcess
    short = subprocess.Popen(["true"])
    gone = psutil.Process(short.pid)
    short.wait()
    real_children = psutil.Process.children

    def children_with_a_dead_one(self: Any, recursive: bool = False) -> list[Any]:
        return [*real_children(self, recursive=recursive), gone]

    monkeypatch.setattr(psutil.Process, "children", children_with_a_dead_one)
    with pytest.raises(psutil.NoSuchProcess):
        gone.cpu_times()
    u = rc.plugin_usage("tree")
    assert u is not None
    assert u.cpu_s > 0
    monkeypatch.undo()

    os.kill(root.pid, signal.SIGKILL)  # a zombie until reaped
    time.sleep(0.1)
    assert rc.plugin_usage("tree") is None
    root.wait()
    assert rc.plugin_usage("tree") is None

    rc.plugin_started("ghost", root.pid)  # already gone
    assert rc.plugin_usage("ghost") is None
