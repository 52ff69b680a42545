"""`hidsctl auth ...`: turn on etcd auth with hidsd's roles, add users and agents (admin)."""

from __future__ import annotations

import asyncio
import secrets
import sys
from typing import Annotated, Any

import typer

from hidsd.base.errors import HidsError
from hidsd.ctl import rbac
from hidsd.ctl.common import CtlSettings, Exit, JsonFlag, emit_json, err, failure, open_store, out

auth_app = typer.Typer(help="etcd authentication and roles (admin only).", no_args_is_help=True)


def _password(given: str | None, from_stdin: bool, what: str) -> str:
    if from_stdin:
        pw = sys.stdin.readline().rstrip("\n")
    elif given:
        pw = given
    else:
        pw = typer.prompt(f"password for {what}", hide_input=True, confirmation_prompt=True)
    if len(pw) < 8:
        err.print("[red]error:[/] passwords need at least 8 characters")
        raise typer.Exit(Exit.USAGE)
    return pw


def _go(s: CtlSettings, fn: Any) -> Any:
    async def run() -> Any:
        store = open_store(s)
        await store.open()
        try:
            return await fn(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except HidsError as exc:
        raise failure(exc) from exc


@auth_app.command("bootstrap")
def auth_bootstrap(
    ctx: typer.Context,
    root_password: Annotated[str | None, typer.Option(help="default: prompt")] = None,
    password_stdin: Annotated[bool, typer.Option(help="read the root password from stdin")] = False,
) -> None:
    """Create hidsd's roles and the root user, then turn etcd auth on (run once, as root)."""
    s: CtlSettings = ctx.obj
    pw = _password(root_password, password_stdin, "root")

    async def go(store: Any) -> list[str]:
        for name, grants in rbac.standard_roles(s.keys).items():
            await store.ensure_role(name, grants)
        await store.ensure_user("root", pw, ["root"])
        await store.enable_auth()
        return list(rbac.standard_roles(s.keys))

    roles = _go(s, go)
    out.print(f"etcd auth enabled; roles: root (admin), {', '.join(roles)}")


@auth_app.command("user-add")
def auth_user_add(
    ctx: typer.Context,
    name: str,
    role: Annotated[str, typer.Option(help="admin, operator or viewer")],
    user_password: Annotated[str | None, typer.Option("--user-password")] = None,
    password_stdin: Annotated[bool, typer.Option(help="read the password from stdin")] = False,
) -> None:
    """Create (or reset) an operator, viewer or admin user."""
    s: CtlSettings = ctx.obj
    if role not in ("admin", "operator", "viewer"):
        err.print("[red]error:[/] --role must be admin, operator or viewer")
        raise typer.Exit(Exit.USAGE)
    pw = _password(user_password, password_stdin, name)
    etcd_role = "root" if role == "admin" else rbac.role_name(s.keys, role)
    _go(s, lambda st: st.ensure_user(name, pw, [etcd_role]))
    out.print(f"user {name} has role {role} ({etcd_role})")


@auth_app.command("agent-add")
def auth_agent_add(
    ctx: typer.Context,
    host: str,
    group: Annotated[list[str] | None, typer.Option(help="the agent's groups (repeat)")] = None,
    generate: Annotated[bool, typer.Option(help="generate a password and print it once")] = False,
    user_password: Annotated[str | None, typer.Option("--user-password")] = None,
    password_stdin: Annotated[bool, typer.Option(help="read the password from stdin")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Create the agent's etcd user with a role that reads only the keys governing it."""
    s: CtlSettings = ctx.obj
    groups = tuple(group or ())
    pw = secrets.token_urlsafe(18) if generate else _password(user_password, password_stdin, host)
    role, grants = rbac.host_role(s.keys, host, groups)
    user = rbac.agent_user(s.keys, host)

    async def go(store: Any) -> None:
        await store.ensure_role(role, grants)
        await store.ensure_user(user, pw, [role])

    _go(s, go)
    result = {"user": user, "role": role, "keys": [g.key for g in grants]}
    if generate:
        result["password"] = pw
    if as_json:
        emit_json(result)
    else:
        out.print(f"agent user {user} with role {role} ({len(grants)} grants)")
        if generate:
            out.print(f"password (shown once; put it in the agent's [etcd] settings): {pw}")
