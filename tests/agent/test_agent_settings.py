"""hidsd.agent.settings: bootstrap TOML + HIDSD_* overrides; every error names its field."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from hidsd.agent.settings import (
    DEFAULT_ETCD_ENDPOINTS,
    DEFAULT_NATS_SERVERS,
    AgentSettings,
    load_agent_settings,
    read_machine_id,
)
from hidsd.base.errors import ConfigError
from hidsd.wire.commands import MAX_COMMAND_BYTES
from hidsd.wire.names import DEFAULT_KEY_PREFIX, DEFAULT_SUBJECT_PREFIX
from hidsd.wire.signing import OperatorKey, encode_public_key

PUB = encode_public_key(OperatorKey.generate().public_key)
PUB2 = encode_public_key(OperatorKey.generate().public_key)

BASE = f"""
host_id = "web-1"
groups = ["web", "eu"]
trusted_keys = ["{PUB}"]
"""

FULL = f"""
host_id = "web-1"
groups = ["web", "eu"]
trusted_keys = ["{PUB}", "{PUB2}"]
data_dir = "/tmp/hidsd-data"
subject_prefix = "t1.hidsd"
key_prefix = "/t1/"
heartbeat_s = 2
resync_s = 30.5
watch = false
max_command_bytes = 4096
shutdown_timeout_s = 1.5
log_level = "DEBUG"
log_format = "json"

[nats]
servers = ["nats://a:4222", "nats://b:4222"]
user = "agent"
password = "secret"
token = "tok"
reconnect_base_s = 0.5
reconnect_max_s = 5
connect_timeout_s = 1

[etcd]
endpoints = ["a:2379", "b:2379"]
user = "agent"
password = "pw"
timeout_s = 2
"""


@pytest.fixture
def no_machine_id(tmp_path: Path) -> tuple[Path, ...]:
    return (tmp_path / "missing-machine-id", tmp_path / "missing-dbus-machine-id")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def load(
    tmp_path: Path,
    text: str,
    env: dict[str, str] | None = None,
    machine_id_paths: tuple[Path, ...] | None = None,
) -> AgentSettings:
    paths = machine_id_paths or (tmp_path / "no-machine-id",)
    return load_agent_settings(write(tmp_path, text), env=env or {}, machine_id_paths=paths)


def config_error(
    tmp_path: Path,
    text: str,
    env: dict[str, str] | None = None,
    machine_id_paths: tuple[Path, ...] | None = None,
) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        load(tmp_path, text, env, machine_id_paths)
    return ei.value


# --------------------------------------------------------------------------- valid files


def test_minimal_file_uses_defaults(tmp_path: Path) -> None:
    s = load(tmp_path, BASE)
    assert s.host_id == "web-1"
    assert s.groups == ("web", "eu")
    assert s.trusted_keys == (PUB,)
    assert s.nats.servers == DEFAULT_NATS_SERVERS
    assert s.nats.user is None
    assert s.nats.reconnect_base_s == 0.2
    assert s.etcd.endpoints == DEFAULT_ETCD_ENDPOINTS
    assert s.etcd.timeout_s == 3.0
    assert s.data_dir == Path("/var/lib/hidsd")
    assert s.subject_prefix == DEFAULT_SUBJECT_PREFIX
    assert s.key_prefix == DEFAULT_KEY_PREFIX
    assert s.heartbeat_s == 10.0
    assert s.resync_s == 60.0
    assert s.watch is True
    assert s.max_command_bytes == MAX_COMMAND_BYTES
    assert s.log_level == "info"
    assert s.log_format == "auto"


def test_full_file(tmp_path: Path) -> None:
    s = load(tmp_path, FULL)
    assert s.trusted_keys == (PUB, PUB2)
    assert s.data_dir == Path("/tmp/hidsd-data")
    assert s.subject_prefix == "t1.hidsd"
    assert s.key_prefix == "/t1/"
    assert s.heartbeat_s == 2.0
    assert isinstance(s.heartbeat_s, float)
    assert s.resync_s == 30.5
    assert s.watch is False
    assert s.max_command_bytes == 4096
    assert s.shutdown_timeout_s == 1.5
    assert s.log_level == "debug"
    assert s.log_format == "json"
    assert s.nats.servers == ("nats://a:4222", "nats://b:4222")
    assert (s.nats.user, s.nats.password, s.nats.token) == ("agent", "secret", "tok")
    assert (s.nats.reconnect_base_s, s.nats.reconnect_max_s, s.nats.connect_timeout_s) == (
        0.5,
        5.0,
        1.0,
    )
    assert s.etcd.endpoints == ("a:2379", "b:2379")
    assert (s.etcd.user, s.etcd.password, s.etcd.timeout_s) == ("agent", "pw", 2.0)


def test_no_file_with_env_only(tmp_path: Path) -> None:
    env = {"HIDSD_HOST_ID": "h1", "HIDSD_TRUSTED_KEYS": f"{PUB}, {PUB2}"}
    s = load_agent_settings(None, env=env, machine_id_paths=(tmp_path / "none",))
    assert s.host_id == "h1"
    assert s.groups == ()
    assert s.trusted_keys == (PUB, PUB2)


# --------------------------------------------------------------------------- host id


def test_host_id_falls_back_to_machine_id(tmp_path: Path) -> None:
    first = tmp_path / "machine-id"
    first.write_text("  \n")  # blank: skipped
    second = tmp_path / "dbus-machine-id"
    second.write_text("0123456789abcdef0123456789abcdef\n")
    text = BASE.replace('host_id = "web-1"\n', "")
    s = load(tmp_path, text, machine_id_paths=(tmp_path / "missing", first, second))
    assert s.host_id == "0123456789abcdef0123456789abcdef"


def test_explicit_host_id_wins_over_machine_id(tmp_path: Path) -> None:
    mid = tmp_path / "machine-id"
    mid.write_text("abc\n")
    assert load(tmp_path, BASE, machine_id_paths=(mid,)).host_id == "web-1"


def test_read_machine_id(tmp_path: Path) -> None:
    assert read_machine_id((tmp_path / "a", tmp_path / "b")) is None
    (tmp_path / "b").write_text("xyz\n")
    assert read_machine_id((tmp_path / "a", tmp_path / "b")) == "xyz"


def test_no_host_id_and_no_machine_id(tmp_path: Path, no_machine_id: tuple[Path, ...]) -> None:
    text = BASE.replace('host_id = "web-1"\n', "")
    err = config_error(tmp_path, text, machine_id_paths=no_machine_id)
    assert err.fields["field"] == "host_id"


def test_empty_host_id_and_no_machine_id(tmp_path: Path) -> None:
    err = config_error(tmp_path, BASE.replace('"web-1"', '""'))
    assert err.fields["field"] == "host_id"


@pytest.mark.parametrize("host", ["web.1", "web 1", "web*", "web>", "x" * 129])
def test_bad_host_id(tmp_path: Path, host: str) -> None:
    err = config_error(tmp_path, BASE.replace('"web-1"', f'"{host}"'))
    assert err.fields["field"] == "host_id"


def test_bad_machine_id_is_reported_as_host_id(tmp_path: Path) -> None:
    mid = tmp_path / "machine-id"
    mid.write_text("not.a.name\n")
    text = BASE.replace('host_id = "web-1"\n', "")
    assert config_error(tmp_path, text, machine_id_paths=(mid,)).fields["field"] == "host_id"


def test_host_id_with_trailing_newline(tmp_path: Path) -> None:
    err = config_error(tmp_path, BASE, env={"HIDSD_HOST_ID": "web-1\n"})
    assert err.fields["field"] == "host_id"


@pytest.mark.parametrize("group", ["a.b", "a b", "*", ">"])
def test_bad_group_name(tmp_path: Path, group: str) -> None:
    err = config_error(tmp_path, BASE.replace('"eu"', f'"{group}"'))
    assert err.fields["field"] == "groups"


# --------------------------------------------------------------------------- bad fields


BAD_FIELDS: list[tuple[str, str]] = [
    ("host_id = 5", "host_id"),
    ('groups = "web"', "groups"),
    ("groups = [1]", "groups"),
    ('groups = [""]', "groups"),
    ('trusted_keys = "abc"', "trusted_keys"),
    ("trusted_keys = []", "trusted_keys"),
    ('trusted_keys = ["not base64!"]', "trusted_keys"),
    (f'trusted_keys = ["{base64.b64encode(b"k" * 16).decode()}"]', "trusted_keys"),
    ("data_dir = 1", "data_dir"),
    ('subject_prefix = ["x"]', "subject_prefix"),
    ('key_prefix = "hidsd"', "key_prefix"),
    ('key_prefix = "/hidsd"', "key_prefix"),
    ("key_prefix = 3", "key_prefix"),
    ('heartbeat_s = "10"', "heartbeat_s"),
    ("heartbeat_s = 0", "heartbeat_s"),
    ("heartbeat_s = -1", "heartbeat_s"),
    ("heartbeat_s = true", "heartbeat_s"),
    ("resync_s = -0.5", "resync_s"),
    ("resync_s = [1]", "resync_s"),
    ('watch = "yes"', "watch"),
    ("watch = 1", "watch"),
    ("max_command_bytes = 100", "max_command_bytes"),
    ("max_command_bytes = -1", "max_command_bytes"),
    ("max_command_bytes = 4096.0", "max_command_bytes"),
    ("max_command_bytes = true", "max_command_bytes"),
    ("shutdown_timeout_s = 0", "shutdown_timeout_s"),
    ('log_level = "verbose"', "log_level"),
    ("log_level = 10", "log_level"),
    ('log_format = "xml"', "log_format"),
    ("bogus = 1", "bogus"),
    ("nats = 5", "nats"),
    ('etcd = "x"', "etcd"),
]


@pytest.mark.parametrize(("line", "field"), BAD_FIELDS)
def test_bad_top_level_field(tmp_path: Path, line: str, field: str) -> None:
    key = line.split("=", 1)[0].strip()
    kept = "\n".join(ln for ln in BASE.splitlines() if not ln.startswith(f"{key} ="))
    mid = tmp_path / "machine-id"
    mid.write_text("fallback\n")  # so a removed host_id does not hide the real error
    err = config_error(tmp_path, f"{line}\n{kept}\n", machine_id_paths=(mid,))
    assert err.fields["field"] == field


BAD_TABLE_FIELDS: list[tuple[str, str, str]] = [
    ("nats", 'servers = "nats://a:4222"', "nats.servers"),
    ("nats", "servers = []", "nats.servers"),
    ("nats", "servers = [1]", "nats.servers"),
    ("nats", 'servers = [""]', "nats.servers"),
    ("nats", "user = 1", "nats.user"),
    ("nats", "password = true", "nats.password"),
    ("nats", "token = []", "nats.token"),
    ("nats", "reconnect_base_s = -1", "nats.reconnect_base_s"),
    ("nats", "reconnect_max_s = 0", "nats.reconnect_max_s"),
    ("nats", 'connect_timeout_s = "2"', "nats.connect_timeout_s"),
    ("etcd", 'endpoints = "a:2379"', "etcd.endpoints"),
    ("etcd", "endpoints = []", "etcd.endpoints"),
    ("etcd", "user = 0", "etcd.user"),
    ("etcd", "password = 1.5", "etcd.password"),
    ("etcd", "timeout_s = -3", "etcd.timeout_s"),
    ("etcd", "timeout_s = false", "etcd.timeout_s"),
]


@pytest.mark.parametrize(("table", "line", "field"), BAD_TABLE_FIELDS)
def test_bad_table_field(tmp_path: Path, table: str, line: str, field: str) -> None:
    err = config_error(tmp_path, f"{BASE}\n[{table}]\n{line}\n")
    assert err.fields["field"] == field


@pytest.mark.parametrize("table", ["nats", "etcd"])
def test_unknown_key_in_table(tmp_path: Path, table: str) -> None:
    err = config_error(tmp_path, f"{BASE}\n[{table}]\nbogus = 1\n")
    assert err.fields["field"].endswith("bogus")
    assert f"[{table}]" in err.message


@pytest.mark.parametrize("table", ["nats", "etcd"])
def test_unknown_key_in_table_is_qualified(tmp_path: Path, table: str) -> None:
    err = config_error(tmp_path, f"{BASE}\n[{table}]\nbogus = 1\n")
    assert err.fields["field"] == f"{table}.bogus"


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_number(tmp_path: Path, value: str) -> None:
    err = config_error(tmp_path, f"{BASE}heartbeat_s = {value}\n")
    assert err.fields["field"] == "heartbeat_s"


def test_bad_nats_table_with_host_id_from_env(tmp_path: Path) -> None:
    text = BASE.replace('host_id = "web-1"\n', "") + "nats = 5\n"
    err = config_error(tmp_path, text, env={"HIDSD_HOST_ID": "h1"})
    assert err.fields["field"] == "nats"


def test_invalid_toml(tmp_path: Path) -> None:
    err = config_error(tmp_path, 'host_id = "web-1\n[nats\n')
    assert err.fields["field"] == "path"
    assert "not valid TOML" in err.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        load_agent_settings(tmp_path / "absent.toml", env={}, machine_id_paths=())
    assert ei.value.fields["field"] == "path"
    assert "absent.toml" in ei.value.message


def test_trusted_keys_error_tells_what_to_do(tmp_path: Path) -> None:
    err = config_error(tmp_path, 'host_id = "h"\n')
    assert err.fields["field"] == "trusted_keys"
    assert "hidsctl keys show" in err.message


# --------------------------------------------------------------------------- env overrides


def test_env_overrides_file(tmp_path: Path) -> None:
    env = {
        "HIDSD_HOST_ID": "db-7",
        "HIDSD_GROUPS": "db, prod,,",
        "HIDSD_NATS_SERVERS": "nats://x:1, nats://y:2",
        "HIDSD_NATS_USER": "u",
        "HIDSD_NATS_PASSWORD": "p",
        "HIDSD_ETCD_ENDPOINTS": "e1:2379,e2:2379",
        "HIDSD_ETCD_USER": "eu",
        "HIDSD_ETCD_PASSWORD": "ep",
        "HIDSD_DATA_DIR": str(tmp_path / "data"),
        "HIDSD_LOG_LEVEL": "warning",
        "HIDSD_LOG_FORMAT": "console",
        "HIDSD_HEARTBEAT_S": "0.5",
        "HIDSD_RESYNC_S": "7",
        "UNRELATED": "ignored",
    }
    s = load(tmp_path, FULL, env=env)
    assert s.host_id == "db-7"
    assert s.groups == ("db", "prod")
    assert s.nats.servers == ("nats://x:1", "nats://y:2")
    assert (s.nats.user, s.nats.password) == ("u", "p")
    assert s.nats.token == "tok"  # not overridden
    assert s.etcd.endpoints == ("e1:2379", "e2:2379")
    assert (s.etcd.user, s.etcd.password) == ("eu", "ep")
    assert s.data_dir == tmp_path / "data"
    assert s.log_level == "warning"
    assert s.log_format == "console"
    assert s.heartbeat_s == 0.5
    assert s.resync_s == 7.0


def test_env_empty_groups_clears_them(tmp_path: Path) -> None:
    assert load(tmp_path, BASE, env={"HIDSD_GROUPS": ""}).groups == ()


def test_env_empty_server_list(tmp_path: Path) -> None:
    err = config_error(tmp_path, BASE, env={"HIDSD_NATS_SERVERS": " , "})
    assert err.fields["field"] == "nats.servers"


@pytest.mark.parametrize("var", ["HIDSD_HEARTBEAT_S", "HIDSD_RESYNC_S"])
@pytest.mark.parametrize("value", ["ten", "", "1s"])
def test_env_non_numeric(tmp_path: Path, var: str, value: str) -> None:
    err = config_error(tmp_path, BASE, env={var: value})
    assert err.fields["field"] == var


def test_env_negative_heartbeat(tmp_path: Path) -> None:
    err = config_error(tmp_path, BASE, env={"HIDSD_HEARTBEAT_S": "-1"})
    assert err.fields["field"] == "heartbeat_s"


def test_env_bad_group_and_bad_key(tmp_path: Path) -> None:
    assert config_error(tmp_path, BASE, env={"HIDSD_GROUPS": "ok,b.ad"}).fields["field"] == (
        "groups"
    )
    assert config_error(tmp_path, BASE, env={"HIDSD_TRUSTED_KEYS": "zz"}).fields["field"] == (
        "trusted_keys"
    )


def test_env_bad_log_level(tmp_path: Path) -> None:
    err = config_error(tmp_path, BASE, env={"HIDSD_LOG_LEVEL": "loud"})
    assert err.fields["field"] == "log_level"


def test_cgroup_settings(tmp_path: Path) -> None:
    s = load(tmp_path, BASE)
    assert (s.cgroups, s.cgroup_name) == ("auto", "hidsd")
    s = load(tmp_path, BASE + 'cgroups = "OFF"\ncgroup_name = "hidsd-2.a"\n')
    assert (s.cgroups, s.cgroup_name) == ("off", "hidsd-2.a")
    assert load(tmp_path, BASE, env={"HIDSD_CGROUPS": "cgroup-v1"}).cgroups == "cgroup-v1"
    assert config_error(tmp_path, BASE + 'cgroups = "v3"\n').fields["field"] == "cgroups"
    for bad in ("../escape", "a/b", ".hidden"):
        err = config_error(tmp_path, BASE + f"cgroup_name = {bad!r}\n".replace("'", '"'))
        assert err.fields["field"] == "cgroup_name", bad
