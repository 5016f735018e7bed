"""``kaylee-sync``: the GitOps command line.

Today it offers ``render`` (what fleet will receive for a unit file); the daemon
(``--repo``), ``plan``, ``validate`` and ``--dev`` join it as they are built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from kaylee_sync import __version__
from kaylee_sync.cli.common import KayleeGroup, echo_json
from kaylee_sync.render import check_renderable, render_units
from kaylee_sync.spec import spec_hash, to_json
from kaylee_sync.spec.loader import load_unit_file

CONTEXT = {"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "KAYLEE"}


@click.group(cls=KayleeGroup, context_settings=CONTEXT)
@click.version_option(__version__, "--version", "-V", prog_name="kaylee-sync")
def cli() -> None:
    """GitOps for CoreOS fleet: unit files in Git become fleet units.

    \b
    Examples:
      kaylee-sync render sample-repo/countly.yaml
      kaylee-sync render countly.yaml --format json
    """


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text for people, json for tools.",
)
@click.option(
    "--unit-prefix", default="k2", show_default=True, help="Prefix of the fleet unit names."
)
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


def main() -> None:
    cli(prog_name="kaylee-sync")
