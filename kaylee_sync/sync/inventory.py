"""``sync/inventory``: the record of which units Git owns, and how it is kept small.

Ownership is the whole point of the inventory: only units listed in it are ever pruned, so
a unit created with ``kaylee run`` outside Git is never deleted by sync, and an invalid
file still maps to the unit it used to deploy. :func:`next_inventory` therefore never
drops a unit that Git still claims, even when this sync leaves it alone.

Encoding (one etcd value, compact JSON, keys sorted so that equal inventories are equal
bytes)::

    {"v":1,"repo":"…","branch":"main","path":"units","commit":"<40 hex>",
     "units":{"api":"<blob>","web":"<blob>"},"paths":{"odd":"units/team/odd.yml"}}

- ``units`` maps each unit to the *full* blob id. Blobs are not abbreviated: the planner
  compares them with the ids ``source`` reports (and ``--worktree`` blobs are not even
  hex), so an abbreviation would have to be understood by every reader.
- A unit's file is ``<path>/<name>.yaml`` unless ``paths`` says otherwise. Almost every
  repository follows that convention, and leaving it out is what keeps 10,000 units far
  below etcd's request limit (1.5 MiB by default): about 65 bytes per unit with
  20-character names, 110 bytes with the longest (64-character) names — 1.1 MiB for
  10,000 of those, while spelling out every path would take 1.9 MiB. The decoded
  :class:`Inventory` always carries full paths; the shorthand exists only on the wire.
- ``v`` is the format version; an unknown version is refused rather than guessed at.
"""

from __future__ import annotations

import json
from typing import Any

from kaylee_sync.bounds import load_json
from kaylee_sync.errors import StoreError
from kaylee_sync.plan.model import Action, Inventory, InventoryEntry, Plan

FORMAT_VERSION = 1

# Entries whose unit Git still claims although this sync does not write it: the old
# inventory entry is kept so that ownership survives (a fixed file, a lifted prune guard
# or a resumed suspension then finds the unit still managed).
_KEPT = frozenset({Action.INVALID, Action.PRUNE_REFUSED, Action.SUSPENDED})


def default_path(unit_path: str, name: str) -> str:
    """The file a unit is expected in: ``<unit path>/<name>.yaml`` (``<name>.yaml`` at the top)."""
    base = unit_path.strip("/")
    return f"{base}/{name}.yaml" if base else f"{name}.yaml"


def encode_inventory(inv: Inventory) -> str:
    units: dict[str, str] = {}
    paths: dict[str, str] = {}
    for name in sorted(inv.units):
        entry = inv.units[name]
        units[name] = entry.blob
        if entry.path != default_path(inv.path, name):
            paths[name] = entry.path
    doc: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "repo": inv.repo,
        "branch": inv.branch,
        "path": inv.path,
        "commit": inv.commit,
        "units": units,
    }
    if paths:
        doc["paths"] = paths
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def decode_inventory(value: bytes, key: str) -> Inventory:
    """The inventory stored at ``key``; StoreError naming ``key`` if it is not one.

    Never lenient: an inventory read as empty would make every managed unit look
    unmanaged (nothing pruned, ownership silently lost at the next write).
    """
    try:
        doc = load_json(value)  # ValueError for bytes that are not UTF-8 JSON
        return _inventory(doc)
    except (ValueError, _Malformed) as exc:
        why = exc.args[0]
        raise StoreError(
            f"{key} is not a valid inventory ({why}); sync stops rather than lose track of "
            "which units Git owns — restore it or delete it to let sync rebuild it"
        ) from None


class _Malformed(Exception):
    pass


def _inventory(doc: object) -> Inventory:
    if not isinstance(doc, dict):
        raise _Malformed("not a JSON object")
    if doc.get("v") != FORMAT_VERSION:
        raise _Malformed(f"unknown format version {doc.get('v')!r}")
    repo, branch, path, commit = (_string(doc, f) for f in ("repo", "branch", "path", "commit"))
    units = _string_map(doc, "units")
    paths = _string_map(doc, "paths") if "paths" in doc else {}
    strays = sorted(set(paths) - set(units))
    if strays:
        raise _Malformed(f"paths.{strays[0]} names no unit")
    entries = {
        name: InventoryEntry(path=paths.get(name, default_path(path, name)), blob=blob)
        for name, blob in units.items()
    }
    return Inventory(repo=repo, branch=branch, path=path, commit=commit, units=entries)


def _string(doc: dict[str, Any], field: str) -> str:
    value = doc.get(field)
    if not isinstance(value, str):
        raise _Malformed(f"{field}: expected a string")
    return value


def _string_map(doc: dict[str, Any], field: str) -> dict[str, str]:
    value = doc.get(field)
    if not isinstance(value, dict):
        raise _Malformed(f"{field}: expected an object")
    for name, item in value.items():
        if not isinstance(item, str):
            raise _Malformed(f"{field}.{name}: expected a string")
    return value


def next_inventory(plan: Plan, old: Inventory | None) -> Inventory:
    """The inventory to write once ``plan`` is applied.

    Every unit the commit defines (its file and blob), plus the old entries of units
    that Git still claims but this sync leaves alone: invalid files, refused prunes and
    suspended units whose file is gone. Units the plan deletes are dropped, and so are
    old entries for units that are neither desired nor kept (already gone from etcd).
    """
    desired = plan.desired
    units = {
        name: InventoryEntry(path=unit.path, blob=unit.blob) for name, unit in desired.units.items()
    }
    if old is not None:
        for entry in plan.entries:
            if entry.action in _KEPT and entry.name not in units and entry.name in old.units:
                units[entry.name] = old.units[entry.name]
    return Inventory(
        repo=desired.repo,
        branch=desired.branch,
        path=desired.path,
        commit=desired.commit,
        units=dict(sorted(units.items())),
    )
