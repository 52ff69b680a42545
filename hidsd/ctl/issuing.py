"""Issuing a signed command from hidsctl: the scope from the options, record + broadcast +
ack counting (`killswitch.issue_command`) with live progress, the summary, the exit code.

Shared by the fleet commands (stop, resume) and the plugin commands."""

from __future__ import annotations

import asyncio
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hidsd.base.errors import (
    BusUnavailable,
    HidsError,
    NotRecorded,
    OperatorKeyError,
    ProtocolError,
)
from hidsd.ctl.common import (
    CtlSettings,
    Exit,
    author,
    connect_bus,
    emit_json,
    err,
    failure,
    open_store,
    out,
)
from hidsd.wire.commands import PLUGIN_ACTIONS, Ack, CommandKind
from hidsd.wire.names import FLEET_TARGET, Scope, check_name
from hidsd.wire.signing import OperatorKey


def scope_of(group: str | None, host: str | None) -> tuple[Scope, str]:
    if group and host:
        err.print("[red]error:[/] use --group or --host, not both")
        raise typer.Exit(Exit.USAGE)
    try:
        if group:
            return Scope.GROUP, check_name(group, "group")
        if host:
            return Scope.HOST, check_name(host, "host id")
    except ProtocolError as exc:
        err.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(Exit.USAGE) from exc
    return Scope.FLEET, FLEET_TARGET


def control(
    s: CtlSettings, kind: CommandKind, group: str | None, host: str | None, wait: float,
    allow_unrecorded: bool, as_json: bool, plugin: str | None = None,
) -> None:  # fmt: skip
    """Record, broadcast, count acks, report. Plugin commands name the plugin."""
    from hidsd.ctl.killswitch import IssueResult, issue_command

    scope, target = scope_of(group, host)
    args: dict[str, Any] = {}
    desired_key: str | None = ""
    if plugin is not None:
        args = {"plugin": plugin}
        desired_key = (
            None if kind in PLUGIN_ACTIONS
            else s.keys.plugin_desired(scope, target, plugin)
        )  # fmt: skip
    try:
        key = OperatorKey.load(s.key_file)
    except OperatorKeyError as exc:
        raise failure(exc) from exc
    label = "fleet" if scope is Scope.FLEET else f"{scope.value} {target}"
    if plugin is not None:
        label = f"{plugin} on {label}"
    progress = Progress(
        TextColumn(f"[bold]{kind.value} {label}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=err,
        disable=as_json,
        transient=False,
    )
    task_id = progress.add_task("acks", total=None, note="")

    def on_ack(ack: Ack, res: IssueResult) -> None:
        total = len(res.expected) if res.expected is not None else None
        progress.update(task_id, completed=len(res.acks), total=total,
                        note=f"{ack.host}: {ack.status.value}")  # fmt: skip

    bus_error: list[str] = []

    async def go() -> IssueResult:
        try:
            bus = await connect_bus(s)
        except BusUnavailable as exc:
            # Record anyway: etcd is the source of truth and agents converge from it.
            bus = None
            bus_error.append(exc.message)
        store = open_store(s)
        try:
            await store.open()
            with progress:
                return await issue_command(
                    kind=kind, scope=scope, target=target, key=key, bus=bus, store=store,
                    subjects=s.subjects, keys=s.keys, wait_s=wait,
                    allow_unrecorded=allow_unrecorded, on_ack=on_ack,
                    author=author(s), args=args, desired_key=desired_key,
                )  # fmt: skip
        finally:
            if bus is not None:
                await bus.close()
            await store.close()

    try:
        res = asyncio.run(go())
    except NotRecorded as exc:
        if as_json:
            emit_json({"recorded": False, "broadcast": False, **exc.to_dict()})
        raise failure(exc) from exc
    except HidsError as exc:
        raise failure(exc) from exc
    if bus_error:
        res.bus_error = bus_error[0]
    report(res, as_json)
    if not res.recorded:
        raise typer.Exit(Exit.NOT_RECORDED)
    if not res.broadcast:
        raise typer.Exit(Exit.BUS)
    if not res.complete:
        raise typer.Exit(Exit.INCOMPLETE)


def report(res: Any, as_json: bool) -> None:
    d = res.to_dict()
    if as_json:
        emit_json(d)
        return
    t = Table(
        title=f"{d['kind']} {d['scope']} {d['target']}  (command {d['cmd_id']})", show_header=False
    )
    t.add_column("what")
    t.add_column("value")
    rec = (
        f"yes, etcd revision {d['rev']}"
        if d["recorded"]
        else f"[bold red]NO[/] ({d['store_error']})"
    )
    t.add_row("recorded in etcd", rec)
    if not d["broadcast"]:
        t.add_row(
            "broadcast on NATS", f"[bold red]NO[/] ({d['bus_error']}); agents converge from etcd"
        )
    if d["expected_known"]:
        t.add_row("expected (online)", str(d["expected"]))
    else:
        t.add_row(
            "expected", "[bold yellow]UNKNOWN[/] (no controller answered; counting acks only)"
        )
    t.add_row("acked", f"[green]{d['acked']}[/]")
    if d["superseded_hosts"]:
        t.add_row("superseded", " ".join(d["superseded_hosts"]))
    t.add_row("rejected", " ".join(d["rejected_hosts"]) or "0")
    for h, why in d["clock_refused_hosts"].items():
        then = (" (then applied from etcd)"
                if d["statuses"].get(h) != "rejected" else "")  # fmt: skip
        t.add_row(f"clock refused on {h}", f"[yellow]{why}[/]{then}")
    if d["clock_skewed_hosts"]:
        skewed = " ".join(f"{h} ({v:+.1f} s)" for h, v in d["clock_skewed_hosts"].items())
        t.add_row("clock skewed", skewed)
    if d["missing_hosts"] is not None:
        t.add_row(
            "missing", "[red]" + " ".join(d["missing_hosts"]) + "[/]" if d["missing_hosts"] else "0"
        )
    if d["offline_hosts"]:
        t.add_row("offline (converge on reconnect)", " ".join(d["offline_hosts"]))
    t.add_row("first ack", f"{d['first_ack_ms']} ms" if d["first_ack_ms"] is not None else "-")
    t.add_row("elapsed", f"{d['elapsed_ms']:.1f} ms (broadcast to last ack)")
    out.print(t)
    if not d["recorded"]:
        err.print(
            "[bold red]the stop was broadcast but NOT recorded in etcd[/]: agents hold it "
            "until a newer desired state is written; write one when etcd is back"
        )
