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
