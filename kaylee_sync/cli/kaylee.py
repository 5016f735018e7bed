"""``kaylee``: the original Kaylee command line, kept for emergencies and compatibility.

Same commands, flags and defaults as Kaylee 2.3.0 (``--etcd-endpoints`` / env
``ETCDCTL_ENDPOINT``, ``--etcd-prefix /kaylee2``), but a file that fails validation
writes nothing, unknown unit names are errors, and errors are one line.
"""

from __future__ import annotations

import getpass
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import click

from kaylee_sync import __version__
from kaylee_sync.cli import listing
from kaylee_sync.cli.common import (
    KayleeGroup,
    echo_json,
    etcd_options,
    etcd_settings_from,
    format_option,
    setup_logging,
)
from kaylee_sync.cli.envvars import name_variables
from kaylee_sync.cli.fleetopts import (
    fleet_client,
    fleet_options,
    scheduler_options,
    scheduler_settings_from,
    verbose_option,
)
from kaylee_sync.cli.follow import FollowSettings, Target, display_for, follow
from kaylee_sync.cli.rolloutcmd import rollout
from kaylee_sync.cli.values import Seconds
from kaylee_sync.cli.watching import repeat, watch_option
from kaylee_sync.errors import KayleeError, NotFoundError, UsageError
from kaylee_sync.render import check_renderable
from kaylee_sync.server import SERVER_LISTEN, SchedulerServer
from kaylee_sync.settings import EtcdSettings
from kaylee_sync.source.localfile import load_unit_file_and_policy
from kaylee_sync.spec import policy_to_json, spec_hash, to_json
from kaylee_sync.store import Store
from kaylee_sync.sync.takeover import Override, Written, remove_unit, run_unit


class RolloutFailed(KayleeError):
    """``kaylee run --wait``: the rollout failed, stalled or was superseded (exit 1)."""


CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.group(cls=KayleeGroup, context_settings=CONTEXT)
@click.version_option(__version__, "--version", "-V", prog_name="kaylee")
@etcd_options
@click.pass_context
def cli(ctx: click.Context, /, **params: Any) -> None:
    """Container orchestration for fleet: the original Kaylee command line.

    \b
    Examples:
      kaylee run countly.yaml        validate a unit file and write it to etcd
      kaylee ls                      list units
      kaylee restart countly         roll every instance of a unit
      kaylee rm countly              destroy a unit
      kaylee rollout status countly  a health-gated rollout: canaries, health, revert
    """
    ctx.obj = etcd_settings_from(params)


def _store(ctx: click.Context) -> Store:
    settings: EtcdSettings = ctx.obj
    return Store(settings)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--wait",
    is_flag=True,
    help="Follow the rollout until every new instance runs; exit 1 if it fails or stalls.",
)
@click.option(
    "--timeout",
    type=Seconds(min=1),
    default=FollowSettings.timeout,
    show_default=True,
    help="Seconds --wait waits in all (the scheduler's rollout timeout plus slack).",
)
@click.option(
    "--override",
    is_flag=True,
    help="Emergency: change a unit managed by Git, and suspend Git sync for it.",
)
@click.option("--reason", help="Why you override Git (required with --override).")
@fleet_options
@click.pass_context
def run(ctx: click.Context, /, file: Path, **params: Any) -> None:
    """Run a new unit or update an existing one from a unit FILE (YAML or JSON).

    The file is validated first; if it has any error, nothing is written. A unit that
    Git manages is refused unless --override (with --reason): that writes the spec and
    suspends Git sync for the unit until 'kaylee-sync resume NAME'.

    \b
    Examples:
      kaylee run web.yaml --wait
      kaylee run web.yaml --override --reason "hotfix for INC-123"
    """
    override = _override(params)
    spec, policy = load_unit_file_and_policy(file)
    spec = check_renderable(spec, str(file))
    value = to_json(spec)
    with _store(ctx) as store:
        stored_policy = "" if policy.is_default else policy_to_json(policy)
        written = run_unit(store, spec.name, value, override, now=time.time(), policy=stored_policy)
        generation = store.restart_generation(spec.name)
        click.echo(
            f"unit {spec.name} written (spec hash {spec_hash(spec, generation)[:6]}, "
            f"revision {written.revision})"
        )
        _tell(spec.name, written)
        if not params["wait"]:
            return
        settings: EtcdSettings = ctx.obj
        fleet = fleet_client(settings, params)
        target = Target(spec, value.encode(), generation, params["unit_prefix"])
        try:
            outcome = follow(
                store,
                fleet,
                target,
                display_for(sys.stdout),
                FollowSettings(timeout=params["timeout"]),
            )
        except KeyboardInterrupt:
            click.echo(
                f"stopped following; the rollout of {spec.name} goes on (see 'kaylee ls')",
                err=True,
            )
            ctx.exit(130)
        finally:
            fleet.close()
    if not outcome.ok:
        raise RolloutFailed(outcome.message)
    click.echo(f"{outcome.message} in {outcome.elapsed:.0f} s")


@cli.command(name="ls")
@fleet_options
@format_option("table", "json", help="Output format.")
@click.option("--no-fleet", is_flag=True, help="Do not ask fleet for its units and states.")
@watch_option
@click.pass_context
def ls(
    ctx: click.Context, /, fmt: str, no_fleet: bool, watch: bool, every: float, **params: Any
) -> None:
    """List units: their fleet units with machine and state, and rollout progress.

    \b
    Examples:
      kaylee ls
      kaylee ls --watch
      kaylee ls --format json | jq '.units[] | {name, rollout}'
    """
    settings: EtcdSettings = ctx.obj
    fleet = None if no_fleet else fleet_client(settings, params)

    def show() -> None:
        data = listing.collect(store, fleet, params["unit_prefix"])
        if fmt == "json":
            echo_json(data)
        else:
            listing.print_table(data)

    try:
        with _store(ctx) as store:
            if watch:
                repeat(show, every, "kaylee ls", header=fmt != "json")
            else:
                show()
    finally:
        if fleet is not None:
            fleet.close()


@cli.command()
@click.argument("name")
@click.pass_context
def restart(ctx: click.Context, name: str) -> None:
    """Restart every instance of unit NAME (a rolling replacement).

    \b
    Example:
      kaylee restart countly
    """
    with _store(ctx) as store:
        if store.get_unit(name) is None:
            raise NotFoundError(f"no unit named {name!r} (see 'kaylee ls')")
        generation = store.bump_restart(name)
    click.echo(f"restart of {name} requested (generation {generation})")


@cli.command()
@click.argument("name")
@click.option(
    "--override",
    is_flag=True,
    help="Emergency: remove a unit managed by Git, and suspend Git sync for it.",
)
@click.option("--reason", help="Why you override Git (required with --override).")
@click.pass_context
def rm(ctx: click.Context, /, name: str, **params: Any) -> None:
    """Destroy unit NAME and all of its fleet units.

    A unit that Git manages is refused unless --override (with --reason), which also
    suspends Git sync for it, so that sync does not create it again.

    \b
    Examples:
      kaylee rm countly
      kaylee rm web --override --reason "INC-42: take it down now, file removed in #913"
    """
    override = _override(params)
    with _store(ctx) as store:
        written = remove_unit(store, name, override, now=time.time())
    click.echo(f"unit {name} removed")
    _tell(name, written)


def _override(params: dict[str, Any]) -> Override | None:
    """The --override/--reason pair, checked: a reason is required, and only with it."""
    reason = (params["reason"] or "").strip()
    if params["override"] and not reason:
        raise UsageError("--override needs --reason: say why Git is overridden")
    if reason and not params["override"]:
        raise UsageError("--reason is only used with --override")
    return Override(who=_who(), reason=reason) if params["override"] else None


def _who() -> str:
    """user@host, as the suspension records who overrode Git."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name (a container without a passwd entry)
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def _tell(name: str, written: Written) -> None:
    """What a takeover did beyond the write: the suspension it made, or a note."""
    if written.suspension is not None:
        s = written.suspension
        click.echo(
            f"Git sync of {name} suspended ({s.who}: {s.reason}); "
            f"'kaylee-sync resume {name}' hands it back to Git"
        )
    elif written.note:
        click.echo(f"note: {written.note}")


@cli.command()
@fleet_options
@scheduler_options
@click.option(
    "--listen",
    default=SERVER_LISTEN,
    show_default=True,
    help="HTTP listener for /healthz, /readyz and /metrics ('' = off). Not kaylee-sync's "
    "9420, so both can run on one node.",
)
@verbose_option
@click.pass_context
def server(ctx: click.Context, /, listen: str, **params: Any) -> None:
    """Run the scheduling server: turn units/* into fleet units (leader only).

    Run one on several nodes: they elect a leader through etcd and only the leader
    schedules. SIGTERM resigns at once so a standby takes over. It is kaylee-sync's
    daemon without Git: the same /healthz, /readyz, /metrics and systemd watchdog.

    \b
    Examples:
      kaylee server
      kaylee server --listen 0.0.0.0:9421
      kaylee --etcd-endpoints https://10.0.0.1:2379 server --fleet-driver api
    """
    setup_logging(params["verbose"])
    settings: EtcdSettings = ctx.obj
    scheduler, election = scheduler_settings_from(params)
    with Store(settings) as store:
        fleet = fleet_client(settings, params)
        try:
            SchedulerServer(store, fleet, scheduler, election, listen=listen or None).run()
        finally:
            fleet.close()


cli.add_command(rollout)
name_variables(cli)


def main() -> None:
    cli(prog_name="kaylee")
