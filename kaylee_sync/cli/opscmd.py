"""``kaylee-sync suspend``, ``resume`` and ``status``: the operator's levers and gauges.

Suspending a unit makes Git sync leave it alone — for an emergency fix made with
``kaylee run --override``, or to hold a unit while its file is being repaired. An
expiring suspension (``--for 2h``) ends by itself at the first sync after it runs out,
and the log says so.
"""

from __future__ import annotations

import getpass
import json
import socket
import time
from functools import partial
from typing import Any

import click

from kaylee_sync.cli.common import (
    echo_json,
    etcd_options,
    etcd_settings_from,
    format_option,
    printable,
)
from kaylee_sync.cli.rolloutcmd import troubled_rollouts
from kaylee_sync.cli.values import Duration
from kaylee_sync.cli.watching import repeat, watch_option
from kaylee_sync.errors import UsageError
from kaylee_sync.plan.compute import format_time, short_commit
from kaylee_sync.store import Store
from kaylee_sync.sync.status import encode_status, read_status_checked
from kaylee_sync.sync.suspend import encode_suspension, read_suspensions
from kaylee_sync.sync.suspend import resume as resume_unit
from kaylee_sync.sync.suspend import suspend as suspend_unit


def who_am_i() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@click.command()
@click.argument("name")
@click.option("--reason", required=True, help="Why Git sync must leave the unit alone.")
@click.option(
    "--for", "duration", type=Duration(), help="Resume by itself after e.g. 2h (at most 3650d)."
)
@click.option("--who", help="Who suspends it [default: user@host].")
@etcd_options
def suspend(name: str, reason: str, duration: float | None, who: str | None, **params: Any) -> None:
    """Make Git sync leave unit NAME alone until 'kaylee-sync resume NAME'.

    \b
    Examples:
      kaylee-sync suspend web --reason "hotfix INC-42, see #ops"
      kaylee-sync suspend web --reason "load test" --for 2h
    """
    now = time.time()
    until = None if duration is None else now + duration
    with Store(etcd_settings_from(params)) as store:
        done = suspend_unit(store, name, who=who or who_am_i(), reason=reason, until=until, now=now)
    ends = f" until {format_time(done.until)}" if done.until is not None else ""
    click.echo(f"Git sync of {name} suspended{ends} ({done.who}: {done.reason})")


@click.command()
@click.argument("name")
@etcd_options
def resume(name: str, **params: Any) -> None:
    """Let Git sync manage unit NAME again (the next sync puts Git's version back).

    \b
    Example:
      kaylee-sync resume web
    """
    with Store(etcd_settings_from(params)) as store:
        removed = resume_unit(store, name)
    if removed is None:
        raise UsageError(f"{name} is not suspended")
    click.echo(f"Git sync of {name} resumed (it was suspended by {removed.who or '?'})")


@click.command()
@format_option("text", "json")
@watch_option
@etcd_options
def status(fmt: str, watch: bool, every: float, **params: Any) -> None:
    """Show the leader, the last sync attempt and success, and suspended units.

    \b
    Examples:
      kaylee-sync status
      kaylee-sync status --watch
      kaylee-sync status --format json | jq .attempt.problems
    """
    with Store(etcd_settings_from(params)) as store:
        if watch:
            show = partial(_show_status, store, fmt, watching=True)
            repeat(show, every, "kaylee-sync status", header=fmt != "json")
        else:
            _show_status(store, fmt)


def _show_status(store: Store, fmt: str, *, watching: bool = False) -> None:
    leader = store.leader()
    state, malformed = read_status_checked(store)
    suspended, bad_suspensions = read_suspensions(store)
    troubled = troubled_rollouts(store)
    # Malformed records are reported beside what could be read, on stderr, one line each:
    # the command still shows the rest, and exits 1 so that scripts notice (a watch goes on).
    unreadable = [malformed] if malformed else []
    unreadable += [str(exc) for exc in bad_suspensions]
    for line in unreadable:
        click.echo(f"error: {line}", err=True)
    if watching:
        unreadable = []
    if fmt == "json":
        document = {} if state is None else json.loads(encode_status(state))
        echo_json(
            {
                **document,
                "leader": leader,
                "suspended": {n: json.loads(encode_suspension(s)) for n, s in suspended.items()},
                "rollouts": {n: r.as_dict() for n, r in troubled.items()},
            }
        )
        _exit_if(unreadable)
        return
    # The master key is written by whoever leads; shown escaped, it cannot drive the terminal.
    shown = printable(leader) if leader else "none (no kaylee-sync daemon is leading)"
    click.echo(f"leader:        {shown}")
    if state is None:
        click.echo(f"last attempt:  {'unknown (see the error)' if malformed else 'never synced'}")
    else:
        a = state.attempt
        outcome = "ok" if a.ok else f"FAILED: {a.error}"
        click.echo(
            f"last attempt:  {format_time(a.time)} {a.commit[:7] or '(no commit)'} {outcome}"
        )
        if state.last_success is not None:
            s = state.last_success
            click.echo(f"last success:  {format_time(s.time)} {short_commit(s.commit)}")
        if a.counts:
            click.echo(
                "units:         " + ", ".join(f"{v} {k}" for k, v in sorted(a.counts.items()) if v)
            )
        if a.prune_refused:
            click.echo(f"prune refused: {a.prune_refused}")
        if a.prune_hold is not None:
            h = a.prune_hold
            click.echo(
                f"prune hold:    {h.held} units held back since {format_time(h.since)} "
                f"(first refused at {short_commit(h.first_commit)}); see kaylee-sync plan"
            )
        if a.prune_overridden or a.prune_released:
            click.echo(f"prune release: {a.prune_released or 'lifted by --allow-prune'}")
        for problem in a.problems:
            click.echo(
                f"invalid:       {problem['file']}:{problem['line']}: {problem['field']}: "
                f"{problem['reason']}"
            )
    for name, held in sorted(suspended.items()):
        ends = f" until {format_time(held.until)}" if held.until is not None else ""
        click.echo(f"suspended:     {name}{ends} by {held.who}: {held.reason}")
    for name, report in sorted(troubled.items()):
        click.echo(f"{report.phase.value + ':':<15}{name}: {report.message}")
    _exit_if(unreadable)


def _exit_if(unreadable: list[str]) -> None:
    if unreadable:
        raise click.exceptions.Exit(1)
