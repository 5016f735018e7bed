"""What ``kaylee ls`` shows: each unit, its fleet units with machine and state, its rollout.

Reads only: the specs, restart generations and rollout reports from etcd v3 and the
units and states from fleet. If fleet cannot be reached the units are still listed,
with a warning, so the command stays useful when fleet is what is broken.
"""

from __future__ import annotations

import json
from typing import Any

import click

from kaylee_sync.errors import FleetError, SpecError
from kaylee_sync.fleet.protocol import FleetClient
from kaylee_sync.render import parse_unit_name
from kaylee_sync.spec import spec_hash
from kaylee_sync.spec.loader import parse_stored
from kaylee_sync.store import Store, keys


def collect(store: Store, fleet: FleetClient | None, unit_prefix: str) -> dict[str, Any]:
    """The listing as plain data (the ``--format json`` document)."""
    warnings: list[str] = []
    fleet_units: dict[str, list[dict[str, Any]]] = {}
    if fleet is not None:
        try:
            units = fleet.units()
            states: dict[str, list[Any]] = {}
            for state in fleet.unit_states():
                states.setdefault(state.name, []).append(state)
        except FleetError as exc:
            warnings.append(f"fleet not reachable, fleet units not shown: {exc}")
            units, states = [], {}
        for unit in units:
            parsed = parse_unit_name(unit.name, unit_prefix)
            if parsed is None:
                continue
            reported = states.get(unit.name, [])
            fleet_units.setdefault(parsed.unit, []).append(
                {
                    "name": unit.name,
                    "machine": unit.machine_id or ",".join(s.machine_id for s in reported),
                    "target": unit.desired_state,
                    "state": ",".join(s.sub_state for s in reported) or unit.current_state,
                }
            )
    rollouts = {}
    for stored in store.get_prefix(keys.ROLLOUTS):
        try:
            rollouts[stored.key.removeprefix(keys.ROLLOUTS)] = json.loads(stored.value)
        except ValueError:
            continue

    rows = []
    names = {s.key.removeprefix(keys.UNITS): s for s in store.list_units()}
    for name in sorted(names.keys() | fleet_units.keys()):
        row: dict[str, Any] = {"name": name, "fleet_units": fleet_units.get(name, [])}
        entry = names.get(name)
        if entry is None:
            row["error"] = "no spec in etcd (its fleet units are being destroyed)"
        else:
            row["revision"] = entry.mod_revision
            try:
                spec = parse_stored(entry.value, entry.key)
            except SpecError as exc:
                row["error"] = str(exc.issues[0]) if exc.issues else str(exc)
            else:
                generation = store.restart_generation(name)
                row.update(
                    replicas=spec.replicas,
                    hash=spec_hash(spec, generation)[:6],
                    restart_generation=generation,
                )
        if name in rollouts:
            row["rollout"] = rollouts[name]
        rows.append(row)
    return {"leader": store.leader(), "units": rows, "warnings": warnings}


def print_table(listing: dict[str, Any]) -> None:
    header = ("UNIT", "REPLICAS", "HASH", "FLEET UNIT", "MACHINE", "STATE")
    lines: list[tuple[str, ...]] = [header]
    for row in listing["units"]:
        first = (row["name"], str(row.get("replicas", "")), row.get("hash", ""))
        fleet_rows = row["fleet_units"] or [{"name": "-", "machine": "", "state": ""}]
        for i, unit in enumerate(fleet_rows):
            lead = first if i == 0 else ("", "", "")
            lines.append((*lead, unit["name"], unit["machine"][:12], unit["state"]))
        rollout = row.get("rollout")
        note = row.get("error") or (
            f"{rollout['phase']}: {rollout['message']}" if rollout and rollout["message"] else ""
        )
        if note:
            lines.append(("", "", "", f"  {note}", "", ""))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    click.echo(f"leader: {listing['leader'] or '(none)'}", err=True)
    for warning in listing["warnings"]:
        click.echo(f"warning: {warning}", err=True)
