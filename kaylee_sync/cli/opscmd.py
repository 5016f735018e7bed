"""``kaylee-sync suspend``, ``resume`` and ``status``: the operator's levers and gauges.

Suspending a unit makes Git sync leave it alone — for an emergency fix made with
``kaylee run --override``, or to hold a unit while its file is being repaired. An
expiring suspension (``--for 2h``) ends by itself at the first sync after it runs out,
and the log says so.
"""

from __future__ import annotations

import getpass
import json
import re
import socket
import time
from typing import Any

import click

from kaylee_sync.cli.common import echo_json, etcd_options, etcd_settings_from, format_option
from kaylee_sync.cli.rolloutcmd import troubled_rollouts
from kaylee_sync.errors import UsageError
from kaylee_sync.plan.compute import format_time, short_commit
from kaylee_sync.store import Store
from kaylee_sync.sync.status import encode_status, read_status
from kaylee_sync.sync.suspend import encode_suspension, list_suspensions
from kaylee_sync.sync.suspend import resume as resume_unit
from kaylee_sync.sync.suspend import suspend as suspend_unit

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``2h``, ``1d``, ``1h30m`` → seconds (UsageError otherwise)."""
    compact = text.replace(" ", "")
    parts = _DURATION.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise UsageError(f"--for {text!r}: expected a duration such as 30m, 2h or 1h30m")
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds <= 0:
        raise UsageError(f"--for {text!r}: the duration must be positive")
    return seconds


def who_am_i() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@click.command()
@click.argument("name")
@click.option("--reason", required=True, help="Why Git sync must leave the unit alone.")
@click.option("--for", "duration", metavar="DURATION", help="Resume by itself after e.g. 2h.")
@click.option("--who", help="Who suspends it [default: user@host].")
@etcd_options
def suspend(name: str, reason: str, duration: str | None, who: str | None, **params: Any) -> None:
    """Make Git sync leave unit NAME alone until 'kaylee-sync resume NAME'.

    \b
    Examples:
      kaylee-sync suspend web --reason "hotfix INC-42, see #ops"
      kaylee-sync suspend web --reason "load test" --for 2h
    """
    now = time.time()
    until = None if duration is None else now + parse_duration(duration)
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
@etcd_options
def status(fmt: str, **params: Any) -> None:
    """Show the leader, the last sync attempt and success, and suspended units.

    \b
    Examples:
      kaylee-sync status
      kaylee-sync status --format json | jq .attempt.problems
    """
    with Store(etcd_settings_from(params)) as store:
        leader = store.leader()
        state = read_status(store)
        suspended = list_suspensions(store)
        troubled = troubled_rollouts(store)
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
        return
    click.echo(f"leader:        {leader or 'none (no kaylee-sync daemon is leading)'}")
    if state is None:
        click.echo("last attempt:  never synced")
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
