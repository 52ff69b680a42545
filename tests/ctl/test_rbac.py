"""hidsd.ctl.rbac: role names and the key grants of each role (pure, no etcd)."""

from __future__ import annotations

import pytest

from hidsd.bus.store import PERMS, Grant
from hidsd.ctl import rbac
from hidsd.wire.names import KeyLayout, Scope

READS = ("read", "readwrite")
WRITES = ("write", "readwrite")


def covered(key: str, grants: list[Grant], perms: tuple[str, ...] = READS) -> bool:
    """True if some grant with one of `perms` covers `key` (exact key, or prefix match)."""
    return any(
        g.perm in perms and (key.startswith(g.key) if g.prefix else key == g.key) for g in grants
    )


def can_read(key: str, grants: list[Grant]) -> bool:
    return covered(key, grants, READS)


def can_write(key: str, grants: list[Grant]) -> bool:
    return covered(key, grants, WRITES)


def test_covered_helper() -> None:
    grants = [Grant("/p/a", "read"), Grant("/p/b/", "readwrite", prefix=True)]
    assert can_read("/p/a", grants)
    assert not can_read("/p/a/x", grants)
    assert not can_read("/p/ab", grants)
    assert not can_write("/p/a", grants)
    assert can_read("/p/b/x", grants)
    assert can_write("/p/b/x/y", grants)
    assert not can_read("/p/b", grants)
    assert not can_read("/p/bc", grants)


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("prefix", "role", "expected"),
    [
        ("/hidsd/", "operator", "hidsd-operator"),
        ("/hidsd/", "viewer", "hidsd-viewer"),
        ("/hidsd/", "agent", "hidsd-agent"),
        ("/t1/", "operator", "t1-operator"),
        ("/t1/", "viewer", "t1-viewer"),
        ("/a/b/", "operator", "a.b-operator"),
        ("/", "operator", "root-operator"),
    ],
)
def test_role_name_carries_the_prefix(prefix: str, role: str, expected: str) -> None:
    assert rbac.role_name(KeyLayout(prefix), role) == expected


def test_role_name_default_layout() -> None:
    assert rbac.role_name(KeyLayout(), "operator") == "hidsd-operator"


def test_role_names_differ_between_prefixes() -> None:
    names = {rbac.role_name(KeyLayout(p), "operator") for p in ("/hidsd/", "/t1/", "/t2/", "/")}
    assert len(names) == 4


def test_role_names_do_not_collide_for_distinct_prefixes() -> None:
    # Both are valid key prefixes (start and end with '/'); ensure_role replaces a role, so a
    # shared name lets one deployment's bootstrap rewrite the other's operator grants.
    a = rbac.role_name(KeyLayout("/a/b/"), "operator")
    b = rbac.role_name(KeyLayout("/a-b/"), "operator")
    assert a != b


def test_agent_user_carries_the_prefix() -> None:
    assert rbac.agent_user(KeyLayout("/hidsd/"), "web-1") == "hidsd-agent-web-1"
    assert rbac.agent_user(KeyLayout("/a/b/"), "h") != rbac.agent_user(KeyLayout("/a-b/"), "h")


def test_roles_constant() -> None:
    assert rbac.ROLES == ("operator", "viewer", "agent")


# --------------------------------------------------------------------------- standard roles


@pytest.mark.parametrize("prefix", ["/hidsd/", "/t1/"])
def test_standard_roles_names(prefix: str) -> None:
    stem = prefix.strip("/")
    roles = rbac.standard_roles(KeyLayout(prefix))
    assert set(roles) == {f"{stem}-operator", f"{stem}-viewer", f"{stem}-agent"}
    for grants in roles.values():
        assert grants
        assert all(isinstance(g, Grant) for g in grants)
        assert all(g.perm in PERMS for g in grants)
        assert all(g.key.startswith(prefix) for g in grants)


def sample_keys(keys: KeyLayout) -> dict[str, str]:
    p = keys.prefix
    return {
        "desired_fleet": keys.desired(Scope.FLEET, "*"),
        "desired_host": keys.desired(Scope.HOST, "h1"),
        "desired_group": keys.desired(Scope.GROUP, "web"),
        "config_current": keys.config_current(Scope.FLEET, "*"),
        "config_version": keys.config_version(Scope.HOST, "h1", 3),
        "command": keys.command_log("cmd-1"),
        "other": f"{p}presence/h1",
        "root": f"{p}",
    }


@pytest.mark.parametrize("prefix", ["/hidsd/", "/t1/"])
def test_operator_role(prefix: str) -> None:
    keys = KeyLayout(prefix)
    grants = rbac.standard_roles(keys)[rbac.role_name(keys, "operator")]
    k = sample_keys(keys)
    for name in ("desired_fleet", "desired_host", "desired_group", "config_current",
                 "config_version", "command"):  # fmt: skip
        assert can_read(k[name], grants), name
        assert can_write(k[name], grants), name
    assert can_read(k["other"], grants)
    assert can_read(k["root"], grants)
    assert not can_write(k["other"], grants)
    assert not can_write(k["root"], grants)
    assert not can_read("/elsewhere/desired/fleet", grants)
    assert not can_write("/elsewhere/desired/fleet", grants)


@pytest.mark.parametrize("prefix", ["/hidsd/", "/t1/"])
def test_operator_grants_exactly(prefix: str) -> None:
    keys = KeyLayout(prefix)
    grants = rbac.standard_roles(keys)[rbac.role_name(keys, "operator")]
    assert set(grants) == {
        Grant(prefix, "read", prefix=True),
        Grant(f"{prefix}desired/", "readwrite", prefix=True),
        Grant(f"{prefix}config/", "readwrite", prefix=True),
        Grant(f"{prefix}plugins/", "readwrite", prefix=True),
        Grant(f"{prefix}commands/", "readwrite", prefix=True),
    }


@pytest.mark.parametrize("prefix", ["/hidsd/", "/t1/"])
def test_viewer_role_only_reads(prefix: str) -> None:
    keys = KeyLayout(prefix)
    grants = rbac.standard_roles(keys)[rbac.role_name(keys, "viewer")]
    assert grants == [Grant(prefix, "read", prefix=True)]
    for key in sample_keys(keys).values():
        assert can_read(key, grants), key
        assert not can_write(key, grants), key
    assert not can_read("/other-prefix/desired/fleet", grants)


@pytest.mark.parametrize("prefix", ["/hidsd/", "/t1/"])
def test_shared_agent_role_reads_desired_and_config_only(prefix: str) -> None:
    keys = KeyLayout(prefix)
    grants = rbac.standard_roles(keys)[rbac.role_name(keys, "agent")]
    k = sample_keys(keys)
    for name in ("desired_fleet", "desired_host", "desired_group", "config_current",
                 "config_version"):  # fmt: skip
        assert can_read(k[name], grants), name
        assert not can_write(k[name], grants), name
    for name in ("command", "other", "root"):
        assert not can_read(k[name], grants), name
        assert not can_write(k[name], grants), name
    assert all(g.perm == "read" for g in grants)


def test_standard_roles_of_different_prefixes_do_not_overlap() -> None:
    a, b = KeyLayout("/t1/"), KeyLayout("/t2/")
    for grants in rbac.standard_roles(a).values():
        for key in sample_keys(b).values():
            assert not can_read(key, grants)
            assert not can_write(key, grants)


# --------------------------------------------------------------------------- host role


@pytest.mark.parametrize("prefix", ["/hidsd/", "/t1/"])
def test_host_role_name(prefix: str) -> None:
    name, _ = rbac.host_role(KeyLayout(prefix), "web-1", ("web",))
    assert name == f"{prefix.strip('/')}-agent-web-1"


def test_host_role_grants_exactly() -> None:
    keys = KeyLayout("/hidsd/")
    _, grants = rbac.host_role(keys, "h1", ("web", "eu"))
    assert all(g.perm == "read" for g in grants)
    exact = {g.key for g in grants if not g.prefix}
    prefixes = {g.key for g in grants if g.prefix}
    assert exact == {
        "/hidsd/desired/fleet",
        "/hidsd/desired/group/web",
        "/hidsd/desired/group/eu",
        "/hidsd/desired/host/h1",
    }
    assert prefixes == {
        "/hidsd/config/fleet/",
        "/hidsd/config/group/eu/",
        "/hidsd/config/group/web/",
        "/hidsd/config/host/h1/",
        "/hidsd/plugins/fleet/",
        "/hidsd/plugins/group/eu/",
        "/hidsd/plugins/group/web/",
        "/hidsd/plugins/host/h1/",
    }
    assert len(grants) == 12


def test_host_role_without_groups() -> None:
    keys = KeyLayout("/t1/")
    _, grants = rbac.host_role(keys, "h1", ())
    assert set(grants) == {
        Grant("/t1/desired/fleet", "read"),
        Grant("/t1/desired/host/h1", "read"),
        Grant("/t1/config/fleet/", "read", prefix=True),
        Grant("/t1/config/host/h1/", "read", prefix=True),
        Grant("/t1/plugins/fleet/", "read", prefix=True),
        Grant("/t1/plugins/host/h1/", "read", prefix=True),
    }


HOST, GROUPS = "h1", ("web", "eu")


@pytest.mark.parametrize(
    "key",
    [
        "/hidsd/desired/fleet",
        "/hidsd/desired/group/web",
        "/hidsd/desired/group/eu",
        "/hidsd/desired/host/h1",
        "/hidsd/config/fleet/current",
        "/hidsd/config/fleet/versions/0000000001",
        "/hidsd/config/group/web/current",
        "/hidsd/config/group/eu/versions/0000000042",
        "/hidsd/config/host/h1/current",
        "/hidsd/config/host/h1/versions/0000000007",
    ],
)
def test_host_role_reads_what_governs_the_host(key: str) -> None:
    _, grants = rbac.host_role(KeyLayout("/hidsd/"), HOST, GROUPS)
    assert can_read(key, grants)
    assert not can_write(key, grants)


@pytest.mark.parametrize(
    "key",
    [
        # other hosts, including ones whose id starts with this host's id
        "/hidsd/desired/host/h2",
        "/hidsd/desired/host/h10",
        "/hidsd/desired/host/h1-x",
        "/hidsd/config/host/h2/current",
        "/hidsd/config/host/h10/current",
        "/hidsd/config/host/h1-x/versions/0000000001",
        # other groups
        "/hidsd/desired/group/db",
        "/hidsd/desired/group/webx",
        "/hidsd/config/group/db/current",
        "/hidsd/config/group/webx/current",
        # the desired keys are single keys, not prefixes
        "/hidsd/desired/fleet/x",
        "/hidsd/desired/fleetx",
        "/hidsd/desired/host/h1/x",
        "/hidsd/desired/group/web/x",
        # the rest of the prefix, and other prefixes
        "/hidsd/desired/",
        "/hidsd/config/",
        "/hidsd/config/host/",
        "/hidsd/commands/cmd-1",
        "/hidsd/presence/h1",
        "/t1/desired/fleet",
        "/t1/config/host/h1/current",
    ],
)
def test_host_role_reads_nothing_else(key: str) -> None:
    _, grants = rbac.host_role(KeyLayout("/hidsd/"), HOST, GROUPS)
    assert not can_read(key, grants)
    assert not can_write(key, grants)


def test_host_role_desired_grants_are_single_keys() -> None:
    keys = KeyLayout("/hidsd/")
    _, grants = rbac.host_role(keys, HOST, GROUPS)
    desired = [g for g in grants if g.key.startswith(keys.desired_prefix)]
    assert len(desired) == 4
    assert not any(g.prefix for g in desired)
    config = [g for g in grants if g.key.startswith(keys.config_prefix)]
    assert len(config) == 4
    assert all(g.prefix and g.key.endswith("/") for g in config)


def test_host_roles_of_two_hosts_are_disjoint_on_host_keys() -> None:
    keys = KeyLayout("/hidsd/")
    _, g1 = rbac.host_role(keys, "h1", ("web",))
    _, g2 = rbac.host_role(keys, "h2", ("db",))
    assert not can_read(keys.desired(Scope.HOST, "h2"), g1)
    assert not can_read(keys.desired(Scope.HOST, "h1"), g2)
    assert not can_read(keys.config_current(Scope.GROUP, "db"), g1)
    assert not can_read(keys.config_current(Scope.GROUP, "web"), g2)
    # both read the fleet scope
    assert can_read(keys.desired(Scope.FLEET, "*"), g1)
    assert can_read(keys.desired(Scope.FLEET, "*"), g2)
    assert can_read(keys.config_current(Scope.FLEET, "*"), g1)
    assert can_read(keys.config_current(Scope.FLEET, "*"), g2)
