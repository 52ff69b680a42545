"""hidsctl: the operator's CLI. Subcommands by noun; `--json` on every read; exit codes mean
something (see `Exit`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hidsd.base.errors import (
    ConfigError,
    OperatorKeyError,
    ProtocolError,
)
from hidsd.base.storage import StorageReport
from hidsd.ctl.common import (
    CtlSettings,
    Exit,
    GroupFilter,
    HostFilter,
    JsonFlag,
    ago,
    ask,
    emit_json,
    err,
    failure,
    load_ctl_settings,
    out,
    run_sync,
)
from hidsd.ctl.issuing import control
from hidsd.wire.commands import CommandKind
from hidsd.wire.heartbeat import BreakerReport, ClockReport
from hidsd.wire.replies import AgentDetail, AgentRow
from hidsd.wire.rpc import HostRequest
from hidsd.wire.signing import OperatorKey, encode_public_key
from hidsd.wire.verbs import AGENTS_LIST, AGENTS_SHOW, FLEET_STATUS

app = typer.Typer(
    name="hidsctl", help="Operate an hidsd fleet.", no_args_is_help=True, add_completion=False
)
keys_app = typer.Typer(help="Operator signing keys.", no_args_is_help=True)
agents_app = typer.Typer(help="Agents: presence, state, facts.", no_args_is_help=True)
fleet_app = typer.Typer(help="Fleet-wide status and the kill switch.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(agents_app, name="agents")
app.add_typer(fleet_app, name="fleet")


def _register_more() -> None:
    from hidsd.ctl.cmd_auth import auth_app
    from hidsd.ctl.cmd_config import config_app
    from hidsd.ctl.cmd_plugins import events_app, plugins_app
    from hidsd.ctl.cmd_query import controllers_app, query_app

    app.add_typer(config_app, name="config")
    app.add_typer(auth_app, name="auth")
    app.add_typer(plugins_app, name="plugins")
    app.add_typer(events_app, name="events")
    app.add_typer(query_app, name="query")
    app.add_typer(controllers_app, name="controllers")


_register_more()


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option(help="hidsctl settings (TOML); env HIDSCTL_CONFIG")
    ] = None,
    nats: Annotated[
        str | None, typer.Option(help="NATS URLs, comma-separated; env HIDSCTL_NATS")
    ] = None,
    etcd: Annotated[
        str | None, typer.Option(help="etcd endpoints, comma-separated; env HIDSCTL_ETCD")
    ] = None,
    key: Annotated[Path | None, typer.Option(help="operator key file; env HIDSCTL_KEY")] = None,
    user: Annotated[
        str | None, typer.Option("--user", help="etcd user; env HIDSCTL_ETCD_USER")
    ] = None,
    password: Annotated[
        str | None,
        typer.Option(
            "--password",
            help="etcd password (prefer HIDSCTL_ETCD_PASSWORD or a credentials file: "
            "command lines are visible to other users)",
        ),
    ] = None,
) -> None:
    from hidsd.base.logging import configure

    configure(os.environ.get("HIDSCTL_LOG_LEVEL", "error"), "console")
    try:
        ctx.obj = load_ctl_settings(config, nats, etcd, key, user, password)
    except ConfigError as exc:
        err.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(Exit.USAGE) from exc


# ------------------------------------------------------------------ keys


@keys_app.command("init")
def keys_init(
    ctx: typer.Context,
    force: Annotated[
        bool, typer.Option(help="replace an existing key (agents must be updated)")
    ] = False,
) -> None:
    """Create the operator's Ed25519 signing key (private, mode 0600)."""
    s: CtlSettings = ctx.obj
    if s.key_file.exists():
        if not force:
            err.print(f"[red]error:[/] {s.key_file} exists; use --force to replace it")
            raise typer.Exit(Exit.USAGE)
        s.key_file.unlink()
    k = OperatorKey.generate()
    k.save(s.key_file)
    out.print(f"wrote operator key {s.key_file} (key id {k.key_id})")
    out.print("add this line to every agent's settings (trusted_keys):")
    out.print(f'  trusted_keys = ["{encode_public_key(k.public_key)}"]', highlight=False)


@keys_app.command("show")
def keys_show(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Print the operator's public key and key id."""
    s: CtlSettings = ctx.obj
    try:
        k = OperatorKey.load(s.key_file)
    except OperatorKeyError as exc:
        raise failure(exc) from exc
    pub = encode_public_key(k.public_key)
    if as_json:
        emit_json({"key_id": k.key_id, "public_key": pub, "path": str(s.key_file)})
    else:
        out.print(f"key id {k.key_id}\npublic key {pub}", highlight=False)


# ------------------------------------------------------------------ agents


MODE_STYLE = {"running": "green", "stopped": "bold red", "exiting": "yellow"}
BREAKER_STYLE = {"normal": "green", "throttled": "yellow", "shedding": "dark_orange",
                 "tripped": "bold red", "recovering": "cyan"}  # fmt: skip
STORAGE_STYLE = {"ok": "green", "full": "bold red", "read-only": "bold red", "error": "red"}


def _agents_table(agents: Sequence[AgentRow]) -> Table:
    t = Table(title=f"{len(agents)} agents")
    for col in ("host", "liveness", "mode", "breaker", "storage", "groups", "rev", "converged",
                "last seen"):  # fmt: skip
        t.add_column(col, no_wrap=col in ("host", "mode", "liveness"))
    for a in agents:
        r = a.report
        live = a.liveness.value
        mode = r.mode.value if r else "?"
        br = r.breaker.state if r and r.breaker else "-"
        st = r.storage.status.value if r and r.storage else "-"
        t.add_row(
            a.host,
            f"[{'green' if live == 'online' else 'red'}]{live}[/]",
            f"[{MODE_STYLE.get(mode, 'white')}]{mode}[/]" + (" (held)" if r and r.held else ""),
            f"[{BREAKER_STYLE.get(br, 'white')}]{br}[/]",
            f"[{STORAGE_STYLE.get(st, 'white')}]{st}[/]",
            ",".join(r.groups if r else ()),
            str(r.applied_rev) if r else "-",
            "-"
            if a.converged is None
            else ("yes" if a.converged else f"[yellow]no (want {a.desired_rev})[/]"),
            ago(a.last_seen),
        )
    return t


@agents_app.command("list")
def agents_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Every agent the controllers know: presence, run mode, revision."""
    s: CtlSettings = ctx.obj
    res = run_sync(lambda: ask(s, AGENTS_LIST))
    if as_json:
        emit_json(res.to_wire())
        return
    out.print(_agents_table(res.agents))
    if not res.store_ok:
        err.print("[yellow]etcd unreachable from the controller: convergence unknown[/]")


@agents_app.command("show")
def agents_show(ctx: typer.Context, host: str, as_json: JsonFlag = False) -> None:
    """One agent in full: facts, usage, rejection counters."""
    s: CtlSettings = ctx.obj

    async def fetch() -> AgentDetail | None:
        try:
            return await ask(s, AGENTS_SHOW, HostRequest(host).to_params())
        except ProtocolError as exc:
            err.print(f"[red]error:[/] {exc.message}")
            return None

    res = run_sync(fetch)
    if res is None:
        raise typer.Exit(Exit.NOT_FOUND)
    if as_json:
        emit_json(res.to_wire())
        return
    a, r = res.agent, res.agent.report
    t = Table(title=f"agent {host}", show_header=False)
    t.add_column("field")
    t.add_column("value")
    fields: list[tuple[str, object]] = [("liveness", a.liveness.value), ("reason", a.reason)]
    if r is not None:
        fields += [("mode", r.mode.value), ("held", r.held), ("groups", list(r.groups)),
                   ("applied_rev", r.applied_rev)]  # fmt: skip
    fields += [("desired_rev", a.desired_rev), ("converged", a.converged)]
    if r is not None:
        fields += [("version", r.version), ("uptime_s", r.uptime_s), ("cpu_pct", r.cpu_pct),
                   ("rss_bytes", r.rss_bytes)]  # fmt: skip
    shown = dict(fields)
    for k in ("liveness", "reason", "mode", "held", "groups", "applied_rev", "desired_rev",
              "converged", "version", "uptime_s", "cpu_pct", "rss_bytes"):  # fmt: skip
        t.add_row(k, str(shown.get(k, "-")))
    t.add_row("last seen", ago(a.last_seen))
    if r is not None:
        for k, v in sorted(r.facts.to_wire().items()):
            t.add_row(f"facts.{k}", str(v))
        for k, n in sorted(r.rejections.items()):
            if n:
                t.add_row(f"rejected.{k}", str(n))
        _breaker_rows(t, r.breaker)
        _storage_rows(t, r.storage)
    _clock_rows(t, a.clock_skew_s, r.clock if r else None)
    events = [e for e in res.events if e.kind == "breaker"]
    for e in events[-5:]:
        d = e.detail
        t.add_row("breaker event", f"{ago(e.at)}: {d.get('old')} -> {d.get('state')}: "
                  f"{d.get('reason')}")  # fmt: skip
    out.print(t)


def _storage_rows(t: Table, st: StorageReport | None) -> None:
    if st is None:
        return
    status = st.status.value
    t.add_row("storage", f"[{STORAGE_STYLE.get(status, 'white')}]{status}[/] {st.path}"
              + (f": {st.error}" if st.error else ""))  # fmt: skip
    for what, why in sorted(st.failing.items()):
        t.add_row(f"storage.failing.{what}", why)
    if st.free_bytes is not None:
        t.add_row("storage.free_bytes", f"{st.free_bytes:,}")
    t.add_row("storage.fds", f"{st.fds_open} open of {st.fds_limit}")
    t.add_row("storage.errors", f"{st.errors_total} ({st.recoveries} recovered)")


def _clock_rows(t: Table, skew: float | None, c: ClockReport | None) -> None:
    if skew is not None:
        style = "red" if abs(skew) > 2.0 else "green"
        t.add_row("clock skew (vs controller)", f"[{style}]{skew:+.3f} s[/]")
    if c is None:
        return
    if c.command_skew_s is not None:
        t.add_row("clock skew (vs last command)", f"{c.command_skew_s:+.3f} s")
    if c.refused_expired + c.refused_not_yet_valid:
        counts = f"{c.refused_expired} expired, {c.refused_not_yet_valid} not yet valid"
        t.add_row("clock refused", f"[red]{counts}[/]: {c.last_refusal}")


def _breaker_rows(t: Table, b: BreakerReport | None) -> None:
    if b is None:
        return
    style = BREAKER_STYLE.get(b.state, "white")
    t.add_row("breaker", f"[{style}]{b.state}[/] for {b.since_s} s"
              + (f": {b.reason}" if b.reason else ""))  # fmt: skip
    t.add_row("breaker.accounting", f"{b.accounting.mode} ({b.accounting.detail})")
    if b.held:
        t.add_row("breaker.held", " ".join(b.held))
    for name, d in sorted(b.denylist.items()):
        t.add_row(f"breaker.denylist.{name}", f"{d.in_s} s left: {d.reason}")
    if b.limits_error:
        t.add_row("breaker.limits_error", f"[red]{b.limits_error}[/]")


# ------------------------------------------------------------------ fleet


@fleet_app.command("status")
def fleet_status(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Counts by run mode, online/offline, and agents not at their latest desired revision."""
    s: CtlSettings = ctx.obj
    res = run_sync(lambda: ask(s, FLEET_STATUS))
    if as_json:
        emit_json(res.to_wire())
        return
    t = Table(title="fleet", show_header=False)
    t.add_column("what")
    t.add_column("value")
    t.add_row("agents", str(res.agents))
    t.add_row("online", f"[green]{res.online}[/]")
    t.add_row("offline", f"[red]{res.offline}[/] {' '.join(res.offline_hosts)}")
    for mode, n in sorted(res.by_mode.items()):
        t.add_row(f"mode {mode}", f"[{MODE_STYLE.get(mode, 'white')}]{n}[/]")
    t.add_row("emergency holds", " ".join(res.held) or "none")
    for state, n in sorted(res.by_breaker.items()):
        t.add_row(f"breaker {state}", f"[{BREAKER_STYLE.get(state, 'white')}]{n}[/]")
    for h, b in res.breaker_not_normal.items():
        deny = f" (denylisted: {', '.join(b.denylist)})" if b.denylist else ""
        t.add_row(f"  {h}", f"{b.state}: {b.reason}{deny}")
    for status, n in sorted(res.by_storage.items()):
        t.add_row(f"storage {status}", f"[{STORAGE_STYLE.get(status, 'white')}]{n}[/]")
    for h, st in res.storage_not_ok.items():
        t.add_row(f"  {h}", f"{st.status.value}: {st.path}: {st.error}")
    if res.clock_skewed:
        t.add_row("clock skewed", " ".join(f"{h} ({v:+.1f} s)"
                                           for h, v in res.clock_skewed.items()))  # fmt: skip
    conv = (
        "unknown (etcd unreachable)"
        if not res.store_ok
        else (" ".join(res.not_converged) or "none")
    )
    t.add_row("not converged", conv)
    out.print(t)


WaitOpt = Annotated[float, typer.Option(help="seconds to wait for acks")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable summary")]


@fleet_app.command("stop")
def fleet_stop(
    ctx: typer.Context,
    group: GroupFilter = None,
    host: HostFilter = None,
    wait: WaitOpt = 5.0,
    allow_unrecorded: Annotated[
        bool, typer.Option(help="if etcd is down, broadcast the stop anyway (agents hold it)")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Emergency kill switch: halt all HIDS work (agents keep their control channel)."""
    control(ctx.obj, CommandKind.STOP, group, host, wait, allow_unrecorded, as_json)


@fleet_app.command("resume")
def fleet_resume(
    ctx: typer.Context,
    group: GroupFilter = None,
    host: HostFilter = None,
    wait: WaitOpt = 5.0,
    as_json: JsonOpt = False,
) -> None:
    """Resume HIDS work after a stop (recorded in etcd first, like every control action)."""
    control(ctx.obj, CommandKind.RESUME, group, host, wait, False, as_json)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
