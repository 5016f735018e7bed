"""``kaylee``: the original Kaylee command line, kept for emergencies and compatibility.

Same commands, flags and defaults as Kaylee 2.3.0 (``--etcd-endpoints`` / env
``ETCDCTL_ENDPOINT``, ``--etcd-prefix /kaylee2``), but a file that fails validation
writes nothing, unknown unit names are errors, and errors are one line.
"""

from __future__ import annotations

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
    setup_logging,
)
from kaylee_sync.cli.fleetopts import fleet_client, fleet_options
from kaylee_sync.election import ElectionSettings
from kaylee_sync.errors import NotFoundError
from kaylee_sync.render import check_renderable
from kaylee_sync.scheduler.runner import SchedulerSettings
from kaylee_sync.server import SchedulerServer
from kaylee_sync.settings import EtcdSettings
from kaylee_sync.spec import spec_hash, to_json
from kaylee_sync.spec.loader import load_unit_file
from kaylee_sync.store import Store

CONTEXT = {"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "KAYLEE"}


@click.group(cls=KayleeGroup, context_settings=CONTEXT)
@click.version_option(__version__, "--version", "-v", prog_name="kaylee")
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
    """
    ctx.obj = etcd_settings_from(params)


def _store(ctx: click.Context) -> Store:
    settings: EtcdSettings = ctx.obj
    return Store(settings)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def run(ctx: click.Context, file: Path) -> None:
    """Run a new unit or update an existing one from a unit FILE (YAML or JSON).

    The file is validated first; if it has any error, nothing is written.
    """
    spec = check_renderable(load_unit_file(file), str(file))
    value = to_json(spec)
    with _store(ctx) as store:
        revision = store.put_unit(spec.name, value)
    click.echo(f"unit {spec.name} written (spec hash {spec_hash(spec)[:6]}, revision {revision})")


@cli.command(name="ls")
@fleet_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
@click.option("--no-fleet", is_flag=True, help="Do not ask fleet for its units and states.")
@click.pass_context
def ls(ctx: click.Context, /, fmt: str, no_fleet: bool, **params: Any) -> None:
    """List units: their fleet units with machine and state, and rollout progress.

    \b
    Examples:
      kaylee ls
      kaylee ls --format json | jq '.units[] | {name, rollout}'
    """
    settings: EtcdSettings = ctx.obj
    fleet = None if no_fleet else fleet_client(settings, params)
    with _store(ctx) as store:
        data = listing.collect(store, fleet, params["unit_prefix"])
    if fmt == "json":
        echo_json(data)
    else:
        listing.print_table(data)


@cli.command()
@click.argument("name")
@click.pass_context
def restart(ctx: click.Context, name: str) -> None:
    """Restart every instance of unit NAME (a rolling replacement)."""
    with _store(ctx) as store:
        if store.get_unit(name) is None:
            raise NotFoundError(f"no unit named {name!r} (see 'kaylee ls')")
        generation = store.bump_restart(name)
    click.echo(f"restart of {name} requested (generation {generation})")


@cli.command()
@click.argument("name")
@click.pass_context
def rm(ctx: click.Context, name: str) -> None:
    """Destroy unit NAME and all of its fleet units."""
    with _store(ctx) as store:
        if not store.delete_unit(name):
            raise NotFoundError(f"no unit named {name!r} (see 'kaylee ls')")
        store.clear_restart(name)
    click.echo(f"unit {name} removed")


@cli.command()
@fleet_options
@click.option(
    "--lease-ttl",
    type=click.IntRange(min=3),
    default=10,
    show_default=True,
    help="Seconds the leader's etcd lease lives; a standby takes over within this.",
)
@click.option(
    "--stable",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds a new replica must run before an old one is retired.",
)
@click.option(
    "--rollout-timeout",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Seconds a new replica may take to run stably before the rollout fails.",
)
@click.option(
    "--resync",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Seconds between full reconciliations when nothing changes.",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def server(ctx: click.Context, /, **params: Any) -> None:
    """Run the scheduling server: turn units/* into fleet units (leader only).

    Run one on several nodes: they elect a leader through etcd and only the leader
    schedules. SIGTERM resigns at once so a standby takes over.

    \b
    Examples:
      kaylee server
      kaylee --etcd-endpoints https://10.0.0.1:2379 server --fleet-driver api
    """
    setup_logging(params["verbose"])
    settings: EtcdSettings = ctx.obj
    scheduler = SchedulerSettings(
        unit_prefix=params["unit_prefix"],
        stable=params["stable"],
        rollout_timeout=params["rollout_timeout"],
        resync=params["resync"],
    )
    election = ElectionSettings(
        lease_ttl=params["lease_ttl"], safety_margin=max(1.0, params["lease_ttl"] / 5)
    )
    with Store(settings) as store:
        app = SchedulerServer(store, fleet_client(settings, params), scheduler, election)
        with app.signals():
            app.run()


def main() -> None:
    cli(prog_name="kaylee")
