"""The circuit breaker's policy: graded responses to the agent hurting its host. Pure.

Inputs are samples (the agent's and each plugin's CPU and memory, each plugin's record rate,
the host's CPU and memory pressure); outputs are the breaker's state and what it holds:

    normal -> throttled -> shedding -> tripped -> recovering -> normal

- throttled: telemetry rates cut and plugins given less CPU weight (the service does that);
- shedding: plugins stopped one per window, the offender first, then the least important;
- tripped: every plugin stopped (the agent keeps only its control channel), the offender
  denylisted; or the agent exits, if configured;
- recovering (half-open): after a cool-down that doubles with each strike, plugins come back
  one at a time, most important first, each after a calm window. A plugin that breaches again
  right after it came back is denylisted: it has shown it is the cause.

No flapping: a level counts only when every sample over `window_s` reaches it, and each action
gets a full window to take effect before the next one. Nothing happens during `grace_s` after
start (plugins' start-up scans). The denylist uses wall-clock times so it survives a restart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hidsd.wire.heartbeat import BreakerReport, DenylistEntry
from hidsd.wire.limits import BreakerConfig, OnTrip


class BreakerState(StrEnum):
    NORMAL = "normal"
    THROTTLED = "throttled"
    SHEDDING = "shedding"
    TRIPPED = "tripped"
    RECOVERING = "recovering"


class Resource(StrEnum):
    """What a breach is about."""

    CPU = "cpu"
    MEMORY = "memory"
    FLOOD = "flood"
    HOST_CPU = "host_cpu"
    HOST_MEMORY = "host_memory"


@dataclass(frozen=True, slots=True)
class PluginLoad:
    cpu_pct: float
    mem_bytes: int
    records_per_s: float
    #: the kernel's CPU cap on it now, % of a core (None: no cgroup); a plugin pinned at its
    #: cap is breaching even though the cap keeps the number low
    cap_pct: float | None = None
    #: its cap is not judged yet (it started less than a window ago): a restored plugin must
    #: be judged before recovery can call it calm
    settling: bool = False


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # monotonic seconds
    wall: float  # time.time(), for the denylist
    agent_cpu_pct: float
    agent_mem_bytes: int
    #: running plugins
    plugins: Mapping[str, PluginLoad]
    #: every plugin that should run were it not for the breaker: name -> priority (higher =
    #: more important, shed last, restored first)
    wanted: Mapping[str, int]
    host_cpu_pressure_pct: float = 0.0
    host_mem_available_pct: float = 100.0

    @property
    def cpu_pct(self) -> float:
        return self.agent_cpu_pct + sum(p.cpu_pct for p in self.plugins.values())

    @property
    def mem_mb(self) -> float:
        return (self.agent_mem_bytes + sum(p.mem_bytes for p in self.plugins.values())) / 2**20


@dataclass(frozen=True, slots=True)
class Assessment:
    """How bad one sample is: level 0 (calm) to 3 (trip), why, and which plugin to blame."""

    level: int
    resource: Resource | None = None
    offender: str | None = None
    detail: str = ""


#: a plugin using this share of its kernel CPU cap, window after window, is pinned at it
PINNED_FRACTION = 0.9


def _grade(value: float, throttle: float, shed: float, trip: float) -> int:
    return 3 if value >= trip else 2 if value >= shed else 1 if value >= throttle else 0


def _top(plugins: Mapping[str, PluginLoad], key: str) -> str | None:
    best = max(plugins.items(), key=lambda kv: getattr(kv[1], key), default=None)
    if best is None or getattr(best[1], key) <= 0:
        return None
    return best[0]


def assess(cfg: BreakerConfig, s: Sample) -> Assessment:
    """Grade one sample. The agent's own use and the host's pressure count; the worst wins."""
    found: list[Assessment] = []
    cpu = s.cpu_pct
    level = _grade(cpu, cfg.cpu_throttle_pct, cfg.cpu_shed_pct, cfg.cpu_trip_pct)
    if level:
        found.append(Assessment(level, Resource.CPU, _top(s.plugins, "cpu_pct"),
                                f"agent+plugins CPU {cpu:.1f}% of a core"))  # fmt: skip
    mem = s.mem_mb
    level = _grade(mem, cfg.mem_throttle_mb, cfg.mem_shed_mb, cfg.mem_trip_mb)
    if level:
        found.append(Assessment(level, Resource.MEMORY, _top(s.plugins, "mem_bytes"),
                                f"agent+plugins memory {mem:.0f} MB"))  # fmt: skip
    pinned = [n for n, p in s.plugins.items()
              if p.cap_pct and p.cpu_pct >= PINNED_FRACTION * p.cap_pct]  # fmt: skip
    if pinned:
        worst = max(pinned, key=lambda n: s.plugins[n].cpu_pct)
        found.append(Assessment(1, Resource.CPU, worst,
                                f"{worst} pinned at its CPU cap "
                                f"({s.plugins[worst].cpu_pct:.1f}% of a core)"))  # fmt: skip
    flooder = _top(s.plugins, "records_per_s")
    if flooder is not None:
        rate = s.plugins[flooder].records_per_s
        if rate >= cfg.flood_records_per_s:
            found.append(Assessment(1, Resource.FLOOD, flooder,
                                    f"{flooder} writes {rate:,.0f} records/s"))  # fmt: skip
    if s.host_cpu_pressure_pct >= cfg.host_cpu_pressure_pct:
        found.append(Assessment(1, Resource.HOST_CPU, _top(s.plugins, "cpu_pct"),
                                f"host CPU pressure {s.host_cpu_pressure_pct:.0f}%"))  # fmt: skip
    if s.host_mem_available_pct < cfg.host_mem_available_min_pct:
        avail = f"host memory available {s.host_mem_available_pct:.1f}%"
        found.append(Assessment(1, Resource.HOST_MEMORY, _top(s.plugins, "mem_bytes"), avail))
    if not found:
        return Assessment(0)
    return max(found, key=lambda a: a.level)  # first of the worst: own use before the host's


@dataclass(frozen=True, slots=True)
class Transition:
    old: BreakerState
    new: BreakerState
    reason: str
    at: float  # wall clock
    resource: str | None = None
    offender: str | None = None

    def to_event(self) -> dict[str, Any]:
        return {"kind": "breaker", "old": self.old.value, "state": self.new.value,
                "reason": self.reason, "resource": self.resource, "offender": self.offender,
                "time": self.at}  # fmt: skip


@dataclass
class Breaker:
    """The state machine. `step` with each sample; read `blocked`, `throttled`, `exit_reason`."""

    cfg: BreakerConfig
    started: float  # monotonic
    state: BreakerState = BreakerState.NORMAL
    since: float = 0.0
    reason: str = ""
    #: plugins held stopped (shedding); with `hold_all` every wanted plugin but `restored`
    held: list[str] = field(default_factory=list)
    hold_all: bool = False
    restored: list[str] = field(default_factory=list)
    #: name -> (until, reason); wall clock
    denylist: dict[str, tuple[float, str]] = field(default_factory=dict)
    strikes: int = 0
    transitions: int = 0
    exit_reason: str | None = None
    last: Assessment = field(default_factory=lambda: Assessment(0))
    _runs: dict[int, float | None] = field(default_factory=lambda: {1: None, 2: None, 3: None})
    _calm_since: float | None = None
    _prev_at: float | None = None
    _acted_at: float = 0.0
    _last_restored: str | None = None

    def __post_init__(self) -> None:
        self.since = self.started
        self._acted_at = self.started

    # ------------------------------------------------------------------ queries

    @property
    def throttled(self) -> bool:
        return self.state is not BreakerState.NORMAL

    def blocked(self, wanted: Mapping[str, int] | set[str]) -> set[str]:
        """The wanted plugins the breaker keeps stopped (held or denylisted)."""
        names = set(wanted)
        out = {n for n in names if n in self.denylist}
        if self.hold_all:
            out |= names - set(self.restored)
        else:
            out |= names & set(self.held)
        return out

    def cooldown_s(self) -> float:
        doubled = self.cfg.cooldown_s * float(2 ** max(0, self.strikes - 1))
        return min(self.cfg.cooldown_max_s, doubled)

    def report(self, now: float, wall: float) -> BreakerReport:
        return BreakerReport(
            state=self.state.value,
            since_s=round(now - self.since, 1),
            reason=self.reason,
            level=self.last.level,
            resource=self.last.resource.value if self.last.resource else None,
            held=tuple(sorted(self.held) if not self.hold_all else ["*", *sorted(self.restored)]),
            hold_all=self.hold_all,
            denylist={
                n: DenylistEntry(u, round(max(0.0, u - wall)), r)
                for n, (u, r) in sorted(self.denylist.items())
            },
            strikes=self.strikes,
            transitions=self.transitions,
            enabled=self.cfg.enabled,
        )

    # ------------------------------------------------------------------ operator

    def clear(self, name: str) -> bool:
        """Operator: take `name` off the denylist (and out of the held set)."""
        found = self.denylist.pop(name, None) is not None
        if name in self.held:
            self.held.remove(name)
            found = True
        return found

    # ------------------------------------------------------------------ the machine

    def _sustained(self, level: int, now: float) -> bool:
        start = self._runs[level]
        return start is not None and now - max(start, self._acted_at) >= self.cfg.window_s

    def _calm_for(self, seconds: float, now: float) -> bool:
        c = self._calm_since
        return c is not None and now - max(c, self._acted_at) >= seconds

    def _go(self, new: BreakerState, reason: str, s: Sample, a: Assessment) -> Transition:
        t = Transition(self.state, new, reason, s.wall,
                       a.resource.value if a.resource else None, a.offender)  # fmt: skip
        self.state = new
        self.since = s.at
        self.reason = reason
        self.transitions += 1
        self._acted_at = s.at
        return t

    def _deny(self, name: str, why: str, wall: float) -> None:
        self.denylist[name] = (wall + self.cfg.denylist_s, why)

    def step(self, s: Sample) -> list[Transition]:
        """Feed one sample; returns the state changes it caused (each one an event)."""
        a = assess(self.cfg, s)
        self.last = a
        # A sample measures the interval since the previous one: a run of samples covers
        # that much time, starting at the previous sample.
        began = self._prev_at if self._prev_at is not None else s.at
        self._prev_at = s.at
        for lvl in (1, 2, 3):
            if a.level >= lvl:
                if self._runs[lvl] is None:
                    self._runs[lvl] = began
            else:
                self._runs[lvl] = None
        if a.level:
            self._calm_since = None
        elif self._calm_since is None:
            self._calm_since = began
        for name, (until, _) in list(self.denylist.items()):
            if s.wall >= until:
                del self.denylist[name]
        self.held = [n for n in self.held if n in s.wanted]
        if not self.cfg.enabled:
            if self.state is BreakerState.NORMAL and not self.held:
                return []
            self.held, self.hold_all, self.restored = [], False, []
            return [self._go(BreakerState.NORMAL, "breaker disabled by config", s, a)]
        if s.at - self.started < self.cfg.grace_s:
            return []
        return self._decide(s, a)

    def _decide(self, s: Sample, a: Assessment) -> list[Transition]:
        st = self.state
        if self._sustained(3, s.at) and st is not BreakerState.TRIPPED:
            return [self._trip(s, a)]
        if st is BreakerState.NORMAL:
            if self._sustained(1, s.at):
                return [self._go(BreakerState.THROTTLED, a.detail, s, a)]
            if self._calm_for(self.cfg.cooldown_max_s, s.at):
                self.strikes = 0  # long calm: forget old strikes
        elif st is BreakerState.THROTTLED:
            if self._sustained(1, s.at):  # throttling did not help within a window
                return self._shed(s, a)
            if self._calm_for(self.cfg.window_s, s.at):
                return [self._go(BreakerState.NORMAL, "calm", s, a)]
        elif st is BreakerState.SHEDDING:
            if self._sustained(1, s.at):
                return self._shed(s, a)
            if self._calm_for(self.cooldown_s(), s.at):
                return self._recover(s, a)
        elif st is BreakerState.TRIPPED:
            if self._calm_for(self.cooldown_s(), s.at):
                return self._recover(s, a)
        elif st is BreakerState.RECOVERING:
            if self._sustained(1, s.at):
                return self._relapse(s, a)
            if self._calm_for(self.cfg.window_s, s.at) and not self._restored_settling(s):
                return self._recover(s, a)
        return []

    def _trip(self, s: Sample, a: Assessment) -> Transition:
        self.strikes += 1
        self.hold_all, self.restored, self.held = True, [], []
        reason = f"trip: {a.detail}"
        if a.offender is not None:
            self._deny(a.offender, reason, s.wall)
            reason += f"; {a.offender} denylisted for {self.cfg.denylist_s:.0f}s"
        if self.cfg.on_trip is OnTrip.EXIT:
            self.exit_reason = reason
        return self._go(BreakerState.TRIPPED, reason, s, a)

    def _shed(self, s: Sample, a: Assessment) -> list[Transition]:
        blocked = self.blocked(s.wanted)
        running = [n for n in s.plugins if n not in blocked]
        if not running:
            # nothing left to shed and still breaching: the agent itself is the problem
            return [self._trip(s, a)]
        if a.offender in running:
            victim = a.offender
            why = f"offender ({a.resource.value if a.resource else '?'})"
        else:
            victim = min(running, key=lambda n: (s.wanted.get(n, 50), -s.plugins[n].cpu_pct))
            why = "least important"
        assert victim is not None
        if self.hold_all:
            self.restored = [n for n in self.restored if n != victim]
        else:
            self.held.append(victim)
        if self.state is not BreakerState.SHEDDING:
            self.strikes += 1
        return [self._go(BreakerState.SHEDDING, f"{a.detail}; shed {victim}: {why}", s, a)]

    def _recover(self, s: Sample, a: Assessment) -> list[Transition]:
        """Bring back the most important held plugin; none left: back to normal."""
        candidates = [n for n in self.blocked(s.wanted) if n not in self.denylist]
        if not candidates:
            self.held, self.hold_all, self.restored = [], False, []
            self._last_restored = None
            return [self._go(BreakerState.NORMAL, "recovered", s, a)]
        name = max(candidates, key=lambda n: (s.wanted[n], n))
        if self.hold_all:
            self.restored.append(name)
        else:
            self.held.remove(name)
        self._last_restored = name
        reason = f"restoring {name}" + (f" ({len(candidates) - 1} more held)"
                                        if len(candidates) > 1 else "")  # fmt: skip
        if self.state is BreakerState.RECOVERING:
            self.reason = reason
            self._acted_at = s.at  # each restore gets its own calm window
            return []
        return [self._go(BreakerState.RECOVERING, reason, s, a)]

    def _restored_settling(self, s: Sample) -> bool:
        """The plugin just restored has not run long enough for its cap to be judged: a burner
        held at a throttled cap looks calm until then, and would be called recovered."""
        last = self._last_restored
        return last is not None and last in s.plugins and s.plugins[last].settling

    def _relapse(self, s: Sample, a: Assessment) -> list[Transition]:
        """A breach while recovering: the plugin just restored is the suspect."""
        suspect = self._last_restored
        if suspect is None or suspect not in s.plugins:
            suspect = a.offender if a.offender in s.plugins else None
        if suspect is None:
            return self._shed(s, a)
        self._deny(suspect, f"breached again after restore: {a.detail}", s.wall)
        if self.hold_all:
            self.restored = [n for n in self.restored if n != suspect]
        else:
            self.held.append(suspect)
        self.strikes += 1
        self._last_restored = None
        return [self._go(BreakerState.SHEDDING,
                         f"{a.detail}; {suspect} breached again after restore: denylisted",
                         s, a)]  # fmt: skip
