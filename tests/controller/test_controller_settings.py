"""hidsd.controller.main.load_settings: flags > env > file > defaults, unknown keys refused."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from hidsd.base.errors import ConfigError
from hidsd.controller.main import load_settings


def args(config: Path | None = None, **kw: str | None) -> argparse.Namespace:
    base = {"config": str(config) if config else None, "nats": None, "sys_nats": None,
            "etcd": None, "subject_prefix": None, "key_prefix": None, "name": None}  # fmt: skip
    base.update(kw)
    return argparse.Namespace(**base)


def test_env_beats_the_file_for_etcd_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "c.toml"
    f.write_text('etcd_user = "file-user"\netcd_password = "file-pw"\nname = "from-file"\n')
    monkeypatch.setenv("HIDSD_CONTROLLER_ETCD_USER", "env-user")
    monkeypatch.setenv("HIDSD_CONTROLLER_ETCD_PASSWORD", "env-pw")
    s = load_settings(args(f))
    assert (s.etcd_user, s.etcd_password) == ("env-user", "env-pw")
    assert s.name == "from-file"
    assert load_settings(args(f, name="from-flag")).name == "from-flag"


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('nats_server = "nats://x:4222"\n')  # a typo of nats_servers
    with pytest.raises(ConfigError, match=r"unknown key.*nats_server"):
        load_settings(args(f))


def test_test_hook_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(args()).test_share_delay_s == 0.0
    monkeypatch.setenv("HIDSD_CONTROLLER_TEST_SHARE_DELAY_S", "1.5")
    assert load_settings(args()).test_share_delay_s == 1.5
    monkeypatch.setenv("HIDSD_CONTROLLER_TEST_SHARE_DELAY_S", "soon")
    with pytest.raises(ConfigError, match="test_share_delay_s"):
        load_settings(args())


def test_flags_env_file_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.toml"
    f.write_text('nats_servers = "nats://f1:1, nats://f2:2"\netcd_endpoints = ["e:1"]\n'
                 "offline_timeout_factor = 4\nstream_max_bytes = 1000\n")  # fmt: skip
    s = load_settings(args(f))
    assert s.servers == ("nats://f1:1", "nats://f2:2") and s.etcd_endpoints == ("e:1",)
    assert (s.timeout_factor, s.stream_max_bytes, s.inventory_max_bytes) == (4.0, 1000, 2 << 30)
    monkeypatch.setenv("HIDSD_CONTROLLER_NATS", "nats://env:1")
    monkeypatch.setenv("HIDSD_CONTROLLER_STREAM_MAX_BYTES", "2000")
    s = load_settings(args(f))
    assert (s.servers, s.stream_max_bytes) == (("nats://env:1",), 2000)
    assert load_settings(args(f, nats="nats://flag:1")).servers == ("nats://flag:1",)
    assert load_settings(args()).name  # the default is the host name


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("offline_timeout_factor = 1\n", "offline_timeout_factor"),
        ('stream_max_bytes = "big"\n', "stream_max_bytes"),
        ("inventory_max_bytes = 0\n", "inventory_max_bytes"),
        ("name = 7\n", "name"),
        ("nats_servers = []\n", "nats_servers"),
    ],
)
def test_bad_values_name_the_key_and_the_file(tmp_path: Path, text: str, field: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_settings(args(f))
    assert ei.value.fields["field"] == field and str(f) in ei.value.message


def test_unknown_controller_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIDSD_CONTROLLER_ETCD_USR", "x")  # a typo of ..._ETCD_USER
    with pytest.raises(ConfigError, match="HIDSD_CONTROLLER_ETCD_USR"):
        load_settings(args())
    monkeypatch.delenv("HIDSD_CONTROLLER_ETCD_USR")
    monkeypatch.setenv("HIDSD_SOMETHING_ELSE", "x")  # not the controller's namespace
    assert load_settings(args()).etcd_user is None
