"""`hidsctl plugins ...` and `hidsctl events tail`: plugin state across the fleet, and the
decoded telemetry as it arrives in the stream."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Annotated, Any

import msgpack
import typer
from rich.table import Table

from hidsd.base.errors import HidsError, ProtocolError
from hidsd.ctl.common import (
    CtlSettings,
    Exit,
    GroupFilter,
    HostFilter,
    JsonFlag,
    ask,
    connect_bus,
    emit_json,
    err,
    failure,
    out,
)
from hidsd.wire import frames
from hidsd.wire.fields import Plain
from hidsd.wire.heartbeat import PluginReport
from hidsd.wire.replies import AgentRow
from hidsd.wire.verbs import AGENTS_LIST

plugins_app = typer.Typer(help="Plugins on every agent: state, usage, drops.",
                          no_args_is_help=True)  # fmt: skip
events_app = typer.Typer(help="Telemetry from the fleet, decoded.", no_args_is_help=True)

JsonOpt = JsonFlag


def _rows(agents: Sequence[AgentRow], host: str | None) -> list[tuple[AgentRow, str, PluginReport]]:
    """Every plugin of every agent (of `host` only, if given), by host and plugin name."""
    return [(a, name, p) for a in agents if a.report is not None and not (host and a.host != host)
            for name, p in sorted(a.report.plugins.items())]  # fmt: skip


def _row_json(a: AgentRow, name: str, p: PluginReport) -> dict[str, Plain]:
    """A plugin as `plugins status --json` prints it: the heartbeat's flat map of it."""
    return {"host": a.host, "plugin": name, "liveness": a.liveness.value, "drops": p.dropped,
            **p.to_wire()}  # fmt: skip


@plugins_app.command("status")
def plugins_status(
    ctx: typer.Context,
    host: HostFilter = None,
    as_json: JsonOpt = False,
) -> None:
    """Every plugin on every agent: state, CPU, RSS, records, drops (all counted), spool."""
    s: CtlSettings = ctx.obj
    try:
        res = asyncio.run(ask(s, AGENTS_LIST))
    except HidsError as exc:
        raise failure(exc) from exc
    rows = _rows(res.agents, host)
    if as_json:
        emit_json([_row_json(*r) for r in rows])
        return
    t = Table(title=f"{len(rows)} plugins (--json for pid, spool, last exit, every counter)")
    for col in ("host", "plugin", "state", "cpu%", "MB", "read", "sent", "drops", "restarts"):
        t.add_column(col, no_wrap=col in ("host", "plugin", "state"))
    for a, name, p in rows:
        style = {"running": "green", "parked": "bold red", "backoff": "yellow"}.get(p.state, "")
        t.add_row(
            a.host, name, f"[{style}]{p.state}[/]" if style else p.state,
            f"{p.cpu_pct:.1f}", f"{p.rss_bytes / 2**20:.0f}",
            str(p.counters.get("records", 0)), str(p.telemetry.get("records_out", 0)),
            str(p.dropped), str(max(0, p.counters.get("starts", 1) - 1)),
        )  # fmt: skip
    out.print(t)


@plugins_app.command("list")
def plugins_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Plugins the agents can run, and how many agents run each."""
    from hidsd.wire.records import BUILTIN

    s: CtlSettings = ctx.obj
    try:
        res = asyncio.run(ask(s, AGENTS_LIST))
    except HidsError as exc:
        raise failure(exc) from exc
    rows = _rows(res.agents, None)
    summary = {
        name: {
            "running": sum(1 for _, n, p in rows if n == name and p.state == "running"),
            "parked": sum(1 for _, n, p in rows if n == name and p.state == "parked"),
            "hosts": sorted(a.host for a, n, _ in rows if n == name),
        }
        for name in BUILTIN
    }
    if as_json:
        emit_json(summary)
        return
    t = Table(title="plugins")
    for col in ("plugin", "running on", "parked on"):
        t.add_column(col)
    for name, d in summary.items():
        t.add_row(name, str(d["running"]), str(d["parked"]))
    out.print(t)


def _plugin_command(
    ctx: typer.Context, kind_name: str, name: str, group: str | None, host: str | None,
    wait: float, as_json: bool,
) -> None:  # fmt: skip
    from hidsd.ctl.issuing import control
    from hidsd.wire.commands import CommandKind
    from hidsd.wire.records import BUILTIN

    if name not in BUILTIN:
        err.print(f"[red]error:[/] unknown plugin {name!r}; known: {', '.join(BUILTIN)}")
        raise typer.Exit(Exit.USAGE)
    control(ctx.obj, CommandKind(f"plugin_{kind_name}"), group, host, wait, False, as_json,
             plugin=name)  # fmt: skip


NameArg = Annotated[str, typer.Argument(help="plugin name")]
WaitOpt = Annotated[float, typer.Option(help="seconds to wait for acks")]


@plugins_app.command("start")
def plugins_start(
    ctx: typer.Context,
    name: NameArg,
    group: GroupFilter = None,
    host: HostFilter = None,
    wait: WaitOpt = 5.0,
    as_json: JsonOpt = False,
) -> None:
    """Start a plugin (signed, recorded in etcd; wins over the config until changed)."""
    _plugin_command(ctx, "start", name, group, host, wait, as_json)


@plugins_app.command("stop")
def plugins_stop(
    ctx: typer.Context,
    name: NameArg,
    group: GroupFilter = None,
    host: HostFilter = None,
    wait: WaitOpt = 5.0,
    as_json: JsonOpt = False,
) -> None:
    """Stop a plugin (signed, recorded in etcd; agents that were offline converge)."""
    _plugin_command(ctx, "stop", name, group, host, wait, as_json)


@plugins_app.command("restart")
def plugins_restart(
    ctx: typer.Context,
    name: NameArg,
    group: GroupFilter = None,
    host: HostFilter = None,
    wait: WaitOpt = 5.0,
    as_json: JsonOpt = False,
) -> None:
    """Restart a plugin now (also un-parks a crash-looping one); a one-off command."""
    _plugin_command(ctx, "restart", name, group, host, wait, as_json)


@plugins_app.command("clear")
def plugins_clear(
    ctx: typer.Context,
    name: NameArg,
    group: GroupFilter = None,
    host: HostFilter = None,
    wait: WaitOpt = 5.0,
    as_json: JsonOpt = False,
) -> None:
    """Take a plugin off the circuit breaker's denylist (after fixing what tripped it)."""
    _plugin_command(ctx, "clear", name, group, host, wait, as_json)


_SINCE = re.compile(r"^(\d+)([smhd])$")


def _since(value: str) -> dt.datetime:
    m = _SINCE.match(value)
    if m:
        seconds = int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter("use 30s, 10m, 2h, 1d or an ISO time") from exc
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


@events_app.command("tail")
def events_tail(
    ctx: typer.Context,
    host: HostFilter = None,
    plugin: Annotated[str | None, typer.Option(help="only this plugin")] = None,
    since: Annotated[str | None, typer.Option(help="start at 30s, 10m, 2h ago or ISO time")] = None,
    count: Annotated[int, typer.Option(help="stop after this many records (0: follow)")] = 0,
    idle_exit: Annotated[
        float, typer.Option(help="stop after this many idle seconds (0: never)")
    ] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """Follow decoded telemetry from the stream (new records, or from --since)."""
    from nats.js.api import ConsumerConfig, DeliverPolicy

    s: CtlSettings = ctx.obj
    subject = s.subjects.telemetry(host or "*", plugin or "*")
    start = _since(since) if since else None

    skipped: Counter[str] = Counter()

    async def go() -> int:
        bus = await connect_bus(s)
        shown = 0
        try:
            js = bus.client.jetstream()
            if start is not None:
                cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME,
                                     opt_start_time=start)  # fmt: skip
            else:
                cfg = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
            sub = await js.subscribe(subject, ordered_consumer=True, config=cfg)
            last = time.monotonic()
            while count == 0 or shown < count:
                try:
                    msg = await sub.next_msg(timeout=0.5)
                except Exception as exc:
                    if type(exc).__name__ != "TimeoutError":
                        raise
                    if idle_exit and time.monotonic() - last > idle_exit:
                        break
                    continue
                last = time.monotonic()
                shown += _show(msg, as_json, count - shown if count else 0, skipped)
            await sub.unsubscribe()
        finally:
            await bus.close()
            if skipped:
                err.print(f"[yellow]{sum(skipped.values())} malformed batch(es) skipped:[/] "
                          + "; ".join(f"{k} ({v})" for k, v in skipped.items()),
                          highlight=False)  # fmt: skip
        return shown

    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        return
    except HidsError as exc:
        raise failure(exc) from exc
    except Exception as exc:  # no stream yet, JetStream disabled
        err.print(f"[red]error:[/] cannot read the telemetry stream: {exc}")
        raise typer.Exit(Exit.CONTROLLER) from exc


def _show(msg: Any, as_json: bool, limit: int, skipped: Counter[str]) -> int:
    """Print a batch's records; a malformed batch (anyone may publish on the stream) is
    skipped after the records before the fault, and counted in `skipped` by reason."""
    h = msg.headers or {}
    host, plugin = h.get(frames.H_HOST, "?"), h.get(frames.H_PLUGIN, "?")
    try:
        seq = int(h.get(frames.H_SEQ, "0"))
    except ValueError:
        skipped["bad sequence header"] += 1
        return 0
    n = 0
    try:
        for i, (hdr, payload) in enumerate(frames.iter_frames(msg.data)):
            if limit and n >= limit:
                break
            n += _show_record(host, plugin, seq + i, hdr, payload, as_json)
    except ProtocolError as exc:
        skipped[exc.message] += 1
        err.print(f"[yellow]skipped the rest of a malformed batch from {host}/{plugin}:[/] "
                  f"{exc.message}", highlight=False)  # fmt: skip
    if as_json:
        sys.stdout.flush()
    return n


def _show_record(host: str, plugin: str, seq: int, hdr: frames.Header, payload: bytes,
                 as_json: bool) -> int:  # fmt: skip
    try:
        record: Any = msgpack.unpackb(payload, raw=False)
    except Exception:
        record = {"undecodable": payload[:64].hex()}
    when = dt.datetime.fromtimestamp(hdr.ts_ns / 1e9, dt.UTC)
    if as_json:
        sys.stdout.write(json.dumps({"host": host, "plugin": plugin, "seq": seq,
                                     "type": hdr.data_type, "time": when.isoformat(),
                                     "record": record}, default=str) + "\n")  # fmt: skip
    else:
        out.print(f"[dim]{when:%H:%M:%S.%f}[/] [cyan]{host}[/] [magenta]{plugin}[/] "
                  f"#{seq} t{hdr.data_type} {record}", highlight=False)  # fmt: skip
    return 1
