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
from kaylee_sync.cli.common import (
    KayleeGroup,
    echo_json,
    etcd_options,
    etcd_settings_from,
)
from kaylee_sync.errors import NotFoundError, SpecError
from kaylee_sync.settings import EtcdSettings
from kaylee_sync.spec import spec_hash, to_json
from kaylee_sync.spec.loader import load_unit_file, parse_stored
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
    spec = load_unit_file(file)
    value = to_json(spec)
    with _store(ctx) as store:
        revision = store.put_unit(spec.name, value)
    click.echo(f"unit {spec.name} written (spec hash {spec_hash(spec)[:6]}, revision {revision})")


@cli.command(name="ls")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
@click.pass_context
def ls(ctx: click.Context, fmt: str) -> None:
    """List units, with their spec hash and restart generation."""
    rows = []
    with _store(ctx) as store:
        leader = store.leader()
        for stored in store.list_units():
            name = stored.key.rsplit("/", 1)[-1]
            row: dict[str, Any] = {"name": name, "revision": stored.mod_revision}
            try:
                spec = parse_stored(stored.value, stored.key)
            except SpecError as exc:
                row["error"] = str(exc.issues[0]) if exc.issues else str(exc)
            else:
                generation = store.restart_generation(name)
                row.update(
                    replicas=spec.replicas,
                    hash=spec_hash(spec, generation)[:6],
                    restart_generation=generation,
                )
            rows.append(row)
    if fmt == "json":
        echo_json({"leader": leader, "units": rows})
        return
    _print_table(rows)
    click.echo(f"leader: {leader or '(none)'}", err=True)


def _print_table(rows: list[dict[str, Any]]) -> None:
    header = ("UNIT", "REPLICAS", "HASH", "RESTARTS", "NOTE")
    lines = [header]
    for row in rows:
        lines.append(
            (
                row["name"],
                str(row.get("replicas", "")) if "error" not in row else "",
                row.get("hash", ""),
                str(row.get("restart_generation", "")),
                row.get("error", ""),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


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


def main() -> None:
    cli(prog_name="kaylee")
