"""``kaylee-sync``: the GitOps command line.

Without a subcommand it is the daemon (``kaylee-sync --repo …``, ``--once``, ``--dev``);
the subcommands look before leaping (``plan``, ``validate``, ``render``, ``schema``),
apply a saved plan (``apply``) or pull the emergency levers (``suspend``, ``resume``) and
report (``status``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from kaylee_sync import __version__
from kaylee_sync.cli.common import (
    USAGE_EXIT,
    KayleeGroup,
    echo_json,
    etcd_options,
    format_option,
    unit_prefix_option,
)
from kaylee_sync.cli.daemoncmd import daemon_options, run_daemon
from kaylee_sync.cli.envvars import name_variables
from kaylee_sync.cli.fleetopts import fleet_options, scheduler_options
from kaylee_sync.cli.gitopts import source_options
from kaylee_sync.cli.importv2 import import_v2
from kaylee_sync.cli.lint import schema, validate
from kaylee_sync.cli.opscmd import resume, status, suspend
from kaylee_sync.cli.plancmd import apply, plan
from kaylee_sync.cli.shipped import systemd_unit
from kaylee_sync.cli.synccmd import sync
from kaylee_sync.cli.trustopts import feedback_options, signature_options
from kaylee_sync.render import check_renderable, render_units
from kaylee_sync.source.localfile import load_unit_file
from kaylee_sync.spec import spec_hash, to_json

CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.group(cls=KayleeGroup, context_settings=CONTEXT, invoke_without_command=True)
@click.version_option(__version__, "--version", "-V", prog_name="kaylee-sync")
@source_options
@etcd_options
@fleet_options
@scheduler_options
@daemon_options
@signature_options
@feedback_options
@click.pass_context
def cli(ctx: click.Context, /, **params: Any) -> None:
    """GitOps for CoreOS fleet: unit files in Git become fleet units.

    Without a command, runs the daemon: every node runs one, they elect a leader, and
    the leader syncs the repository into etcd and schedules fleet units.

    \b
    Examples:
      kaylee-sync --dev --repo . --path sample-repo        # try it: embedded etcd, simulated fleet
      kaylee-sync --repo https://git.example.com/ops/units.git --path units \\
                  --etcd-endpoints https://etcd1:2379
      kaylee-sync --repo /srv/units --once                 # one sync, for cron or CI
      kaylee-sync plan --repo . --format markdown --against origin/main
      kaylee-sync validate units/
    """
    if ctx.invoked_subcommand is not None:
        return
    if not params["repo"] and not params["dev"]:
        click.echo(ctx.get_help(), err=True)
        ctx.exit(USAGE_EXIT)
    if params["dev"] and not params["repo"]:
        params["repo"] = "."
    run_daemon(params)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@format_option("text", "json")
@unit_prefix_option()
@click.option(
    "--restart-generation",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Render as after this many 'kaylee restart's (changes the spec hash).",
)
def render(file: Path, fmt: str, unit_prefix: str, restart_generation: int) -> None:
    """Show what fleet will receive for a unit FILE.

    Prints the canonical JSON stored in etcd, the spec hash and every fleet unit: its
    name, unit file text and fleet unit hash. Nothing is read from or written to etcd.

    \b
    Examples:
      kaylee-sync render countly.yaml
      kaylee-sync render countly.yaml --format json | jq -r '.units[0].unit_file'
    """
    spec = check_renderable(load_unit_file(file), str(file), unit_prefix)
    units = render_units(spec, prefix=unit_prefix, generation=restart_generation)
    full_hash = spec_hash(spec, restart_generation)
    document: dict[str, Any] = {
        "json": to_json(spec),
        "hash": full_hash,
        "hash6": full_hash[:6],
        "units": [{"name": u.name, "unit_file": u.text, "fleet_unit_hash": u.hash} for u in units],
    }
    if fmt == "json":
        echo_json(document)
        return
    click.echo(f"# unit {spec.name}: stored in etcd as units/{spec.name}")
    click.echo(document["json"])
    click.echo(f"# spec hash {full_hash} (fleet unit names use {full_hash[:6]})")
    for unit in document["units"]:
        click.echo(f"\n# fleet unit {unit['name']} (hash {unit['fleet_unit_hash']})")
        click.echo(unit["unit_file"], nl=False)


for command in (
    plan,
    apply,
    validate,
    schema,
    suspend,
    resume,
    status,
    sync,
    systemd_unit,
    import_v2,
):
    cli.add_command(command)
name_variables(cli)


def main() -> None:
    cli(prog_name="kaylee-sync")
