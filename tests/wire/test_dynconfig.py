"""hidsd.wire.dynconfig: schema validation, layered merge, fingerprint and digest (pure)."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest

from hidsd.base.errors import ConfigError
from hidsd.wire import dynconfig
from hidsd.wire.dynconfig import (
    DEFAULTS,
    check_effective,
    digest,
    fingerprint,
    merge,
    parse,
    validate,
)


def error_field(text: str) -> str:
    """Parse `text`, which must be invalid, and return the field the ConfigError names."""
    with pytest.raises(ConfigError) as ei:
        parse(text)
    assert ei.value.code == "config"
    field: str = ei.value.fields["field"]
    assert field in ei.value.message or field == "toml"
    return field


def leaves(prefix: str, value: Any) -> set[str]:
    """Dotted paths of every leaf of a config, with `params` tables counted as one leaf."""
    if isinstance(value, dict) and prefix != "params" and not prefix.endswith(".params"):
        out: set[str] = set()
        for k, v in value.items():
            out |= leaves(f"{prefix}.{k}" if prefix else k, v)
        return out
    return {prefix}


# --------------------------------------------------------------------------- parse: valid


def test_parse_empty_is_empty() -> None:
    assert parse("") == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('log_level = "debug"', {"log_level": "debug"}),
        ('log_level = "WARNING"', {"log_level": "warning"}),
        ('log_level = "Error"', {"log_level": "error"}),
        ('log_level = "info"', {"log_level": "info"}),
        ("heartbeat_s = 5.0", {"heartbeat_s": 5.0}),
        ("heartbeat_s = 5", {"heartbeat_s": 5.0}),
        ("resync_s = 120", {"resync_s": 120.0}),
    ],
)
def test_parse_top_level_keys(text: str, expected: dict[str, Any]) -> None:
    out = parse(text)
    assert out == expected
    for key, value in expected.items():
        assert type(out[key]) is type(value)


def test_parse_numbers_are_normalized_to_float() -> None:
    out = parse("heartbeat_s = 3\nresync_s = 30")
    assert isinstance(out["heartbeat_s"], float)
    assert isinstance(out["resync_s"], float)


def test_parse_full_example() -> None:
    text = """
log_level = "debug"
heartbeat_s = 5.0
resync_s = 30

[telemetry]
rate_per_s = 2000
burst = 4000
batch_max_records = 100
batch_max_ms = 50
spool_max_bytes = 0

[plugins.procmon]
enabled = false
params = { scan_interval_s = 2, paths = ["/bin", "/usr/bin"], nested = { a = 1 } }
priority = 10
rate_per_s = 0.5
burst = 3
policy = "drop"

[plugins.net-mon_2]
enabled = true
policy = "block"
"""
    assert parse(text) == {
        "log_level": "debug",
        "heartbeat_s": 5.0,
        "resync_s": 30.0,
        "telemetry": {
            "rate_per_s": 2000,
            "burst": 4000,
            "batch_max_records": 100,
            "batch_max_ms": 50,
            "spool_max_bytes": 0,
        },
        "plugins": {
            "procmon": {
                "enabled": False,
                "params": {"scan_interval_s": 2, "paths": ["/bin", "/usr/bin"], "nested": {"a": 1}},
                "priority": 10,
                "rate_per_s": 0.5,
                "burst": 3.0,
                "policy": "drop",
            },
            "net-mon_2": {"enabled": True, "policy": "block"},
        },
    }


def test_parse_only_what_is_given() -> None:
    out = parse("[telemetry]\nburst = 7\n[plugins.x]\n")
    assert out == {"telemetry": {"burst": 7}, "plugins": {"x": {}}}


def test_parse_empty_tables() -> None:
    assert parse("[telemetry]\n[plugins]\n") == {"telemetry": {}, "plugins": {}}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("heartbeat_s", 0.2),
        ("heartbeat_s", 3600),
        ("resync_s", 1),
        ("resync_s", 86400),
    ],
)
def test_parse_top_numbers_at_bounds(key: str, value: float) -> None:
    assert parse(f"{key} = {value}") == {key: float(value)}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("rate_per_s", 1),
        ("rate_per_s", 10_000_000),
        ("burst", 1),
        ("burst", 10_000_000),
        ("batch_max_records", 1),
        ("batch_max_records", 100_000),
        ("batch_max_ms", 1),
        ("batch_max_ms", 60_000),
        ("spool_max_bytes", 0),
        ("spool_max_bytes", 1 << 40),
    ],
)
def test_parse_telemetry_at_bounds(key: str, value: int) -> None:
    out = parse(f"[telemetry]\n{key} = {value}")
    assert out == {"telemetry": {key: value}}
    assert type(out["telemetry"][key]) is int


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("enabled", "true", True),
        ("enabled", "false", False),
        ("priority", "0", 0),
        ("priority", "100", 100),
        ("rate_per_s", "0.1", 0.1),
        ("rate_per_s", "10000000", 10_000_000.0),
        ("burst", "1", 1.0),
        ("burst", "10000000", 10_000_000.0),
        ("policy", '"block"', "block"),
        ("policy", '"drop"', "drop"),
        ("params", "{}", {}),
        ("params", '{ a = 1, b = "x", c = [1, 2], d = { e = true } }',
         {"a": 1, "b": "x", "c": [1, 2], "d": {"e": True}}),
    ],
)  # fmt: skip
def test_parse_plugin_settings(key: str, value: str, expected: Any) -> None:
    out = parse(f"[plugins.procmon]\n{key} = {value}")
    assert out == {"plugins": {"procmon": {key: expected}}}


@pytest.mark.parametrize("name", ["a", "procmon", "net-mon", "fs_watch", "x9", "a" + "b" * 63])
def test_parse_valid_plugin_names(name: str) -> None:
    assert parse(f'[plugins."{name}"]\nenabled = true') == {"plugins": {name: {"enabled": True}}}


def test_parse_params_subtable_syntax() -> None:
    text = "[plugins.procmon.params]\nscan_interval_s = 2\n[plugins.procmon.params.deep]\nk = 1\n"
    assert parse(text) == {
        "plugins": {"procmon": {"params": {"scan_interval_s": 2, "deep": {"k": 1}}}}
    }


def test_validate_returns_a_copy_of_the_structure() -> None:
    data: dict[str, Any] = {"telemetry": {"burst": 5}, "plugins": {"p": {"enabled": True}}}
    out = validate(data)
    assert out == data
    assert out is not data
    assert out["telemetry"] is not data["telemetry"]
    assert out["plugins"]["p"] is not data["plugins"]["p"]


# --------------------------------------------------------------------------- parse: invalid


@pytest.mark.parametrize(
    ("text", "field"),
    [
        # wrong types at the top level
        ("log_level = 5", "log_level"),
        ('log_level = "verbose"', "log_level"),
        ('log_level = ""', "log_level"),
        ('log_level = ["debug"]', "log_level"),
        ("log_level = true", "log_level"),
        ('heartbeat_s = "5"', "heartbeat_s"),
        ("heartbeat_s = [5]", "heartbeat_s"),
        ("heartbeat_s = { a = 1 }", "heartbeat_s"),
        ("heartbeat_s = 1979-05-27", "heartbeat_s"),
        ('resync_s = "60"', "resync_s"),
        # bool where a number is expected
        ("heartbeat_s = true", "heartbeat_s"),
        ("resync_s = false", "resync_s"),
        ("[telemetry]\nrate_per_s = true", "telemetry.rate_per_s"),
        ("[telemetry]\nspool_max_bytes = false", "telemetry.spool_max_bytes"),
        ("[plugins.p]\npriority = true", "plugins.p.priority"),
        ("[plugins.p]\nrate_per_s = true", "plugins.p.rate_per_s"),
        ("[plugins.p]\nburst = false", "plugins.p.burst"),
        # NaN and infinities
        ("heartbeat_s = nan", "heartbeat_s"),
        ("heartbeat_s = inf", "heartbeat_s"),
        ("heartbeat_s = -inf", "heartbeat_s"),
        ("resync_s = +nan", "resync_s"),
        ("resync_s = inf", "resync_s"),
        ("[plugins.p]\nrate_per_s = nan", "plugins.p.rate_per_s"),
        ("[plugins.p]\nburst = inf", "plugins.p.burst"),
        ("[telemetry]\nrate_per_s = inf", "telemetry.rate_per_s"),
        ("[telemetry]\nburst = nan", "telemetry.burst"),
        # floats where an integer is expected
        ("[telemetry]\nrate_per_s = 1000.0", "telemetry.rate_per_s"),
        ("[telemetry]\nbatch_max_ms = 1.5", "telemetry.batch_max_ms"),
        ("[plugins.p]\npriority = 1.0", "plugins.p.priority"),
        ('[telemetry]\nburst = "10"', "telemetry.burst"),
        # plugin settings of the wrong type
        ('[plugins.p]\nenabled = "yes"', "plugins.p.enabled"),
        ("[plugins.p]\nenabled = 1", "plugins.p.enabled"),
        ('[plugins.p]\npolicy = "reject"', "plugins.p.policy"),
        ('[plugins.p]\npolicy = "BLOCK"', "plugins.p.policy"),
        ("[plugins.p]\npolicy = 1", "plugins.p.policy"),
        ('[plugins.p]\npolicy = ["drop"]', "plugins.p.policy"),
    ],
)
def test_parse_rejects_bad_values(text: str, field: str) -> None:
    assert error_field(text) == field


@pytest.mark.parametrize(
    ("key", "low", "high"),
    [
        ("heartbeat_s", "0.19", "3600.01"),
        ("heartbeat_s", "0", "3601"),
        ("heartbeat_s", "-1", "1e9"),
        ("resync_s", "0.99", "86400.5"),
        ("resync_s", "-86400", "86401"),
    ],
)
def test_parse_top_numbers_out_of_range(key: str, low: str, high: str) -> None:
    assert error_field(f"{key} = {low}") == key
    assert error_field(f"{key} = {high}") == key


@pytest.mark.parametrize(
    ("key", "low", "high"),
    [
        ("rate_per_s", 0, 10_000_001),
        ("burst", 0, 10_000_001),
        ("batch_max_records", 0, 100_001),
        ("batch_max_ms", 0, 60_001),
        ("spool_max_bytes", -1, (1 << 40) + 1),
        ("rate_per_s", -5, 2**62),
    ],
)
def test_parse_telemetry_out_of_range(key: str, low: int, high: int) -> None:
    assert error_field(f"[telemetry]\n{key} = {low}") == f"telemetry.{key}"
    assert error_field(f"[telemetry]\n{key} = {high}") == f"telemetry.{key}"


@pytest.mark.parametrize(
    ("key", "low", "high"),
    [
        ("priority", "-1", "101"),
        ("rate_per_s", "0.09", "10000000.5"),
        ("rate_per_s", "0", "20000000"),
        ("burst", "0.99", "10000001"),
    ],
)
def test_parse_plugin_numbers_out_of_range(key: str, low: str, high: str) -> None:
    assert error_field(f"[plugins.p]\n{key} = {low}") == f"plugins.p.{key}"
    assert error_field(f"[plugins.p]\n{key} = {high}") == f"plugins.p.{key}"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("bogus = 1", "bogus"),
        ("Log_level = 'info'", "Log_level"),
        ("heartbeat = 5", "heartbeat"),
        ("[agent]\nx = 1", "agent"),
        ("[telemetry]\nrate = 5", "telemetry.rate"),
        ("[telemetry]\nrate_per_s = 5\nzzz = 1", "telemetry.zzz"),
        ("[telemetry.sub]\nx = 1", "telemetry.sub"),
        ("[plugins.p]\nenable = true", "plugins.p.enable"),
        ("[plugins.p]\nparams = {}\nextra = 1", "plugins.p.extra"),
        ("[plugins.p.other]\nx = 1", "plugins.p.other"),
    ],
)
def test_parse_rejects_unknown_keys(text: str, field: str) -> None:
    assert error_field(text) == field


def test_unknown_key_error_lists_the_known_keys() -> None:
    with pytest.raises(ConfigError) as ei:
        parse("[telemetry]\nrate = 5")
    for known in dynconfig.TELEMETRY:
        assert known in ei.value.message


def test_unknown_keys_reported_in_sorted_order() -> None:
    assert error_field("zeta = 1\nalpha = 2") == "alpha"


@pytest.mark.parametrize(
    "name",
    [
        "Procmon",
        "PROCMON",
        "1abc",
        "-x",
        "_x",
        "a" * 65,
        "a.b",
        "a b",
        "a/b",
        "a*",
        "ü",
        "",
    ],
)
def test_parse_rejects_bad_plugin_names(name: str) -> None:
    assert error_field(f'[plugins."{name}"]\nenabled = true') == f"plugins.{name}"


def test_parse_rejects_plugin_name_with_trailing_newline() -> None:
    # TOML quoted key "procmon\n" is a plugin name ending in a newline; it must be refused
    # like any other character outside [a-z0-9_-] (plugin names become subject tokens).
    assert error_field('[plugins."procmon\\n"]\nenabled = true') == "plugins.procmon\n"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("telemetry = 5", "telemetry"),
        ('telemetry = "fast"', "telemetry"),
        ("telemetry = [1, 2]", "telemetry"),
        ("[[telemetry]]\nburst = 1", "telemetry"),
        ("plugins = 5", "plugins"),
        ("plugins = true", "plugins"),
        ("[[plugins]]\nname = 'x'", "plugins"),
        ("[plugins]\nprocmon = 5", "plugins.procmon"),
        ("[plugins]\nprocmon = true", "plugins.procmon"),
        ("[plugins]\nprocmon = [1]", "plugins.procmon"),
        ("[plugins.p]\nparams = 5", "plugins.p.params"),
        ('[plugins.p]\nparams = "a=1"', "plugins.p.params"),
        ("[plugins.p]\nparams = [1, 2]", "plugins.p.params"),
        ("[[plugins.p.params]]\na = 1", "plugins.p.params"),
    ],
)
def test_parse_rejects_non_tables(text: str, field: str) -> None:
    assert error_field(text) == field


@pytest.mark.parametrize(
    "text",
    [
        "a = ",
        "[telemetry",
        "heartbeat_s = 5\nheartbeat_s = 6",
        "log_level = 'info",
        "= 5",
        "[telemetry]\n[telemetry]",
        "heartbeat_s = 5 6",
        "x = {",
    ],
)
def test_parse_invalid_toml(text: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse(text)
    assert ei.value.fields["field"] == "toml"
    assert "not valid TOML" in ei.value.message
    assert ei.value.__cause__ is not None


def test_parse_huge_integer_is_a_config_error() -> None:
    # tomllib accepts integers beyond 64 bits; one that does not fit a float must be refused
    # with ConfigError(field="heartbeat_s"), not crash with OverflowError.
    assert error_field("heartbeat_s = " + "9" * 400) == "heartbeat_s"


def test_parse_huge_integer_in_int_field_is_a_config_error() -> None:
    assert error_field("[telemetry]\nrate_per_s = " + "9" * 400) == "telemetry.rate_per_s"


def test_config_error_to_dict_carries_the_field() -> None:
    with pytest.raises(ConfigError) as ei:
        parse("[telemetry]\nburst = 0")
    d = ei.value.to_dict()
    assert d["error"] == "config"
    assert d["field"] == "telemetry.burst"


# --------------------------------------------------------------------------- merge


def test_merge_no_layers_is_defaults() -> None:
    eff, sources = merge([])
    assert eff == DEFAULTS
    assert eff is not DEFAULTS
    assert set(sources) == leaves("", DEFAULTS)
    assert set(sources.values()) == {"default"}


def test_merge_single_layer() -> None:
    eff, sources = merge([("fleet", parse('log_level = "debug"\n[telemetry]\nburst = 5'))])
    assert eff["log_level"] == "debug"
    assert eff["telemetry"]["burst"] == 5
    assert eff["telemetry"]["rate_per_s"] == DEFAULTS["telemetry"]["rate_per_s"]
    assert eff["heartbeat_s"] == DEFAULTS["heartbeat_s"]
    assert sources["log_level"] == "fleet"
    assert sources["telemetry.burst"] == "fleet"
    assert sources["telemetry.rate_per_s"] == "default"
    assert sources["heartbeat_s"] == "default"


def test_merge_later_layer_wins_key_by_key() -> None:
    fleet = parse('log_level = "warning"\nheartbeat_s = 20\nresync_s = 100')
    group = parse('log_level = "error"\nheartbeat_s = 15')
    host = parse('log_level = "debug"')
    eff, sources = merge([("fleet", fleet), ("group:web", group), ("host:h1", host)])
    assert eff["log_level"] == "debug"
    assert eff["heartbeat_s"] == 15.0
    assert eff["resync_s"] == 100.0
    assert sources["log_level"] == "host:h1"
    assert sources["heartbeat_s"] == "group:web"
    assert sources["resync_s"] == "fleet"


def test_merge_order_is_the_callers() -> None:
    a = parse("heartbeat_s = 1")
    b = parse("heartbeat_s = 2")
    assert merge([("a", a), ("b", b)])[0]["heartbeat_s"] == 2.0
    assert merge([("b", b), ("a", a)])[0]["heartbeat_s"] == 1.0
    assert merge([("b", b), ("a", a)])[1]["heartbeat_s"] == "a"


def test_merge_nested_tables_are_merged_not_replaced() -> None:
    fleet = parse("[telemetry]\nrate_per_s = 5\nburst = 10")
    host = parse("[telemetry]\nburst = 20")
    eff, sources = merge([("fleet", fleet), ("host:h1", host)])
    assert eff["telemetry"] == {
        **DEFAULTS["telemetry"],
        "rate_per_s": 5,
        "burst": 20,
    }
    assert sources["telemetry.rate_per_s"] == "fleet"
    assert sources["telemetry.burst"] == "host:h1"
    assert sources["telemetry.batch_max_ms"] == "default"


def test_merge_plugin_settings_merged_key_by_key() -> None:
    fleet = parse("[plugins.procmon]\nenabled = false\npriority = 3\npolicy = 'drop'")
    group = parse("[plugins.procmon]\npriority = 7")
    host = parse("[plugins.procmon]\nenabled = true")
    eff, sources = merge([("fleet", fleet), ("group:web", group), ("host:h1", host)])
    assert eff["plugins"]["procmon"] == {"enabled": True, "priority": 7, "policy": "drop"}
    assert sources["plugins.procmon.enabled"] == "host:h1"
    assert sources["plugins.procmon.priority"] == "group:web"
    assert sources["plugins.procmon.policy"] == "fleet"


def test_merge_params_replaced_as_a_whole() -> None:
    fleet = parse("[plugins.procmon]\nparams = { a = 1, b = 2, deep = { x = 1, y = 2 } }")
    host = parse("[plugins.procmon]\nparams = { b = 3, deep = { x = 9 } }")
    eff, sources = merge([("fleet", fleet), ("host:h1", host)])
    assert eff["plugins"]["procmon"]["params"] == {"b": 3, "deep": {"x": 9}}
    assert sources["plugins.procmon.params"] == "host:h1"
    assert not any(k.startswith("plugins.procmon.params.") for k in sources)


def test_merge_params_kept_when_later_layer_does_not_set_them() -> None:
    fleet = parse("[plugins.procmon]\nparams = { a = 1 }")
    host = parse("[plugins.procmon]\nenabled = false")
    eff, sources = merge([("fleet", fleet), ("host:h1", host)])
    assert eff["plugins"]["procmon"] == {"params": {"a": 1}, "enabled": False}
    assert sources["plugins.procmon.params"] == "fleet"
    assert sources["plugins.procmon.enabled"] == "host:h1"


def test_merge_empty_params_replace_too() -> None:
    fleet = parse("[plugins.procmon]\nparams = { a = 1 }")
    host = parse("[plugins.procmon]\nparams = {}")
    eff, sources = merge([("fleet", fleet), ("host:h1", host)])
    assert eff["plugins"]["procmon"]["params"] == {}
    assert sources["plugins.procmon.params"] == "host:h1"


def test_merge_unknown_plugin_added_by_a_layer() -> None:
    fleet = parse("[plugins.procmon]\nenabled = true")
    host = parse("[plugins.fswatch]\nenabled = false\nparams = { paths = ['/etc'] }\npriority = 1")
    eff, sources = merge([("fleet", fleet), ("host:h1", host)])
    assert eff["plugins"] == {
        "procmon": {"enabled": True},
        "fswatch": {"enabled": False, "params": {"paths": ["/etc"]}, "priority": 1},
    }
    assert sources["plugins.procmon.enabled"] == "fleet"
    assert sources["plugins.fswatch.enabled"] == "host:h1"
    assert sources["plugins.fswatch.params"] == "host:h1"
    assert sources["plugins.fswatch.priority"] == "host:h1"
    assert "plugins.fswatch" not in sources


def test_merge_sources_cover_every_leaf() -> None:
    layers = [
        ("fleet", parse('log_level = "debug"\n[plugins.a]\nparams = { x = { y = 1 } }')),
        ("group:g", parse("[telemetry]\nburst = 3\n[plugins.b]\nenabled = true")),
        ("host:h", parse("resync_s = 5\n[plugins.a]\npriority = 2")),
    ]
    eff, sources = merge(layers)
    assert set(sources) == leaves("", eff)
    assert set(sources.values()) <= {"default", "fleet", "group:g", "host:h"}
    assert sources == {
        "log_level": "fleet",
        "heartbeat_s": "default",
        "resync_s": "host:h",
        "telemetry.rate_per_s": "default",
        "telemetry.burst": "group:g",
        "telemetry.batch_max_records": "default",
        "telemetry.batch_max_ms": "default",
        "telemetry.spool_max_bytes": "default",
        "plugins.a.params": "fleet",
        "plugins.a.priority": "host:h",
        "plugins.b.enabled": "group:g",
        **{f"breaker.{k}": "default" for k in DEFAULTS["breaker"]},
    }


def test_breaker_table_validates_each_field() -> None:
    got = parse('[breaker]\ncpu_shed_pct = 30\non_trip = "exit"\nthrottle_nice = 5')
    assert got["breaker"] == {"cpu_shed_pct": 30.0, "on_trip": "exit", "throttle_nice": 5}
    for text, field in [
        ("[breaker]\nenabled = 1", "breaker.enabled"),
        ('[breaker]\non_trip = "reboot"', "breaker.on_trip"),
        ("[breaker]\nthrottle_rate_factor = 0", "breaker.throttle_rate_factor"),
        ("[breaker]\nthrottle_nice = 20", "breaker.throttle_nice"),
        ("[breaker]\ncpu_trip = 5", "breaker.cpu_trip"),
        ("breaker = 3", "breaker"),
    ]:
        with pytest.raises(ConfigError) as exc:
            parse(text)
        assert exc.value.fields["field"] == field, text


def test_breaker_cross_field_rules_apply_to_the_merge() -> None:
    # a host layer alone may lower one threshold if the fleet layer lowered the others
    fleet = parse("[breaker]\ncpu_throttle_pct = 2\ncpu_shed_pct = 3\ncpu_trip_pct = 4")
    eff, _ = merge([("fleet", fleet), ("host:h", parse("[breaker]\ncpu_trip_pct = 5"))])
    check_effective(eff)
    eff, _ = merge([("host:h", parse("[breaker]\ncpu_trip_pct = 5"))])
    with pytest.raises(ConfigError, match="thresholds must rise") as exc:
        check_effective(eff)
    assert exc.value.fields["field"] == "breaker.cpu_shed_pct"
    eff, _ = merge([("f", parse("[breaker]\nmemory_high_mb = 600\nmemory_max_mb = 500"))])
    with pytest.raises(ConfigError, match="memory_high_mb"):
        check_effective(eff)
    eff, _ = merge([("f", parse("[breaker]\ncooldown_s = 700"))])
    with pytest.raises(ConfigError, match="cooldown_s"):
        check_effective(eff)


def test_merge_layer_equal_to_default_still_credits_the_layer() -> None:
    eff, sources = merge([("fleet", parse('log_level = "info"'))])
    assert eff["log_level"] == DEFAULTS["log_level"]
    assert sources["log_level"] == "fleet"


def test_merge_does_not_mutate_inputs_or_defaults() -> None:
    defaults_before = copy.deepcopy(DEFAULTS)
    fleet = parse("[telemetry]\nburst = 5\n[plugins.p]\nenabled = true\nparams = { l = [1] }")
    host = parse(
        "[telemetry]\nrate_per_s = 9\n[plugins.p]\npriority = 4\nparams = { m = { n = 1 } }"
    )
    fleet_before, host_before = copy.deepcopy(fleet), copy.deepcopy(host)
    merge([("fleet", fleet), ("host:h", host)])
    assert fleet == fleet_before
    assert host == host_before
    assert defaults_before == DEFAULTS


def test_merge_result_shares_nothing_with_inputs() -> None:
    fleet = parse("[plugins.p]\nparams = { l = [1], d = { k = 'v' } }")
    eff, _ = merge([("fleet", fleet)])
    eff["plugins"]["p"]["params"]["l"].append(2)
    eff["plugins"]["p"]["params"]["d"]["k"] = "changed"
    eff["telemetry"]["burst"] = -1
    eff["plugins"]["new"] = {}
    assert fleet == {"plugins": {"p": {"params": {"l": [1], "d": {"k": "v"}}}}}
    assert DEFAULTS["telemetry"]["burst"] == 2000
    assert DEFAULTS["plugins"] == {}
    eff2, _ = merge([("fleet", fleet)])
    assert eff2["plugins"]["p"]["params"] == {"l": [1], "d": {"k": "v"}}
    assert eff2["telemetry"]["burst"] == 2000


def test_merge_twice_gives_equal_results() -> None:
    layers = [("fleet", parse("[plugins.p]\nenabled = true")), ("host:h", parse("heartbeat_s = 1"))]
    assert merge(layers) == merge(layers)


def test_merge_plugin_named_params_is_merged_key_by_key() -> None:
    # 'params' is a valid plugin name; its settings must merge like any other plugin's.
    fleet = parse("[plugins.params]\nenabled = false")
    host = parse("[plugins.params]\npriority = 5")
    eff, sources = merge([("fleet", fleet), ("host:h1", host)])
    assert eff["plugins"]["params"] == {"enabled": False, "priority": 5}
    assert sources["plugins.params.enabled"] == "fleet"
    assert sources["plugins.params.priority"] == "host:h1"


# --------------------------------------------------------------------------- fingerprint, digest


def test_fingerprint_is_stable_across_dict_ordering() -> None:
    a = {"x": 1, "y": {"b": 2, "a": [1, 2]}, "z": "s"}
    b = {"z": "s", "y": {"a": [1, 2], "b": 2}, "x": 1}
    assert list(a) != list(b)
    assert fingerprint(a) == fingerprint(b)


def test_fingerprint_of_merges_in_different_order_of_keys() -> None:
    one = merge([("f", parse("heartbeat_s = 2\nresync_s = 3"))])[0]
    two = merge([("f", parse("resync_s = 3\nheartbeat_s = 2"))])[0]
    assert fingerprint(one) == fingerprint(two)


def test_fingerprint_shape() -> None:
    fp = fingerprint(DEFAULTS)
    assert len(fp) == 16
    int(fp, 16)
    assert fp == fingerprint(copy.deepcopy(DEFAULTS))


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c.update(log_level="debug"),
        lambda c: c.update(heartbeat_s=10.5),
        lambda c: c["telemetry"].update(burst=2001),
        lambda c: c["plugins"].update(p={}),
        lambda c: c["telemetry"].pop("burst"),
    ],
)
def test_fingerprint_changes_when_a_value_changes(change: Any) -> None:
    base = copy.deepcopy(DEFAULTS)
    changed = copy.deepcopy(DEFAULTS)
    change(changed)
    assert changed != base
    assert fingerprint(changed) != fingerprint(base)


def test_fingerprint_distinguishes_list_order() -> None:
    assert fingerprint({"l": [1, 2]}) != fingerprint({"l": [2, 1]})


@pytest.mark.parametrize("content", ["", "log_level = 'debug'\n", "ü ∑ unicode", "a" * 10_000])
def test_digest_is_a_truncated_sha256(content: str) -> None:
    d = digest(content)
    assert d == hashlib.sha256(content.encode()).hexdigest()[:16]
    assert len(d) == 16
    assert digest(content) == d


def test_digest_depends_on_the_exact_text() -> None:
    assert digest("heartbeat_s = 5") != digest("heartbeat_s = 5\n")
    assert digest("heartbeat_s = 5") != digest("heartbeat_s = 6")
    # digest is of the content, not the parsed value: equivalent TOML digests differently
    assert parse("heartbeat_s = 5") == parse("heartbeat_s=5")
    assert digest("heartbeat_s = 5") != digest("heartbeat_s=5")
