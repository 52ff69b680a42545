"""`hidsctl query ...`: which hosts run an affected package version (R5).

The range is parsed here first (a typo fails at once, exit 2; a bad advisory file, exit 9),
then the controllers answer from their inventory index, split across them and merged. Every
known host is accounted for: matched (with what it runs), clean, answered while offline from
its last known inventory (with its age), or no answer and why.
Exit codes: 0 complete and nothing affected, 10 complete and affected hosts found, 1 some hosts
did not answer, 2 bad range, 9 bad advisory, 5 no controller.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from hidsd.base.errors import HidsError
from hidsd.ctl.common import (
    CtlSettings,
    Exit,
    JsonFlag,
    ask,
    emit_json,
    err,
    failure,
    out,
    run_sync,
)
from hidsd.wire.fields import Plain
from hidsd.wire.fleetquery import QueryRequest, QueryResult, range_to_wire
from hidsd.wire.ranges import AffectedRange
from hidsd.wire.replies import Liveness
from hidsd.wire.rpc import encode_request
from hidsd.wire.status import NO_ANSWER
from hidsd.wire.verbs import CONTROLLERS, ENDPOINTS, QUERY

query_app = typer.Typer(help="Fleet queries: which hosts run an affected version.",
                        no_args_is_help=True)  # fmt: skip

JsonOpt = JsonFlag
MaxAgeOpt = Annotated[
    float,
    typer.Option(
        help="online hosts whose inventory is older than this many seconds count as not answering"
    ),
]
TimeoutOpt = Annotated[float, typer.Option(help="seconds to wait for the answer")]


async def query(
    s: CtlSettings, ranges: Sequence[AffectedRange], max_age: float, timeout: float,
    bus: Any = None,
) -> QueryResult:  # fmt: skip
    """What `hidsctl query` asks the controllers: over a new connection, as one run does, or
    over `bus` (connected, left open: many queries, one connection)."""
    params = QueryRequest(tuple(ranges), max_age).to_params()
    if bus is None:
        return await ask(s, QUERY, params, timeout_s=timeout)
    return QUERY.decode(await bus.request(s.subjects.ctl(QUERY.name), encode_request(params),
                                          timeout))  # fmt: skip


def _query(
    s: CtlSettings, ranges: Sequence[AffectedRange], max_age: float, timeout: float
) -> QueryResult:
    return run_sync(lambda: query(s, ranges, max_age, timeout))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _report(
    res: QueryResult, title: str, as_json: bool, extra: dict[str, Plain],
    unsupported: Sequence[str] = (),
) -> None:  # fmt: skip
    """The answer as tables (or JSON: the reply's map with `extra` beside it); the exit code
    says whether it is complete and whether any host is affected."""
    c = res.counts
    if as_json:
        emit_json({**res.to_wire(), **extra})
    else:
        if res.matched:
            t = Table(title=f"{title}: {c.matched} affected hosts")
            for col in ("host", "liveness", "installed", "affected range (source)", "age"):
                t.add_column(col, no_wrap=col in ("host", "installed"))
            for row in res.matched:
                for p in row.packages or ():
                    live = row.liveness.value
                    color = "green" if live == "online" else "yellow"
                    src = f" ({p.source})" if p.source not in ("", "cli") else ""
                    t.add_row(row.host, f"[{color}]{live}[/]",
                              f"{p.package} [red]{p.version}[/]", p.range_spec + src,
                              _age(row.inventory_age_s))  # fmt: skip
            out.print(t)
        s = Table(title=f"{title}: accounting", show_header=False)
        s.add_column("what")
        s.add_column("value")
        s.add_row("hosts known", str(c.hosts))
        s.add_row("answered", f"{c.answered} ({c.offline_answered} offline, from their "
                              "last known inventory)")  # fmt: skip
        s.add_row("affected", f"[{'red' if c.matched else 'green'}]{c.matched}[/]")
        s.add_row("clean", str(c.clean))
        s.add_row("no answer", f"[{'red' if c.no_answer else 'green'}]{c.no_answer}[/]")
        for missing in res.no_answer:
            s.add_row(f"  {missing.host}", f"{missing.liveness.value}: {missing.reason}")
        for row in res.matched + res.clean:
            if row.liveness is not Liveness.ONLINE:
                age = _age(row.inventory_age_s)
                s.add_row(f"  {row.host} (offline)", f"answered from an inventory {age} old")
        shards = ", ".join(f"{sh.controller}: {sh.hosts} ({sh.how})" for sh in res.shards)
        s.add_row("controllers", shards)
        s.add_row("elapsed", f"{res.elapsed_ms:.1f} ms")
        for u in unsupported:
            s.add_row("not answerable", f"[yellow]{u}[/]")
        out.print(s)
    if not res.complete:
        raise typer.Exit(Exit.INCOMPLETE)
    if res.matched:
        raise typer.Exit(Exit.AFFECTED)


@query_app.command("package")
def query_package(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="package name as the package manager knows it")],
    affected: Annotated[str, typer.Option(help="vers range, e.g. 'vers:deb/<1.1.1n-0+deb11u5'")],
    max_age: MaxAgeOpt = 7800.0,
    timeout: TimeoutOpt = 30.0,
    as_json: JsonOpt = False,
) -> None:
    """Which hosts run NAME in a version inside the --affected range."""
    from hidsd.wire.ranges import QueryError, parse_vers

    try:
        rng = parse_vers(affected, name)
    except QueryError as exc:
        err.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(Exit.USAGE) from exc
    res = _query(ctx.obj, [rng], max_age, timeout)
    _report(res, f"{rng.ecosystem}/{name} {rng.spec}", as_json, {"query": range_to_wire(rng)})


@query_app.command("advisory")
def query_advisory(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="an OSV advisory (JSON, as osv.dev serves it)")],
    max_age: MaxAgeOpt = 7800.0,
    timeout: TimeoutOpt = 30.0,
    as_json: JsonOpt = False,
) -> None:
    """Which hosts run any package in an affected range of an OSV advisory."""
    from hidsd.wire.osv import parse_osv
    from hidsd.wire.ranges import QueryError

    try:
        adv = parse_osv(file.read_bytes())
    except OSError as exc:
        err.print(f"[red]error:[/] cannot read {file}: {exc.strerror}")
        raise typer.Exit(Exit.USAGE) from exc
    except QueryError as exc:
        err.print(f"[red]error:[/] {file}: {exc.message}")
        raise typer.Exit(Exit.INVALID) from exc
    for u in adv.unsupported:
        err.print(f"[yellow]warning:[/] {adv.id}: cannot answer for {u} (only deb, rpm, apk)")
    if not adv.ranges:
        err.print(f"[red]error:[/] {adv.id}: no deb, rpm or apk package range to query")
        raise typer.Exit(Exit.INVALID)
    try:
        res = _query(ctx.obj, list(adv.ranges), max_age, timeout)
    except HidsError as exc:
        raise failure(exc) from exc
    _report(res, adv.id, as_json, {"advisory": {"id": adv.id, "summary": adv.summary,
                                                "aliases": list(adv.aliases)},
                                   "unsupported": list(adv.unsupported)},
            adv.unsupported)  # fmt: skip


controllers_app = typer.Typer(help="The controllers and how they divide the work.",
                              no_args_is_help=True)  # fmt: skip


@controllers_app.command("list")
def controllers_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every live controller: heartbeats and acks it received, what it forwarded, its view."""
    res = run_sync(lambda: ask(ctx.obj, CONTROLLERS, timeout_s=5.0))
    if as_json:
        emit_json(res.to_wire())
        return
    t = Table(title=f"{len(res.controllers)} controllers")
    for col in ("name", "id", "up", "heartbeats", "acks", "fwd in", "agents", "inventories"):
        t.add_column(col, no_wrap=col == "name")
    for c in res.controllers:
        st = c.stats
        if st is None:
            t.add_row("?", c.id, f"[red]{NO_ANSWER}[/]", "", "", "", "", "")
            continue
        n = st.counters
        fwd = n.get("heartbeats_forwarded_in", 0) + n.get("acks_forwarded_in", 0)
        t.add_row(st.name, c.id, f"{st.uptime_s:.0f}s", str(n.get("heartbeats", 0)),
                  str(n.get("acks", 0)), str(fwd), str(st.agents),
                  str(st.inventory_hosts))  # fmt: skip
    out.print(t)


@controllers_app.command("endpoints")
def controllers_endpoints(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """One controller's request verbs with their counters (the one that answers)."""
    res = run_sync(lambda: ask(ctx.obj, ENDPOINTS))
    if as_json:
        emit_json(res.to_wire())
        return
    t = Table(title="controller endpoints")
    for col in (
        "kind",
        "verb",
        "requests",
        "errors",
        "internal",
        "too large",
        "avg ms",
        "last error",
    ):
        t.add_column(col, no_wrap=col in ("kind", "verb"))
    for kind, table in (("controller", res.controller), ("peer", res.peer)):
        for verb, st in table.endpoints.items():
            internal = f"[red]{st.internal_errors}[/]" if st.internal_errors else "0"
            avg = f"{st.average_ms:.2f}"
            t.add_row(kind, verb, str(st.requests), str(st.errors), internal,
                      str(st.too_large), avg, st.last_error)  # fmt: skip
    out.print(t)
