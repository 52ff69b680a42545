"""hidsd.base.settings: flags > environment > file > defaults, typed, unknown names refused."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from hidsd.base.errors import ConfigError, HidsError
from hidsd.base.settings import Source, env_names, load_settings, read_toml, setting


@dataclass(frozen=True, slots=True)
class Inner:
    servers: tuple[str, ...] = setting(("a:1",), env="T_INNER_SERVERS", nonempty=True)
    user: str | None = setting(None, env="T_INNER_USER")


@dataclass(frozen=True, slots=True)
class Demo:
    name: str = setting("dflt", env="T_NAME")
    count: int = setting(3, env="T_COUNT", ge=1)
    ratio: float = setting(0.5, env="T_RATIO", gt=0)
    on: bool = setting(True, env="T_ON")
    level: str = setting("info", env="T_LEVEL", choices=("info", "debug"))
    hosts: tuple[str, ...] = setting((), key="host_list", env="T_HOSTS", text_list=True)
    home: Path = setting(Path("/var/lib/x"), env="T_HOME")
    spare: Path | None = setting(Path("/run/x"), env="T_SPARE")
    inner: Inner = setting(default_factory=Inner)
    #: not a setting: no file key, no variable
    internal: int = 7


def load(
    tmp_path: Path,
    text: str | None = None,
    env: dict[str, str] | None = None,
    flags: dict[str, object] | None = None,
    **kw: object,
) -> tuple[Demo, dict[str, Source]]:
    path = None
    if text is not None:
        path = tmp_path / "demo.toml"
        path.write_text(text)
    got = load_settings(Demo, file=path, env=env or {}, flags=flags, what="demo settings", **kw)  # type: ignore[arg-type]
    return got.value, dict(got.sources)


def refused(tmp_path: Path, text: str | None = None, **kw: object) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        load(tmp_path, text, **kw)  # type: ignore[arg-type]
    assert isinstance(ei.value, HidsError)
    return ei.value


def test_defaults_without_file_or_env(tmp_path: Path) -> None:
    s, src = load(tmp_path)
    assert s == Demo()
    assert set(src.values()) == {Source.DEFAULT}
    assert "internal" not in src and "inner.servers" in src


def test_flag_beats_env_beats_file_beats_default(tmp_path: Path) -> None:
    text = 'name = "file"\ncount = 5\n[inner]\nuser = "file-user"\n'
    s, src = load(tmp_path, text)
    assert (s.name, s.count, s.inner.user) == ("file", 5, "file-user")
    assert src["name"] is Source.FILE and src["ratio"] is Source.DEFAULT
    env = {"T_NAME": "env", "T_COUNT": "9", "T_INNER_USER": "env-user"}
    s, src = load(tmp_path, text, env)
    assert (s.name, s.count, s.inner.user) == ("env", 9, "env-user")
    assert src["inner.user"] is Source.ENV
    s, src = load(tmp_path, text, env, flags={"name": "flag", "count": None})
    assert (s.name, s.count) == ("flag", 9)  # a None flag was not given
    assert src["name"] is Source.FLAG and src["count"] is Source.ENV


def test_env_beats_the_file_for_credentials_too(tmp_path: Path) -> None:
    """The controller once let its file win here; one rule now, for every setting."""
    s, _ = load(tmp_path, '[inner]\nuser = "from-file"\n', {"T_INNER_USER": "from-env"})
    assert s.inner.user == "from-env"


def test_text_is_parsed_as_the_type(tmp_path: Path) -> None:
    env = {"T_RATIO": "2.5", "T_ON": "off", "T_HOSTS": " a, b,,", "T_HOME": "/h",
           "T_INNER_SERVERS": "x:1,y:2", "T_LEVEL": "DEBUG"}  # fmt: skip
    s, _ = load(tmp_path, env=env)
    assert (s.ratio, s.on, s.hosts, s.home) == (2.5, False, ("a", "b"), Path("/h"))
    assert s.inner.servers == ("x:1", "y:2") and s.level == "debug"
    assert load(tmp_path, env={"T_ON": "Yes"})[0].on is True
    assert load(tmp_path, flags={"home": Path("/f")})[0].home == Path("/f")


def test_empty_means_default_or_none(tmp_path: Path) -> None:
    s, _ = load(tmp_path, env={"T_NAME": "", "T_HOME": "", "T_SPARE": "", "T_INNER_USER": ""})
    assert (s.name, s.home, s.spare, s.inner.user) == ("dflt", Path("/var/lib/x"), None, None)
    assert load(tmp_path, env={"T_HOSTS": ""})[0].hosts == ()


def test_a_file_list_may_be_one_string_where_allowed(tmp_path: Path) -> None:
    assert load(tmp_path, 'host_list = "a, b"\n')[0].hosts == ("a", "b")
    assert refused(tmp_path, '[inner]\nservers = "a:1"\n').fields["field"] == "inner.servers"


@pytest.mark.parametrize(
    ("line", "field", "expected"),
    [
        ('name = 1', "name", "a string"),
        ('count = 1.5', "count", "an integer"),
        ('count = true', "count", "an integer"),
        ('count = 0', "count", ">= 1"),
        ('ratio = "1"', "ratio", "a finite number"),
        ('ratio = nan', "ratio", "a finite number"),
        ('ratio = 0', "ratio", "> 0"),
        ('ratio = ' + "9" * 400, "ratio", "a finite number"),
        ('on = 1', "on", "true or false"),
        ('level = "loud"', "level", "one of info, debug"),
        ('host_list = [1]', "host_list", "a list of non-empty strings"),
        ('host_list = [""]', "host_list", "a list of non-empty strings"),
        ('home = 3', "home", "a path"),
        ('inner = 5', "inner", "a table"),
        ('[inner]\nservers = []', "inner.servers", "list at least one"),
    ],
)  # fmt: skip
def test_wrong_types_name_the_setting_the_type_and_the_file(
    tmp_path: Path, line: str, field: str, expected: str
) -> None:
    err = refused(tmp_path, line + "\n")
    assert err.fields["field"] == field
    assert expected in err.message
    assert str(tmp_path / "demo.toml") in err.message and err.fields["file"].endswith("demo.toml")


def test_bad_text_names_the_variable(tmp_path: Path) -> None:
    for var, value in (("T_COUNT", "many"), ("T_RATIO", ""), ("T_ON", "maybe")):
        err = refused(tmp_path, env={var: value})
        assert err.fields["field"] == var and var in err.message
    err = refused(tmp_path, env={"T_COUNT": "0"})  # parsed, then out of range
    assert err.fields == {"field": "count", "env": "T_COUNT"}
    assert "T_COUNT" in err.message


def test_unknown_keys_are_refused_with_the_file_and_the_table(tmp_path: Path) -> None:
    err = refused(tmp_path, "nmae = 1\n")
    assert err.fields["field"] == "nmae" and "unknown key 'nmae'" in err.message
    assert str(tmp_path / "demo.toml") in err.message
    err = refused(tmp_path, "[inner]\npasswd = 1\n")
    assert err.fields["field"] == "inner.passwd" and "[inner]" in err.message
    assert "servers, user" in err.message  # what it does know there
    assert refused(tmp_path, "internal = 1\n").fields["field"] == "internal"  # not a setting
    assert refused(tmp_path, "hosts = []\n").fields["field"] == "hosts"  # the key is host_list


def test_unknown_variables_in_the_namespace_are_refused(tmp_path: Path) -> None:
    env = {"T_NAME": "x", "T_NMAE": "y", "OTHER": "z"}
    err = refused(tmp_path, env=env, env_namespace="T_")
    assert err.fields["field"] == "T_NMAE" and "T_NAME" in err.message
    s, _ = load(tmp_path, env=env, env_namespace="T_", env_known=("T_NMAE",))
    assert s.name == "x"
    assert load(tmp_path, env=env)[0].name == "x"  # no namespace: others' variables are fine


def test_runtime_defaults_and_unknown_names(tmp_path: Path) -> None:
    s, src = load(tmp_path, defaults={"name": "host-7"})
    assert s.name == "host-7" and src["name"] is Source.DEFAULT
    with pytest.raises(TypeError, match="nmae"):
        load(tmp_path, flags={"nmae": "x"})


def test_env_names_lists_every_variable() -> None:
    assert env_names(Demo) == ["T_NAME", "T_COUNT", "T_RATIO", "T_ON", "T_LEVEL", "T_HOSTS",
                               "T_HOME", "T_SPARE", "T_INNER_SERVERS", "T_INNER_USER"]  # fmt: skip


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        read_toml(tmp_path / "absent.toml", "demo settings")
    assert ei.value.fields["field"] == "path" and "absent.toml" in ei.value.message
    err = refused(tmp_path, 'name = "x\n')
    assert err.fields["field"] == "path" and "not valid TOML" in err.message
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_toml(tmp_path / "bin.toml")


def test_a_type_that_is_no_setting_is_a_programming_error(tmp_path: Path) -> None:
    @dataclass
    class Bad:
        odd: list[int] = setting(default_factory=list)

    with pytest.raises(TypeError, match="cannot have the type"):
        load_settings(Bad, file=None, env={})
