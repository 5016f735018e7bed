"""What ``kaylee ls`` shows: each unit, its fleet units with machine and state, its rollout.

Reads only: the specs, restart generations, rollout reports and Git sync suspensions
from etcd v3 and the units and states from fleet. If fleet cannot be reached the units
are still listed, with a warning, so the command stays useful when fleet is what is
broken. A suspended unit is marked: it no longer follows Git, and whoever looks at it
next must see that (and who suspended it, and why) — even after ``kaylee rm --override``
removed its spec.
"""

from __future__ import annotations

import time
from typing import Any

import click

from kaylee_sync.cli.common import printable
from kaylee_sync.errors import FleetError, SpecError, StoreError
from kaylee_sync.fleet.protocol import FleetClient
from kaylee_sync.health import decode_report
from kaylee_sync.render import parse_unit_name
from kaylee_sync.spec import spec_hash
from kaylee_sync.spec.loader import parse_stored
from kaylee_sync.store import Store, keys
from kaylee_sync.sync.suspend import decode_suspension


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
    rollouts: dict[str, dict[str, Any]] = {}
    for stored in store.get_prefix(keys.ROLLOUTS):
        name = stored.key.removeprefix(keys.ROLLOUTS)
        try:
            report = decode_report(stored.value, stored.key)
        except StoreError as exc:
            # shown for that unit, never fatal; not "error", which every report has (the
            # scheduler's last fleet error, usually "")
            rollouts[name] = {"unreadable": str(exc)}
            continue
        rollouts[name] = report.as_dict()

    suspended = _suspensions(store)
    rows = []
    names = {s.key.removeprefix(keys.UNITS): s for s in store.list_units()}
    for name in sorted(names.keys() | fleet_units.keys() | suspended.keys()):
        row: dict[str, Any] = {"name": name, "fleet_units": fleet_units.get(name, [])}
        if name in suspended:
            row["suspended"] = suspended[name]
        entry = names.get(name)
        if entry is None:
            row["error"] = "no spec in etcd" + (
                " (its fleet units are being destroyed)" if name in fleet_units else ""
            )
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


def _suspensions(store: Store) -> dict[str, dict[str, Any]]:
    """Unit name -> its suspension as JSON data; a malformed one is shown, not fatal."""
    out: dict[str, dict[str, Any]] = {}
    for stored in store.get_prefix(keys.SUSPENDED):
        name = stored.key.removeprefix(keys.SUSPENDED)
        try:
            found = decode_suspension(stored.value, stored.key, stored.mod_revision)
        except StoreError as exc:
            out[name] = {"error": str(exc)}
            continue
        out[name] = {
            "who": found.who,
            "reason": found.reason,
            "since": found.since,
            "until": found.until,
        }
    return out


def _suspension_note(suspension: dict[str, Any]) -> str:
    if "error" in suspension:
        return f"Git sync suspended, but {suspension['error']}"
    note = f"Git sync suspended by {suspension['who']}: {suspension['reason']}"
    if suspension.get("until") is not None:
        until = time.strftime("%Y-%m-%d %H:%M", time.localtime(suspension["until"]))
        note += f" (until {until})"
    return note


def print_table(listing: dict[str, Any]) -> None:
    header = ("UNIT", "REPLICAS", "HASH", "FLEET UNIT", "MACHINE", "STATE")
    lines: list[tuple[str, ...]] = [header]
    for row in listing["units"]:
        label = row["name"] + (" (suspended)" if "suspended" in row else "")
        first = (label, str(row.get("replicas", "")), row.get("hash", ""))
        fleet_rows = row["fleet_units"] or [{"name": "-", "machine": "", "state": ""}]
        for i, unit in enumerate(fleet_rows):
            lead = first if i == 0 else ("", "", "")
            lines.append((*lead, unit["name"], unit["machine"][:12], unit["state"]))
        rollout = row.get("rollout") or {}
        if "unreadable" in rollout:
            progress = f"rollout report unreadable: {rollout['unreadable']}"
        else:
            progress = f"{rollout['phase']}: {rollout['message']}" if rollout.get("message") else ""
        notes = [
            row.get("error") or progress,
            _suspension_note(row["suspended"]) if "suspended" in row else "",
        ]
        for note in filter(None, notes):
            lines.append(("", "", "", f"  {note}", "", ""))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    click.echo(f"leader: {printable(listing['leader'] or '(none)')}", err=True)
    for warning in listing["warnings"]:
        click.echo(f"warning: {warning}", err=True)
