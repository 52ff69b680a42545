"""The circuit breaker's policy, driven by synthetic samples (pure: no processes, no clock)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest

from hidsd.agent.breaker import Breaker, BreakerState, PluginLoad, Resource, Sample, assess
from hidsd.wire.limits import BreakerConfig, OnTrip

S = BreakerState
CFG = BreakerConfig(
    cpu_throttle_pct=10.0,
    cpu_shed_pct=25.0,
    cpu_trip_pct=60.0,
    interval_s=1, window_s=3, grace_s=5, cooldown_s=4, cooldown_max_s=16,
                    denylist_s=100)  # fmt: skip
WANTED = {"procmon": 80, "inventory": 60, "drill": 10}


def load(cpu: float = 0.0, mb: float = 10.0, rate: float = 0.0) -> PluginLoad:
    return PluginLoad(cpu, int(mb * 2**20), rate)


class Clock:
    def __init__(self, b: Breaker) -> None:
        self.b = b
        self.t = 0.0
        self.log: list[tuple[float, BreakerState, BreakerState, str]] = []

    def run(
        self,
        seconds: float,
        plugins: Mapping[str, PluginLoad] | None = None,
        agent_cpu: float = 1.0,
        wanted: Mapping[str, int] = WANTED,
        host_cpu: float = 0.0,
        host_mem: float = 50.0,
        by_running: bool = True,
    ) -> BreakerState:
        """Feed one sample per second; plugins the breaker blocks are not running."""
        end = self.t + seconds
        while self.t < end:
            self.t += 1.0
            running = {n: p for n, p in (plugins or {}).items()
                       if not by_running or n not in self.b.blocked(wanted)}  # fmt: skip
            s = Sample(at=self.t, wall=1000.0 + self.t, agent_cpu_pct=agent_cpu,
                       agent_mem_bytes=40 << 20, plugins=running, wanted=wanted,
                       host_cpu_pressure_pct=host_cpu, host_mem_available_pct=host_mem)  # fmt: skip
            for tr in self.b.step(s):
                self.log.append((self.t, tr.old, tr.new, tr.reason))
        return self.b.state

    def states(self) -> list[BreakerState]:
        return [new for _, _, new, _ in self.log]


def calm() -> dict[str, PluginLoad]:
    return {"procmon": load(1), "inventory": load(1), "drill": load(0.5)}


@pytest.fixture
def clock() -> Iterator[Clock]:
    yield Clock(Breaker(CFG, started=0.0))


def test_assess_grades_and_blames() -> None:
    def sample(**kw: object) -> Sample:
        base: dict[str, object] = dict(at=0, wall=0, agent_cpu_pct=1.0, agent_mem_bytes=0,
                                       plugins={}, wanted={})  # fmt: skip
        base.update(kw)
        return Sample(**base)  # type: ignore[arg-type]

    assert assess(CFG, sample()).level == 0
    a = assess(CFG, sample(plugins={"a": load(cpu=14), "b": load(cpu=2)}))
    assert (a.level, a.resource, a.offender) == (1, Resource.CPU, "a")
    assert assess(CFG, sample(plugins={"a": load(cpu=30)})).level == 2
    assert assess(CFG, sample(plugins={"a": load(cpu=70)})).level == 3
    a = assess(CFG, sample(plugins={"a": load(mb=10), "leaky": load(mb=500)}))
    assert (a.level, a.resource, a.offender) == (3, Resource.MEMORY, "leaky")
    a = assess(CFG, sample(plugins={"f": load(rate=50_000)}))
    assert (a.level, a.resource, a.offender) == (1, Resource.FLOOD, "f")
    a = assess(CFG, sample(host_cpu_pressure_pct=90))
    assert (a.level, a.resource, a.offender) == (1, Resource.HOST_CPU, None)
    assert assess(CFG, sample(host_mem_available_pct=2)).resource is Resource.HOST_MEMORY
    # the agent's own CPU counts too: no plugin to blame
    a = assess(CFG, sample(agent_cpu_pct=30))
    assert (a.level, a.offender) == (2, None)


def test_grace_period_ignores_startup_spikes(clock: Clock) -> None:
    assert clock.run(4, {"procmon": load(cpu=90)}) is S.NORMAL  # grace is 5 s
    assert clock.log == []


def test_short_spikes_do_not_flap(clock: Clock) -> None:
    clock.run(6, calm())
    for _ in range(10):  # 2 s over, 1 s under, repeatedly: never a full window over
        clock.run(2, {"procmon": load(cpu=15)})
        clock.run(1, calm())
    assert clock.b.state is S.NORMAL and clock.log == []


def test_cpu_burner_goes_through_every_grade_and_back(clock: Clock) -> None:
    clock.run(6, calm())
    burn = {**calm(), "drill": load(cpu=20)}  # level 1 (>10 %), not 2 (< 25 %)
    assert clock.run(3, burn) is S.THROTTLED
    assert clock.b.throttled and clock.b.blocked(WANTED) == set()
    # throttling did not help within another window: the offender is shed, not the others
    assert clock.run(3, burn) is S.SHEDDING
    assert clock.b.blocked(WANTED) == {"drill"}
    assert "shed drill: offender (cpu)" in clock.log[-1][3]
    # calm now that it is gone: after the cool-down, half-open: drill comes back
    assert clock.run(3, burn) is S.SHEDDING
    assert clock.run(2, burn) is S.RECOVERING
    assert clock.b.blocked(WANTED) == set()
    # it burns again right away: denylisted, shed again
    assert clock.run(3, burn) is S.SHEDDING
    assert "drill" in clock.b.denylist and clock.b.blocked(WANTED) == {"drill"}
    # nothing else to restore: back to normal, drill stays off until the denylist expires
    clock.run(20, burn)
    assert clock.b.state is S.NORMAL and not clock.b.throttled
    assert clock.b.blocked(WANTED) == {"drill"}
    assert clock.states() == [S.THROTTLED, S.SHEDDING, S.RECOVERING, S.SHEDDING, S.NORMAL]
    first_until = clock.b.denylist["drill"][0]
    clock.run(100, burn)  # the denylist expires (100 s): drill runs again, and is caught again
    assert clock.b.denylist["drill"][0] > first_until
    assert clock.states()[5:7] == [S.THROTTLED, S.SHEDDING]


def test_memory_leak_trips_denylists_and_recovers_one_at_a_time(clock: Clock) -> None:
    clock.run(6, calm())
    leak = {**calm(), "drill": load(mb=500)}
    assert clock.run(3, leak) is S.TRIPPED
    assert clock.b.blocked(WANTED) == set(WANTED)  # every plugin stopped
    assert "drill" in clock.b.denylist and "trip: agent+plugins memory" in clock.b.reason
    # cool-down (4 s, first strike) then one plugin per calm window, most important first
    assert clock.run(4, leak) is S.RECOVERING
    assert clock.b.blocked(WANTED) == {"inventory", "drill"}
    clock.run(3, leak)
    assert clock.b.blocked(WANTED) == {"drill"}
    assert clock.run(3, leak) is S.NORMAL
    assert clock.states() == [S.TRIPPED, S.RECOVERING, S.NORMAL]


def test_flood_is_throttled_then_shed(clock: Clock) -> None:
    clock.run(6, calm())
    flood = {**calm(), "drill": load(rate=60_000)}
    assert clock.run(3, flood) is S.THROTTLED
    assert clock.run(3, flood) is S.SHEDDING and clock.b.blocked(WANTED) == {"drill"}


def test_shedding_without_an_offender_goes_least_important_first(clock: Clock) -> None:
    clock.run(6, calm())
    # the host is under pressure and no plugin stands out: throttle, then shed by priority
    assert clock.run(3, calm(), host_cpu=95) is S.THROTTLED
    clock.run(3, calm(), host_cpu=95)
    assert clock.b.state is S.SHEDDING


def test_agent_alone_over_the_line_trips_when_nothing_is_left(clock: Clock) -> None:
    clock.run(6, calm())
    clock.run(3 * 5, calm(), agent_cpu=15)
    assert clock.b.state is S.TRIPPED and clock.b.denylist == {}


def test_backoff_doubles_with_strikes() -> None:
    b = Breaker(CFG, 0.0)
    assert b.cooldown_s() == 4
    b.strikes = 3
    assert b.cooldown_s() == 16
    b.strikes = 10
    assert b.cooldown_s() == 16  # capped


def test_exit_on_trip() -> None:
    c = Clock(Breaker(_cfg(on_trip=OnTrip.EXIT), 0.0))
    c.run(6, calm())
    c.run(3, {"drill": load(cpu=300)})
    assert c.b.state is S.TRIPPED and c.b.exit_reason and "drill" in c.b.exit_reason


def _cfg(**kw: object) -> BreakerConfig:
    from dataclasses import replace

    return replace(CFG, **kw)  # type: ignore[arg-type]


def test_operator_clear_and_disable(clock: Clock) -> None:
    clock.run(6, calm())
    clock.run(3, {**calm(), "drill": load(cpu=300)})
    assert clock.b.state is S.TRIPPED and "drill" in clock.b.denylist
    assert clock.b.clear("drill") and not clock.b.clear("drill")
    assert "drill" not in clock.b.denylist
    clock.b.cfg = _cfg(enabled=False)
    clock.run(1, calm())
    assert clock.b.state is S.NORMAL and clock.b.blocked(WANTED) == set()


def test_config_from_dict_ignores_kernel_limits() -> None:
    from hidsd.wire.dynconfig import DEFAULTS

    cfg = BreakerConfig.from_dict(DEFAULTS["breaker"])
    assert cfg == BreakerConfig()


def test_report_shape(clock: Clock) -> None:
    clock.run(6, calm())
    clock.run(3, {**calm(), "drill": load(mb=500)})
    r = clock.b.report(clock.t, 1000.0 + clock.t)
    assert r.state == "tripped" and r.hold_all and r.held == ("*",)
    assert r.denylist["drill"].in_s == 100 and r.strikes == 1


def test_a_plugin_pinned_at_its_cgroup_cap_is_throttled_then_shed(clock: Clock) -> None:
    """With cgroups the kernel holds a burner to its cap, under every CPU threshold; sitting
    at the cap window after window is the breach (otherwise throttling would flap)."""
    clock.run(6, calm())
    pinned = {**calm(), "drill": PluginLoad(2.4, 10 << 20, 0.0, cap_pct=2.5)}
    assert clock.run(3, pinned) is S.THROTTLED
    assert "drill pinned at its CPU cap" in clock.log[-1][3]
    assert clock.run(3, pinned) is S.SHEDDING and clock.b.blocked(WANTED) == {"drill"}
    # a plugin well under its cap is not pinned
    c2 = Clock(Breaker(CFG, 0.0))
    c2.run(6, {**calm(), "drill": PluginLoad(1.0, 10 << 20, 0.0, cap_pct=10.0)})
    assert c2.b.state is S.NORMAL


def test_a_restored_burner_is_judged_before_recovery_calls_it_calm(clock: Clock) -> None:
    """The cap of a plugin counts once it has run a window (its start-up may sit at a cap the
    throttle cut): a restored burner looks calm until then, so recovering waits for it and
    then denylists it, rather than calling it recovered and shedding it again and again."""
    clock.run(6, calm())
    pinned = {**calm(), "drill": PluginLoad(2.4, 10 << 20, 0.0, cap_pct=2.5)}
    clock.run(3, pinned)
    assert clock.run(3, pinned) is S.SHEDDING
    clock.run(4, calm())  # the cool-down: drill held
    assert clock.b.state is S.RECOVERING and clock.b.blocked(WANTED) == set()
    young = {**calm(), "drill": PluginLoad(2.4, 10 << 20, 0.0, cap_pct=None, settling=True)}
    assert clock.run(4, young) is S.RECOVERING  # a calm window, but drill not judged yet
    assert clock.run(3, pinned) is S.SHEDDING
    assert "drill breached again after restore: denylisted" in clock.log[-1][3]
    assert "drill" in clock.b.denylist
