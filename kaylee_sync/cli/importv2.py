"""``kaylee-sync import-v2``: the Go Kaylee's specs (etcd v2) as unit files for Git.

The Go Kaylee kept ``/kaylee2/units/<name>`` in etcd's v2 keyspace, which kaylee-sync
does not read; moving to kaylee-sync means committing those specs as files. This does
what the shell loop in docs/operations.md used to do, and what the loop could not:
it checks each entry with the unit file rules, writes valid ones as YAML whose spec is
exactly the stored one (so the spec hash, and the fleet units the scheduler adopts,
stay the same), and compares that hash with the fleet units running in the same etcd —
a mismatch means the takeover would roll that unit out.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import click
import yaml

from kaylee_sync.cli.common import unit_prefix_option
from kaylee_sync.cli.fleetopts import DEFAULT_FLEET_PREFIX, FLEET_PREFIX_VARS
from kaylee_sync.errors import FleetError, KayleeError, SpecError, UsageError
from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.fleet.registry import RegistryDriver
from kaylee_sync.render import parse_unit_name
from kaylee_sync.settings import EtcdSettings, check_endpoint, with_scheme
from kaylee_sync.source.localfile import load_unit_file
from kaylee_sync.spec import parse_stored, spec_hash6, spec_to_dict, to_json


class ImportFailed(KayleeError):
    """Some entries could not be written as valid unit files (exit 1)."""


@click.command(name="import-v2")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--from",
    "source",
    required=True,
    metavar="ENDPOINTS",
    help="The etcd holding the Go Kaylee's v2 keys (URLs or host:port, comma-separated).",
)
@click.option(
    "--prefix",
    default=EtcdSettings.DEFAULT_PREFIX,
    show_default=True,
    help="The Go Kaylee's prefix.",
)
@click.option(
    "--fleet-prefix",
    envvar=FLEET_PREFIX_VARS,
    default=DEFAULT_FLEET_PREFIX,
    show_default=True,
    help="fleet's keyspace.",
)
@unit_prefix_option()
@click.option("--force", is_flag=True, help="Overwrite unit files that already exist.")
def import_v2(
    directory: Path, source: str, prefix: str, fleet_prefix: str, unit_prefix: str, force: bool
) -> None:
    """Write the Go Kaylee's v2 entries PREFIX/units/* as unit files in DIRECTORY.

    Each entry is validated; a valid one becomes NAME.yaml with the very same spec, and
    its spec hash is compared with the fleet units running under that name. An invalid
    one is written as it is (JSON is YAML) for you to fix, and the exit code is 1.

    \b
    Example:
      kaylee-sync import-v2 --from https://etcd1:2379 units/
      kaylee-sync validate units/ && git add units && git commit -m "units from Kaylee"
    """
    endpoints = [
        check_endpoint(with_scheme(e.strip(), False), "--from endpoint")
        for e in source.split(",")
        if e.strip()
    ]
    if not endpoints:
        raise UsageError("--from: no etcd endpoint given (e.g. http://127.0.0.1:2379)")
    with Etcd2Client(endpoints) as client:
        root = client.get(f"{prefix.rstrip('/')}/units", recursive=True, sorted=True)
        if root is None:
            raise UsageError(f"--from {source}: no {prefix.rstrip('/')}/units in etcd's v2 keys")
        entries = [(n.name, n.value or "") for n in root.nodes if not n.dir]
        running = _running_hashes(RegistryDriver(client, fleet_prefix), unit_prefix)
    directory.mkdir(parents=True, exist_ok=True)
    failed = 0
    for name, value in entries:
        target = directory / f"{name}.yaml"
        if target.exists() and not force:
            raise UsageError(f"{target} exists; use --force to overwrite it")
        try:
            spec = parse_stored(value, f"{prefix.rstrip('/')}/units/{name}", name, strict=True)
        except SpecError as exc:
            failed += 1
            target.write_text(value.rstrip("\n") + "\n", encoding="utf-8")
            click.echo(f"{target}: INVALID, written as stored; fix it before committing:")
            click.echo(str(exc))
            continue
        target.write_text(_yaml(spec_to_dict(spec)), encoding="utf-8")
        if to_json(load_unit_file(target)) != to_json(spec):  # the file must mean the entry
            raise ImportFailed(f"{target}: the written file does not load as the stored spec")
        hash6 = spec_hash6(spec)
        click.echo(f"{target}: spec hash {hash6}, {_against_fleet(hash6, running.get(name))}")
    click.echo(f"{len(entries)} entries, {failed} invalid", err=True)
    if failed:
        raise ImportFailed(f"{failed} of {len(entries)} entries are invalid unit files")


def _yaml(data: object) -> str:
    # Field order as the stored JSON; block style, which people edit; unicode as is.
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)


def _running_hashes(fleet: RegistryDriver, unit_prefix: str) -> dict[str, set[str]]:
    """unit name → the spec hashes of its fleet units (empty when fleet is not there)."""
    found: dict[str, set[str]] = defaultdict(set)
    try:
        units = fleet.units()
    except FleetError as exc:
        click.echo(f"warning: cannot read fleet's units ({exc}); hashes not compared", err=True)
        return found
    for unit in units:
        parsed = parse_unit_name(unit.name, unit_prefix)
        if parsed is not None:
            found[parsed.unit].add(parsed.hash6)
    return found


def _against_fleet(hash6: str, running: set[str] | None) -> str:
    if not running:
        return "no fleet units run under this name"
    if running == {hash6}:
        return "as the running fleet units: adopted without a restart"
    others = ", ".join(sorted(running - {hash6})) or "-"
    return f"MISMATCH: fleet runs {others}; taking over rolls this unit out"
