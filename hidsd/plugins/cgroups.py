"""Resource control for the agent and its plugins: cgroup v2, cgroup v1, or psutil accounting.

Without systemd the agent, when it may, builds its own subtree under the cgroup it was started
in (in every hierarchy that matters)::

    <own cgroup>/<name>              memory.max / memory.high: agent + plugins together
    <own cgroup>/<name>/agent        the agent process (leaf)
    <own cgroup>/<name>/plugins      cpu quota: all plugins together
    <own cgroup>/<name>/plugins/<p>  one per plugin: memory cap (the kernel OOM-kills the plugin,
                                     not the agent) and CPU weight (the breaker's throttle)

Processes live only in leaves (cgroup v2's "no internal processes" rule; v1 follows the same
layout). A plugin joins its cgroup itself: the exec shim writes its own pid into the files
`plugin_join_paths()` returns before it execs the plugin, so nothing the plugin allocates is
ever charged elsewhere. Where no cgroup hierarchy is usable, `PsutilControl` only measures (no
limits) and its `detail` says why, for the operator.

Everything is plain file I/O on cgroupfs; the policy (hidsd.agent.breaker) sees only the
`ResourceControl` protocol.

Memory charges do not move with a process: cgroup v2 never moves them and v1's
memory.move_charge_at_immigrate is deprecated (EINVAL on recent kernels). What the agent
allocated before `setup()` stays charged to its old cgroup, so call `setup()` early; the
agent's memory figure is max(cgroup working set, the agent's RSS) for that reason.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import psutil
import structlog

from hidsd.base.errors import HidsError
from hidsd.wire.limits import CgroupLimits as Limits

__all__ = [
    "Accounting",
    "CgroupError",
    "CgroupMount",
    "CgroupV1Control",
    "CgroupV2Control",
    "Limits",
    "PsutilControl",
    "ResourceControl",
    "Usage",
    "open_resource_control",
    "own_cgroup_dirs",
    "parse_mountinfo",
    "parse_proc_cgroup",
]

_SYS_FS_CGROUP = "/sys/fs/cgroup"
_CFS_PERIOD_US = 100_000
_MIB = 1 << 20
#: the cgroup roles each mode needs; in v2 all three are the same directory
_ROLES = ("cpu", "cpuacct", "memory")
_V2_CONTROLLERS = ("cpu", "memory")
_TEARDOWN_TRIES = 10
_TEARDOWN_PAUSE_S = 0.05
_LIMIT_FIELDS = ("cpu_quota_pct", "memory_max_mb", "memory_high_mb", "plugin_memory_max_mb")


class CgroupError(HidsError):
    """A cgroup could not be created, joined or limited; `path` names the file."""

    code = "cgroup"


class Accounting(StrEnum):
    CGROUP_V2 = "cgroup-v2"
    CGROUP_V1 = "cgroup-v1"
    PSUTIL = "psutil"


@dataclass(frozen=True, slots=True)
class Usage:
    #: cumulative CPU seconds (user + system) of the group
    cpu_s: float
    #: working set: usage minus inactive file cache (reclaimable, so not the group's fault)
    mem_bytes: int


class ResourceControl(Protocol):
    """The I/O boundary of the circuit breaker: its policy depends only on this."""

    mode: Accounting
    #: the cgroup root path(s), or why psutil
    detail: str

    def setup(self, pid: int | None = None) -> None:
        """Create the subtree and move `pid` (default: this process) into <root>/agent."""

    def apply_limits(self, limits: Limits) -> None:
        """Write `limits` (hot reload; kept and written by `setup()` if called before it)."""

    def plugin_join_paths(self, name: str) -> list[str]:
        """Create the plugin's cgroup(s); the files its shim writes its own pid into."""

    def plugin_started(self, name: str, pid: int) -> None:
        """The plugin's root process is running (psutil: remember it; cgroups: check it)."""

    def plugin_stopped(self, name: str) -> None:
        """Forget the plugin; remove its (empty) cgroups, best effort."""

    def agent_usage(self) -> Usage:
        """The agent process itself."""

    def plugin_usage(self, name: str) -> Usage | None:
        """One plugin (its whole process tree); None when unknown or not running."""

    def set_plugin_weight(self, name: str, factor: float) -> None:
        """Relative CPU weight, 1.0 = normal (the breaker's throttle uses e.g. 0.1)."""

    def teardown(self) -> None:
        """Move processes back where they came from and remove the subtree. Never raises."""


# ----------------------------------------------------------------------------------------------
# Discovery: /proc/self/cgroup and /proc/self/mountinfo


@dataclass(frozen=True, slots=True)
class CgroupMount:
    """One cgroup filesystem mount."""

    mount_point: Path
    #: the cgroup path mounted there: "/" unless a container bind-mounts a subtree
    root: str
    #: 1 or 2
    version: int
    #: v1: the super options (controllers such as cpu, cpuacct, memory, name=systemd, plus
    #: flags); v2: empty (a v2 cgroup lists its controllers in cgroup.controllers)
    options: frozenset[str]

    def resolve(self, cgroup_path: str) -> Path | None:
        """The directory of `cgroup_path` under this mount; None if it is not visible here."""
        if self.root == "/":
            rel = cgroup_path.lstrip("/")
        elif cgroup_path == self.root or cgroup_path.startswith(self.root + "/"):
            rel = cgroup_path[len(self.root) :].lstrip("/")
        else:
            return None
        if ".." in rel.split("/"):  # outside our cgroup namespace
            return None
        return self.mount_point / rel if rel else self.mount_point


_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str, cgroup_root: Path = Path(_SYS_FS_CGROUP)) -> list[CgroupMount]:
    """The cgroup mounts in a mountinfo text.

    Mount points under /sys/fs/cgroup are rebased onto `cgroup_root` (the identity in
    production; tests point it at a fake tree).
    """
    out: list[CgroupMount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        a, b = left.split(), right.split()
        if len(a) < 5 or len(b) < 3 or b[0] not in ("cgroup", "cgroup2"):
            continue
        mount_point = _unescape(a[4])
        if mount_point == _SYS_FS_CGROUP or mount_point.startswith(_SYS_FS_CGROUP + "/"):
            rel = mount_point[len(_SYS_FS_CGROUP) :].lstrip("/")
            path = cgroup_root / rel if rel else cgroup_root
        else:
            path = Path(mount_point)
        version = 2 if b[0] == "cgroup2" else 1
        options = frozenset(b[2].split(",")) if version == 1 else frozenset()
        out.append(CgroupMount(path, _unescape(a[3]), version, options))
    return out


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/<pid>/cgroup as controller -> cgroup path; the v2 line has the key ""."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if not controllers:
            if hid == "0":
                out[""] = path
            continue
        for c in controllers.split(","):
            out[c] = path
    return out


def _v1_mount_for(mounts: Iterable[CgroupMount], controller: str) -> list[CgroupMount]:
    return [m for m in mounts if m.version == 1 and controller in m.options]


def own_cgroup_dirs(
    mounts: Iterable[CgroupMount], proc_cgroup: Mapping[str, str]
) -> tuple[Path | None, dict[str, Path]]:
    """Where the process whose /proc/<pid>/cgroup is `proc_cgroup` lives: (v2 dir, v1 dirs).

    The v1 dict maps "cpu", "cpuacct" and "memory" to a directory when mounted and visible.
    """
    mounts = list(mounts)
    v2: Path | None = None
    if "" in proc_cgroup:
        for m in mounts:
            if m.version == 2 and (d := m.resolve(proc_cgroup[""])) is not None:
                v2 = d
                break
    v1: dict[str, Path] = {}
    for role in _ROLES:
        if role not in proc_cgroup:
            continue
        for m in _v1_mount_for(mounts, role):
            if (d := m.resolve(proc_cgroup[role])) is not None:
                v1[role] = d
                break
    return v2, v1


# ----------------------------------------------------------------------------------------------
# Small file helpers


def _read(path: Path) -> str:
    with open(path, encoding="ascii") as f:
        return f.read()


def _write(path: Path, value: str) -> None:
    """One write(2), as cgroupfs wants (O_CREAT only matters for fake trees in tests)."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, value.encode("ascii"))
    finally:
        os.close(fd)


def _read_pids(path: Path) -> list[int]:
    try:
        return [int(x) for x in _read(path).split()]
    except (OSError, ValueError):
        return []


def _stat_value(path: Path, key: str) -> int:
    """A "key value" line of memory.stat / cpu.stat; 0 if absent."""
    for line in _read(path).splitlines():
        k, _, v = line.partition(" ")
        if k == key:
            return int(v)
    return 0


def _rss(proc_root: Path, pid: int) -> int:
    try:
        return int(_read(proc_root / str(pid) / "statm").split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _usable_name(name: str) -> bool:
    """One plain path component (one that clashes with a control file fails at mkdir)."""
    return (
        bool(name)
        and "/" not in name
        and "\0" not in name
        and not name.startswith(".")
        and len(name) <= 200
    )


def _check_name(name: str) -> None:
    if not _usable_name(name):
        raise CgroupError("not a usable cgroup name", name=name)


def _check_limits(limits: Limits) -> None:
    for field in _LIMIT_FIELDS:
        value = getattr(limits, field)
        if not math.isfinite(value) or value < 0:
            raise CgroupError("a limit must be >= 0 (0 = none)", field=field, value=value)


def _cpu_quota_us(pct: float) -> int:
    return max(1000, round(pct * _CFS_PERIOD_US / 100))  # the kernel's minimum is 1 ms


# ----------------------------------------------------------------------------------------------
# cgroup modes


class _CgroupControl:
    """What v1 and v2 share: the subtree layout, joining, moving back and removal.

    `own` maps each role (cpu, cpuacct, memory) to our own cgroup directory in the hierarchy
    that serves it; co-mounted v1 hierarchies and v2 map several roles to one directory.
    """

    mode: Accounting

    def __init__(
        self, own: Mapping[str, Path], name: str, mounts: list[CgroupMount], proc_root: Path
    ) -> None:
        _check_name(name)
        self._own = dict(own)
        self._root = {role: d / name for role, d in own.items()}
        #: one entry per distinct hierarchy: its subtree root
        self._trees = list(dict.fromkeys(self._root.values()))
        self._mounts = mounts
        self._proc_root = proc_root
        self._limits: Limits | None = None
        self._agent_pid: int | None = None
        #: subtree root -> the directory the agent came from, for teardown
        self._came_from: dict[Path, Path] = {}
        self._log: Any = structlog.get_logger("hidsd.cgroups").bind(mode=str(self.mode))
        self.detail = ", ".join(
            f"{','.join(r for r in _ROLES if self._root.get(r) == t)}={t}" for t in self._trees
        )

    # -- hooks for the versions

    def _prepare_tree(self, root: Path) -> None:
        """Called after <root> is created and before its children are."""

    def _after_move(self) -> None:
        """Called after the agent is in <root>/agent (v2 enables controllers here)."""

    def _before_move_back(self) -> None:
        """Called at teardown before processes move back (v2 disables controllers here)."""

    def _write_limits(self, limits: Limits) -> None:
        raise NotImplementedError

    def _write_plugin_limits(self, name: str, limits: Limits) -> None:
        raise NotImplementedError

    def _usage(self, leaf: str) -> Usage:
        raise NotImplementedError

    def _write_weight(self, name: str, factor: float) -> None:
        raise NotImplementedError

    def _plugin_quota_us(self, factor: float) -> int | None:
        """A throttled plugin's own CPU cap: the plugins' quota times `factor` (None: none)."""
        pct = self._limits.cpu_quota_pct if self._limits is not None else 0.0
        if factor >= 1.0 or pct <= 0:
            return None
        return _cpu_quota_us(pct * factor)

    # -- the protocol

    def setup(self, pid: int | None = None) -> None:
        """Idempotent; on CgroupError it has undone what it did (moved `pid` back)."""
        pid = os.getpid() if pid is None else pid
        self._came_from = self._where(pid)
        try:
            self._setup(pid)
        except CgroupError:
            self.teardown()
            raise
        self._log.info("cgroups ready", root=self.detail, pid=pid)

    def _setup(self, pid: int) -> None:
        try:
            for root in self._trees:
                root.mkdir(exist_ok=True)
                self._prepare_tree(root)
                (root / "agent").mkdir(exist_ok=True)
                (root / "plugins").mkdir(exist_ok=True)
                self._remove_stale_plugins(root / "plugins")
            for root in self._trees:
                _write(root / "agent" / "cgroup.procs", str(pid))
        except OSError as e:
            raise CgroupError(f"cgroup setup failed: {e}", path=e.filename, pid=pid) from e
        self._agent_pid = pid
        self._after_move()
        if self._limits is not None:
            self._apply(self._limits)

    def apply_limits(self, limits: Limits) -> None:
        _check_limits(limits)
        self._limits = limits
        if self._agent_pid is not None:
            self._apply(limits)

    def plugin_join_paths(self, name: str) -> list[str]:
        _check_name(name)
        if self._agent_pid is None:
            raise CgroupError("plugin_join_paths() before setup()", plugin=name)
        dirs = [root / "plugins" / name for root in self._trees]
        try:
            for d in dirs:
                d.mkdir(exist_ok=True)
            if self._limits is not None:
                self._write_plugin_limits(name, self._limits)
        except OSError as e:
            raise CgroupError(
                f"cannot create the plugin's cgroup: {e}", path=e.filename, plugin=name
            ) from e
        return [str(d / "cgroup.procs") for d in dirs]

    def plugin_started(self, name: str, pid: int) -> None:
        """Sanity: the shim should have joined; if it did not, move the plugin now."""
        for root in self._trees:
            procs = root / "plugins" / name / "cgroup.procs"
            if pid in _read_pids(procs):
                continue
            self._log.warning("plugin not in its cgroup: moving it", plugin=name, pid=pid)
            try:
                _write(procs, str(pid))
            except OSError as e:
                self._log.warning("cannot move plugin", plugin=name, pid=pid, error=str(e))

    def plugin_stopped(self, name: str) -> None:
        for root in self._trees:
            d = root / "plugins" / name
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as e:
                self._log.warning("cannot remove plugin cgroup", path=str(d), error=str(e))

    def agent_usage(self) -> Usage:
        try:
            u = self._usage("agent")
        except (OSError, ValueError) as e:
            raise CgroupError(f"cannot read the agent's cgroup: {e}") from e
        if self._agent_pid is None:
            return u
        # charges made before setup() stay in the old cgroup (see the module docstring)
        return Usage(u.cpu_s, max(u.mem_bytes, _rss(self._proc_root, self._agent_pid)))

    def plugin_usage(self, name: str) -> Usage | None:
        if not _usable_name(name):
            return None
        leaf = f"plugins/{name}"
        if not _read_pids(self._root["memory"] / leaf / "cgroup.procs"):
            return None
        try:
            return self._usage(leaf)
        except (OSError, ValueError):
            return None  # it stopped and its cgroup went away meanwhile

    def set_plugin_weight(self, name: str, factor: float) -> None:
        """No-op for a plugin without a cgroup (not running: it restarts at weight 1.0)."""
        if not math.isfinite(factor) or factor <= 0:
            raise CgroupError("CPU weight factor must be > 0", plugin=name, factor=factor)
        _check_name(name)
        if not (self._root["cpu"] / "plugins" / name).is_dir():
            return
        try:
            self._write_weight(name, factor)
        except OSError as e:
            raise CgroupError(f"cannot set CPU weight: {e}", path=e.filename, plugin=name) from e

    def teardown(self) -> None:
        try:
            self._teardown()
        except Exception as e:  # best effort by contract: shutdown must go on
            self._log.warning("cgroup teardown failed", error=repr(e))

    # -- internals

    def _where(self, pid: int) -> dict[Path, Path]:
        """subtree root -> the directory `pid` is in now, in that hierarchy."""
        try:
            cg = parse_proc_cgroup(_read(self._proc_root / str(pid) / "cgroup"))
        except OSError as e:
            raise CgroupError(f"no such process: {e}", pid=pid) from e
        v2, v1 = own_cgroup_dirs(self._mounts, cg)
        out: dict[Path, Path] = {}
        for role, root in self._root.items():
            d = v2 if self.mode is Accounting.CGROUP_V2 else v1.get(role)
            out[root] = d if d is not None else self._own[role]
        return out

    def _apply(self, limits: Limits) -> None:
        try:
            self._write_limits(limits)
            for d in (self._root["memory"] / "plugins").iterdir():
                if d.is_dir():
                    self._write_plugin_limits(d.name, limits)
        except OSError as e:
            raise CgroupError(f"cannot apply limits: {e}", path=e.filename) from e
        self._log.info("cgroup limits applied", **{k: getattr(limits, k) for k in _LIMIT_FIELDS})

    def _remove_stale_plugins(self, plugins: Path) -> None:
        for d in plugins.iterdir():
            if not d.is_dir():
                continue
            try:
                d.rmdir()
                self._log.info("removed stale plugin cgroup", path=str(d))
            except OSError as e:
                self._log.warning("stale plugin cgroup still in use", path=str(d), error=str(e))

    def _teardown(self) -> None:
        existed = [root for root in self._trees if root.is_dir()]
        self._before_move_back()
        left: list[Path] = []
        for attempt in range(_TEARDOWN_TRIES):
            left = []
            for root in self._trees:
                if not root.is_dir():
                    continue
                back = self._came_from.get(root, root.parent)
                leaves = [root / "agent"]
                plugins = root / "plugins"
                if plugins.is_dir():
                    leaves += sorted(d for d in plugins.iterdir() if d.is_dir())
                for leaf in [*leaves, plugins, root]:
                    for pid in _read_pids(leaf / "cgroup.procs"):
                        if attempt == 0 and leaf.parent == plugins:
                            self._log.warning(
                                "plugin still running at teardown", cgroup=str(leaf), pid=pid
                            )
                        with contextlib.suppress(OSError):  # it exited meanwhile
                            _write(back / "cgroup.procs", str(pid))
                for d in [*leaves, plugins, root]:
                    try:
                        d.rmdir()
                    except FileNotFoundError:
                        pass
                    except OSError:
                        left.append(d)
            if not left:
                break
            time.sleep(_TEARDOWN_PAUSE_S)  # exited tasks can linger a moment
        if left:
            self._log.warning("cgroups left behind", paths=[str(p) for p in left])
        elif existed:
            self._log.info("cgroups removed", root=self.detail)
        self._agent_pid = None


class CgroupV1Control(_CgroupControl):
    """cgroup v1: separate (or co-mounted) cpu, cpuacct and memory hierarchies."""

    mode = Accounting.CGROUP_V1

    def _prepare_tree(self, root: Path) -> None:
        if root != self._root["memory"]:
            return
        # Old kernels: a limit on <root> covers its children only with use_hierarchy=1, which
        # can only be set while <root> has no children (new kernels: always 1, read-only).
        flag = root / "memory.use_hierarchy"
        if flag.exists() and _read(flag).strip() == "0":
            with contextlib.suppress(OSError):
                _write(flag, "1")
            if _read(flag).strip() != "1":
                raise CgroupError(
                    "memory.use_hierarchy is 0 and cannot be set: limits would not cover "
                    "the plugins",
                    path=str(flag),
                )

    def _write_limits(self, limits: Limits) -> None:
        plugins = self._root["cpu"] / "plugins"
        _write(plugins / "cpu.cfs_period_us", str(_CFS_PERIOD_US))
        quota = _cpu_quota_us(limits.cpu_quota_pct) if limits.cpu_quota_pct else -1
        _write(plugins / "cpu.cfs_quota_us", str(quota))
        root = self._root["memory"]
        _v1_memory_limit(root, limits.memory_max_mb)
        soft = limits.memory_high_mb * _MIB if limits.memory_high_mb else -1
        _write(root / "memory.soft_limit_in_bytes", str(soft))

    def _write_plugin_limits(self, name: str, limits: Limits) -> None:
        _v1_memory_limit(self._root["memory"] / "plugins" / name, limits.plugin_memory_max_mb)

    def _usage(self, leaf: str) -> Usage:
        cpu_ns = int(_read(self._root["cpuacct"] / leaf / "cpuacct.usage"))
        mem = self._root["memory"] / leaf
        used = int(_read(mem / "memory.usage_in_bytes"))
        inactive = _stat_value(mem / "memory.stat", "total_inactive_file")
        return Usage(cpu_ns / 1e9, max(0, used - inactive))

    def _write_weight(self, name: str, factor: float) -> None:
        d = self._root["cpu"] / "plugins" / name
        shares = max(2, int(1024 * factor))
        _write(d / "cpu.shares", str(shares))
        # Weight only counts inside our own cgroup; the business is outside it. What slows a
        # burning plugin against the host is its own quota: the plugins' quota times factor.
        quota = self._plugin_quota_us(factor)
        if quota is not None:
            _write(d / "cpu.cfs_period_us", str(_CFS_PERIOD_US))
        _write(d / "cpu.cfs_quota_us", str(-1 if quota is None else quota))


def _v1_memory_limit(d: Path, mb: int) -> None:
    """memory.limit_in_bytes, and memsw (memory + swap) alike so that swap cannot dodge it.

    The kernel wants limit <= memsw at every moment: raise memsw first, lower it last.
    """
    new = mb * _MIB if mb else -1
    memsw = d / "memory.memsw.limit_in_bytes"
    if not memsw.exists():
        _write(d / "memory.limit_in_bytes", str(new))
        return
    current = int(_read(memsw))
    if new == -1 or new > current:
        _write(memsw, str(new))
        _write(d / "memory.limit_in_bytes", str(new))
    else:
        _write(d / "memory.limit_in_bytes", str(new))
        _write(memsw, str(new))


class CgroupV2Control(_CgroupControl):
    """cgroup v2: one unified hierarchy; controllers enabled top-down via subtree_control."""

    mode = Accounting.CGROUP_V2

    def __init__(self, own: Path, name: str, mounts: list[CgroupMount], proc_root: Path) -> None:
        super().__init__(dict.fromkeys(_ROLES, own), name, mounts, proc_root)
        self._own_dir = own
        self._enabled_own = False
        self.detail = str(own / name)

    def _after_move(self) -> None:
        # "No internal processes": a non-root cgroup can enable controllers for its children
        # only while it holds no process itself, so this comes after the agent left <own>.
        root = self._root["cpu"]
        want = " ".join(f"+{c}" for c in _V2_CONTROLLERS)
        try:
            have = _read(self._own_dir / "cgroup.subtree_control").split()
            if not all(c in have for c in _V2_CONTROLLERS):
                _write(self._own_dir / "cgroup.subtree_control", want)
                self._enabled_own = True
            _write(root / "cgroup.subtree_control", want)
            _write(root / "plugins" / "cgroup.subtree_control", want)
        except OSError as e:
            raise CgroupError(
                f"cannot enable cpu and memory controllers: {e} (another process in "
                f"{self._own_dir}?)",
                path=e.filename,
            ) from e

    def _before_move_back(self) -> None:
        # Bottom-up: the kernel refuses to disable a controller a child still enables. The
        # agent's old cgroup must not enable them again, or it could not take it back.
        root = self._root["cpu"]
        off = " ".join(f"-{c}" for c in _V2_CONTROLLERS)
        dirs = [root / "plugins", root] + ([self._own_dir] if self._enabled_own else [])
        for d in dirs:
            if d.is_dir():
                with contextlib.suppress(OSError):
                    _write(d / "cgroup.subtree_control", off)
        self._enabled_own = False

    def _write_limits(self, limits: Limits) -> None:
        root = self._root["cpu"]
        quota = _cpu_quota_us(limits.cpu_quota_pct) if limits.cpu_quota_pct else "max"
        _write(root / "plugins" / "cpu.max", f"{quota} {_CFS_PERIOD_US}")
        _v2_memory_max(root, limits.memory_max_mb)
        high = limits.memory_high_mb * _MIB if limits.memory_high_mb else "max"
        _write(root / "memory.high", str(high))

    def _write_plugin_limits(self, name: str, limits: Limits) -> None:
        _v2_memory_max(self._root["cpu"] / "plugins" / name, limits.plugin_memory_max_mb)

    def _usage(self, leaf: str) -> Usage:
        d = self._root["cpu"] / leaf
        usec = _stat_value(d / "cpu.stat", "usage_usec")
        current = int(_read(d / "memory.current"))
        inactive = _stat_value(d / "memory.stat", "inactive_file")
        return Usage(usec / 1e6, max(0, current - inactive))

    def _write_weight(self, name: str, factor: float) -> None:
        d = self._root["cpu"] / "plugins" / name
        weight = min(10_000, max(1, int(100 * factor)))
        _write(d / "cpu.weight", str(weight))
        quota = self._plugin_quota_us(factor)  # see the v1 twin: weight alone is not enough
        _write(d / "cpu.max", "max" if quota is None else f"{quota} {_CFS_PERIOD_US}")


def _v2_memory_max(d: Path, mb: int) -> None:
    """memory.max, and memory.swap.max 0 under a cap so that swap cannot dodge it."""
    _write(d / "memory.max", str(mb * _MIB) if mb else "max")
    swap = d / "memory.swap.max"
    if swap.exists():
        _write(swap, "0" if mb else "max")


# ----------------------------------------------------------------------------------------------
# psutil mode


class PsutilControl:
    """Accounting only, no limits: where no cgroup hierarchy is usable. `detail` says why."""

    mode: Accounting = Accounting.PSUTIL

    def __init__(self, detail: str) -> None:
        self.detail = detail
        self._self = psutil.Process()
        self._plugins: dict[str, Any] = {}
        self._log: Any = structlog.get_logger("hidsd.cgroups").bind(mode=str(self.mode))

    def setup(self, pid: int | None = None) -> None:
        if pid is not None:
            self._self = psutil.Process(pid)
        self._log.warning("no cgroups: psutil accounting, no kernel limits", reason=self.detail)

    def apply_limits(self, limits: Limits) -> None:
        _check_limits(limits)  # nothing to enforce them with; the breaker still acts

    def plugin_join_paths(self, name: str) -> list[str]:
        _check_name(name)
        return []

    def plugin_started(self, name: str, pid: int) -> None:
        try:
            # the Process object remembers the start time, so a reused pid is not mistaken
            self._plugins[name] = psutil.Process(pid)
        except psutil.Error:
            self._plugins.pop(name, None)

    def plugin_stopped(self, name: str) -> None:
        self._plugins.pop(name, None)

    def agent_usage(self) -> Usage:
        with self._self.oneshot():
            t = self._self.cpu_times()
            rss = self._self.memory_info().rss
        # children_* would count the plugins the agent reaped: not the agent's own CPU
        return Usage(t.user + t.system, int(rss))

    def plugin_usage(self, name: str) -> Usage | None:
        """The plugin's root process and its live descendants.

        CPU includes what each live process's reaped children used (children_user/system),
        so a short-lived helper still counts; descendants that were reparented away or died
        unreaped are lost, so the figure can step down: callers clamp negative deltas.
        """
        root = self._plugins.get(name)
        if root is None:
            return None
        try:
            if not root.is_running() or root.status() == psutil.STATUS_ZOMBIE:
                return None
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return None
        cpu = 0.0
        mem = 0
        for i, p in enumerate(procs):
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    rss = p.memory_info().rss
            except psutil.Error:
                if i == 0:
                    return None  # the root went away meanwhile: not running
                continue  # a descendant exited meanwhile
            cpu += t.user + t.system + t.children_user + t.children_system
            mem += int(rss)
        return Usage(cpu, mem)

    def set_plugin_weight(self, name: str, factor: float) -> None:
        """No CPU weights without cgroups (the service may renice instead)."""

    def teardown(self) -> None:
        self._plugins.clear()


# ----------------------------------------------------------------------------------------------
# Choosing a mode


def _probe_dir(d: Path) -> str | None:
    """None if we can create children in `d` (tried with a throwaway child), else why not."""
    probe = d / f".hidsd-probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        return str(e)
    return None


def _probe_v2(own: Path | None, pid: int) -> str | None:
    if own is None:
        return "cgroup v2: not mounted"
    try:
        available = _read(own / "cgroup.controllers").split()
        enabled = _read(own / "cgroup.subtree_control").split()
    except OSError as e:
        return f"cgroup v2: {e}"
    missing = [c for c in _V2_CONTROLLERS if c not in available]
    if missing:
        return (
            f"cgroup v2 ({own}): no {','.join(missing)} controller "
            f"(available: {' '.join(available) or 'none'})"
        )
    others = [p for p in _read_pids(own / "cgroup.procs") if p != pid]
    is_root = not (own / "cgroup.type").exists()  # the root cgroup has no type file
    if others and not is_root and not all(c in enabled for c in _V2_CONTROLLERS):
        return (
            f"cgroup v2 ({own}): other processes share our cgroup ({len(others)}), so its "
            "controllers cannot be enabled for a subtree (no internal processes rule)"
        )
    if (why := _probe_dir(own)) is not None:
        return f"cgroup v2 not writable: {why}"
    return None


def _probe_v1(own: Mapping[str, Path]) -> str | None:
    missing = [r for r in _ROLES if r not in own]
    if missing:
        return f"cgroup v1: {','.join(missing)} not mounted"
    for d in dict.fromkeys(own.values()):
        if (why := _probe_dir(d)) is not None:
            roles = ",".join(r for r in _ROLES if own[r] == d)
            return f"cgroup v1 {roles} not writable: {why}"
    return None


def open_resource_control(
    mode: str = "auto",
    name: str = "hidsd",
    *,
    cgroup_root: Path = Path(_SYS_FS_CGROUP),
    proc_root: Path = Path("/proc"),
) -> ResourceControl:
    """Pick how the agent controls its resources. Nothing is created or moved until setup().

    mode: "auto" (v2, else v1, else psutil with the reasons in `detail`), "off" or "psutil"
    (psutil by config), "cgroup-v2" or "cgroup-v1" (that one or CgroupError).
    """
    if mode in ("off", Accounting.PSUTIL):
        return PsutilControl("cgroups off by config")
    if mode not in ("auto", Accounting.CGROUP_V2, Accounting.CGROUP_V1):
        raise CgroupError(
            "unknown resource control mode (auto, off, psutil, cgroup-v2, cgroup-v1)", mode=mode
        )
    _check_name(name)
    try:
        mounts = parse_mountinfo(_read(proc_root / "self" / "mountinfo"), cgroup_root)
        proc_cgroup = parse_proc_cgroup(_read(proc_root / "self" / "cgroup"))
    except OSError as e:
        if mode != "auto":
            raise CgroupError(f"cannot read our cgroups: {e}", mode=mode) from e
        return PsutilControl(f"cannot read our cgroups: {e}")
    v2_dir, v1_dirs = own_cgroup_dirs(mounts, proc_cgroup)
    reasons: list[str] = []
    if mode in ("auto", Accounting.CGROUP_V2):
        why = _probe_v2(v2_dir, os.getpid())
        if why is None and v2_dir is not None:
            return CgroupV2Control(v2_dir, name, mounts, proc_root)
        if mode == Accounting.CGROUP_V2:
            raise CgroupError(why or "cgroup v2 unusable", mode=mode)
        reasons.append(why or "cgroup v2 unusable")
    why = _probe_v1(v1_dirs)
    if why is None:
        return CgroupV1Control(v1_dirs, name, mounts, proc_root)
    if mode == Accounting.CGROUP_V1:
        raise CgroupError(why, mode=mode)
    reasons.append(why)
    if os.geteuid() != 0:
        reasons.append("not root")
    return PsutilControl("; ".join(reasons))
