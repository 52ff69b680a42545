"""hidsd.wire.limits: the dataclasses are the one source of the config schema's defaults."""

from __future__ import annotations

from dataclasses import asdict, fields

from hidsd.wire.dynconfig import BREAKER, DEFAULTS, TELEMETRY, fingerprint, parse
from hidsd.wire.limits import BreakerConfig, CgroupLimits, OnTrip, PipelineLimits


def test_breaker_schema_defaults_are_the_dataclasses_defaults() -> None:
    owned = {**asdict(BreakerConfig()), **asdict(CgroupLimits())}
    assert set(BREAKER) == set(owned)  # every threshold and limit has a schema entry
    assert DEFAULTS["breaker"] == {**owned, "on_trip": OnTrip.STOP_PLUGINS.value}
    assert type(DEFAULTS["breaker"]["on_trip"]) is str  # plain data, not the enum


def test_telemetry_schema_defaults_are_the_pipeline_defaults() -> None:
    limits = PipelineLimits()
    assert set(TELEMETRY) <= {f.name for f in fields(PipelineLimits)}
    assert DEFAULTS["telemetry"] == {k: getattr(limits, k) for k in TELEMETRY}
    # the schema takes integers there: so must the defaults be (and the fingerprint's JSON)
    assert all(type(v) is int for v in DEFAULTS["telemetry"].values())


def test_the_default_fingerprint_is_unchanged() -> None:
    """Agents and hidsctl of other versions compare it: the defaults' values and types stay."""
    assert fingerprint(DEFAULTS) == "987d569902fbf001"


def test_from_dict_reads_a_merged_breaker_table() -> None:
    table = {**DEFAULTS["breaker"], "on_trip": "exit", "throttle_nice": 5, "memory_max_mb": 900}
    assert BreakerConfig.from_dict(table) == BreakerConfig(on_trip=OnTrip.EXIT, throttle_nice=5)
    assert CgroupLimits.from_dict(table) == CgroupLimits(memory_max_mb=900)
    assert CgroupLimits.from_dict(DEFAULTS["breaker"]) == CgroupLimits()


def test_a_layer_still_validates_against_the_derived_schema() -> None:
    assert parse("[breaker]\ncpu_quota_pct = 20\n") == {"breaker": {"cpu_quota_pct": 20.0}}
