"""hidsd.ctl.common.load_ctl_settings: flags > HIDSCTL_* env > credentials > hidsctl.toml."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hidsd.base.errors import ConfigError
from hidsd.ctl.common import load_ctl_settings


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No HIDSCTL_* from the caller; the config directory is ours."""
    for var in [v for v in os.environ if v.startswith("HIDSCTL_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "hidsd"


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hidsctl.toml"
    path.write_text(text)
    return path


def creds(path: Path, user: str, password: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'user = "{user}"\npassword = "{password}"\n')
    path.chmod(0o600)
    return path


def test_defaults(clean_env: Path) -> None:
    s = load_ctl_settings(None, None, None, None)
    assert s.nats == ("nats://127.0.0.1:4222",) and s.etcd == ("127.0.0.1:2379",)
    assert s.key_file == clean_env / "operator.key"
    assert (s.subject_prefix, s.key_prefix, s.timeout_s) == ("hidsd", "/hidsd/", 2.0)
    assert (s.etcd_user, s.etcd_password) == (None, None)


def test_file_env_flag_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = toml(tmp_path, 'nats_servers = ["nats://file:1"]\netcd_endpoints = "e1:1, e2:2"\n'
               'key_file = "/file.key"\nsubject_prefix = "t1"\ntimeout_s = 1\n')  # fmt: skip
    s = load_ctl_settings(cfg, None, None, None)
    assert (s.nats, s.etcd, s.key_file) == (("nats://file:1",), ("e1:1", "e2:2"), Path("/file.key"))
    assert (s.subject_prefix, s.timeout_s) == ("t1", 1.0)
    monkeypatch.setenv("HIDSCTL_NATS", "nats://env:1,nats://env:2")
    monkeypatch.setenv("HIDSCTL_KEY", "/env.key")
    s = load_ctl_settings(cfg, None, None, None)
    assert s.nats == ("nats://env:1", "nats://env:2") and s.key_file == Path("/env.key")
    s = load_ctl_settings(cfg, "nats://flag:1", "e9:9", Path("/flag.key"))
    assert (s.nats, s.etcd, s.key_file) == (("nats://flag:1",), ("e9:9",), Path("/flag.key"))


def test_config_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIDSCTL_CONFIG", str(toml(tmp_path, 'key_prefix = "/t1/"\n')))
    assert load_ctl_settings(None, None, None, None).key_prefix == "/t1/"


def test_env_beats_the_file_for_etcd_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = toml(tmp_path, 'etcd_user = "file-user"\netcd_password = "file-pw"\n')
    s = load_ctl_settings(cfg, None, None, None)
    assert (s.etcd_user, s.etcd_password) == ("file-user", "file-pw")
    monkeypatch.setenv("HIDSCTL_ETCD_USER", "env-user")
    monkeypatch.setenv("HIDSCTL_ETCD_PASSWORD", "env-pw")
    s = load_ctl_settings(cfg, None, None, None)
    assert (s.etcd_user, s.etcd_password) == ("env-user", "env-pw")
    s = load_ctl_settings(cfg, None, None, None, "flag-user", "flag-pw")
    assert (s.etcd_user, s.etcd_password) == ("flag-user", "flag-pw")


def test_credentials_file_ranks_between_env_and_hidsctl_toml(
    tmp_path: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = toml(tmp_path, 'etcd_user = "file-user"\netcd_password = "file-pw"\n')
    creds(clean_env / "credentials.toml", "cred-user", "cred-pw")  # the default place
    s = load_ctl_settings(cfg, None, None, None)
    assert (s.etcd_user, s.etcd_password) == ("cred-user", "cred-pw")
    monkeypatch.setenv("HIDSCTL_ETCD_PASSWORD", "env-pw")
    s = load_ctl_settings(cfg, None, None, None)
    assert (s.etcd_user, s.etcd_password) == ("cred-user", "env-pw")
    monkeypatch.setenv("HIDSCTL_ETCD_USER", "env-user")
    assert load_ctl_settings(cfg, None, None, None).etcd_user == "env-user"


def test_named_credentials_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = creds(tmp_path / "c" / "mine.toml", "u1", "p1")
    cfg = toml(tmp_path, f'credentials_file = "{other}"\n')
    assert load_ctl_settings(cfg, None, None, None).etcd_user == "u1"
    monkeypatch.setenv("HIDSCTL_CREDENTIALS", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        load_ctl_settings(cfg, None, None, None)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('nats_server = "nats://x:1"\n', "nats_server"),
        ("timeout_s = 0\n", "timeout_s"),
        ('timeout_s = "2"\n', "timeout_s"),
        ("subject_prefix = 1\n", "subject_prefix"),
        ("etcd_endpoints = [1]\n", "etcd_endpoints"),
    ],
)
def test_bad_file_is_refused_with_the_key_and_the_file(
    tmp_path: Path, text: str, field: str
) -> None:
    cfg = toml(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_ctl_settings(cfg, None, None, None)
    assert ei.value.fields["field"] == field and str(cfg) in ei.value.message


def test_unknown_hidsctl_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIDSCTL_NAST", "nats://x:1")  # a typo of HIDSCTL_NATS
    with pytest.raises(ConfigError, match="HIDSCTL_NAST") as ei:
        load_ctl_settings(None, None, None, None)
    assert ei.value.fields["field"] == "HIDSCTL_NAST"
    monkeypatch.delenv("HIDSCTL_NAST")
    monkeypatch.setenv("HIDSCTL_LOG_LEVEL", "debug")  # read by hidsctl's main
    assert load_ctl_settings(None, None, None, None).nats == ("nats://127.0.0.1:4222",)


def test_missing_config_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_ctl_settings(tmp_path / "nope.toml", None, None, None)
