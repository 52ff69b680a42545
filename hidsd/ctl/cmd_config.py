"""`hidsctl config ...`: versioned agent config with history, diff, rollback and status."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.syntax import Syntax
from rich.table import Table

from hidsd.base.errors import ConfigError, HidsError, ProtocolError
from hidsd.ctl import configplane
from hidsd.ctl.common import (
    CtlSettings,
    Exit,
    JsonFlag,
    ask,
    author,
    emit_json,
    err,
    failure,
    open_store,
    out,
)
from hidsd.wire import dynconfig
from hidsd.wire.configstore import ConfigVersion
from hidsd.wire.names import Scope, parse_scope
from hidsd.wire.rpc import HostRequest
from hidsd.wire.verbs import AGENTS_SHOW, CONFIG_STATUS

config_app = typer.Typer(help="Versioned agent config: set, history, diff, rollback.",
                         no_args_is_help=True)  # fmt: skip

ScopeOpt = Annotated[str, typer.Option("--scope", help="fleet, group:NAME or host:NAME")]
JsonOpt = JsonFlag


def _scope(label: str) -> tuple[Scope, str]:
    try:
        return parse_scope(label)
    except ProtocolError as exc:
        err.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(Exit.USAGE) from exc


async def _with_store(s: CtlSettings, fn: Any) -> Any:
    store = open_store(s)
    await store.open()
    try:
        return await fn(store)
    finally:
        await store.close()


def _go(s: CtlSettings, fn: Any) -> Any:
    try:
        return asyncio.run(_with_store(s, fn))
    except configplane.NotFound as exc:
        err.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(Exit.NOT_FOUND) from exc
    except ConfigError as exc:
        err.print(f"[red]invalid config:[/] {exc.message}")
        raise typer.Exit(Exit.INVALID) from exc
    except HidsError as exc:
        raise failure(exc) from exc


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _version_row(cv: ConfigVersion) -> dict[str, Any]:
    d = cv.to_dict()
    d.pop("content")
    return d


@config_app.command("set")
def config_set(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="TOML file with the settings this scope overrides")],
    scope: ScopeOpt,
    message: Annotated[str, typer.Option("-m", "--message", help="why (kept in history)")],
    expect_version: Annotated[
        int | None,
        typer.Option(help="fail unless the scope is still at this version (read-modify-write)"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate FILE and write it as the scope's next version (compare-and-swap)."""
    s: CtlSettings = ctx.obj
    sc, target = _scope(scope)
    try:
        content = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        err.print(f"[red]error:[/] cannot read {file}: {exc}")
        raise typer.Exit(Exit.USAGE) from exc
    if not message.strip():
        err.print("[red]error:[/] a message (-m) is required: history keeps why")
        raise typer.Exit(Exit.USAGE)
    try:
        dynconfig.parse(content)
    except ConfigError as exc:
        err.print(f"[red]invalid config[/] {file}: {exc.message}")
        raise typer.Exit(Exit.INVALID) from exc
    cv = _go(s, lambda st: configplane.set_config(
        st, s.keys, sc, target, content, message, author(s), expect_version))  # fmt: skip
    if as_json:
        emit_json(_version_row(cv))
    else:
        out.print(f"{cv.scope}: version {cv.version} written (digest {cv.digest})")


@config_app.command("get")
def config_get(
    ctx: typer.Context,
    scope: ScopeOpt,
    version: Annotated[int | None, typer.Option(help="a past version (default: current)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a scope's current (or a past) config version."""
    s: CtlSettings = ctx.obj
    sc, target = _scope(scope)
    cv = _go(s, lambda st: configplane.get_version(st, s.keys, sc, target, version))
    if as_json:
        emit_json(cv.to_dict())
        return
    out.print(f"[bold]{cv.scope} version {cv.version}[/] by {cv.author} at {_when(cv.time)}: "
              f"{cv.message}")  # fmt: skip
    out.print(Syntax(cv.content, "toml", line_numbers=False))


@config_app.command("history")
def config_history(ctx: typer.Context, scope: ScopeOpt, as_json: JsonOpt = False) -> None:
    """Every version of a scope: who, when, why."""
    s: CtlSettings = ctx.obj
    sc, target = _scope(scope)
    versions = _go(s, lambda st: configplane.history(st, s.keys, sc, target))
    if as_json:
        emit_json([_version_row(v) for v in versions])
        return
    t = Table(title=f"{scope}: {len(versions)} versions")
    for col in ("version", "when", "author", "message", "digest"):
        t.add_column(col)
    for v in versions:
        msg = v.message + (f" (rollback to {v.rollback_of})" if v.rollback_of else "")
        t.add_row(str(v.version), _when(v.time), v.author, msg, v.digest)
    out.print(t)


@config_app.command("diff")
def config_diff(ctx: typer.Context, scope: ScopeOpt, a: int, b: int) -> None:
    """Unified diff between two versions of a scope."""
    s: CtlSettings = ctx.obj
    sc, target = _scope(scope)

    async def both(st: Any) -> tuple[ConfigVersion, ConfigVersion]:
        return (
            await configplane.get_version(st, s.keys, sc, target, a),
            await configplane.get_version(st, s.keys, sc, target, b),
        )

    va, vb = _go(s, both)
    text = configplane.diff(va, vb)
    if text:
        out.print(Syntax(text, "diff"))
    else:
        out.print(f"versions {a} and {b} have the same content")


@config_app.command("rollback")
def config_rollback(
    ctx: typer.Context,
    scope: ScopeOpt,
    version: Annotated[int, typer.Argument(help="the version whose content comes back")],
    message: Annotated[str, typer.Option("-m", "--message")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Write a NEW version with an old version's content (history is never rewritten)."""
    s: CtlSettings = ctx.obj
    sc, target = _scope(scope)
    cv = _go(s, lambda st: configplane.rollback(
        st, s.keys, sc, target, version, message, author(s)))  # fmt: skip
    if as_json:
        emit_json(_version_row(cv))
    else:
        out.print(f"{cv.scope}: version {cv.version} written with the content of {version}")


@config_app.command("effective")
def config_effective(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host", help="the agent's host id")],
    groups: Annotated[
        str | None, typer.Option(help="comma-separated groups (default: ask the controller)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The merged config an agent computes (fleet < groups < host) and each value's source."""
    s: CtlSettings = ctx.obj
    if groups is None:
        try:
            info = asyncio.run(ask(s, AGENTS_SHOW, HostRequest(host).to_params()))
        except (HidsError, ProtocolError) as exc:
            err.print(f"[red]error:[/] cannot learn {host}'s groups ({exc}); pass --groups")
            raise typer.Exit(Exit.USAGE) from exc
        report = info.agent.report
        group_list = report.groups if report is not None else ()
    else:
        group_list = tuple(g.strip() for g in groups.split(",") if g.strip())
    res = _go(s, lambda st: configplane.effective(st, s.keys, host, group_list))
    if as_json:
        emit_json(res)
        return
    t = Table(title=f"effective config of {host} (groups {', '.join(group_list) or '-'})")
    for col in ("setting", "value", "from"):
        t.add_column(col)
    for path, source in sorted(res["sources"].items()):
        value: Any = res["effective"]
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        t.add_row(path, repr(value), source)
    out.print(t)
    out.print("versions: " + (", ".join(f"{k} v{v}" for k, v in res["versions"].items()) or "none"))


@config_app.command("status")
def config_status(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Which agents run which versions, which rejected one and why, which lag."""
    s: CtlSettings = ctx.obj
    try:
        res = asyncio.run(ask(s, CONFIG_STATUS))
    except HidsError as exc:
        raise failure(exc) from exc
    if as_json:
        emit_json(res.to_wire())
    else:
        t = Table(title="config status")
        for col in ("host", "liveness", "running", "converged", "status", "rejected"):
            t.add_column(col)
        for a in res.agents:
            running = ", ".join(f"{k} v{v}" for k, v in sorted(a.running.items())) or "-"
            conv = a.converged
            rej = a.rejected
            t.add_row(
                a.host, a.liveness.value, running,
                "-" if conv is None else ("yes" if conv else "[yellow]no[/]"),
                a.status if a.status != "rejected" else "[red]rejected[/]",
                f"{rej.scope} v{rej.version}: {rej.error}" if rej else "",
            )  # fmt: skip
        out.print(t)
        if not res.store_ok:
            err.print("[yellow]etcd unreachable from the controller: convergence unknown[/]")
    lagging = [a for a in res.agents if a.converged is False]
    rejected = [a for a in res.agents if a.status == "rejected"]
    if lagging or rejected:
        raise typer.Exit(Exit.INCOMPLETE)
