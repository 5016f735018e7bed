"""What the scheduler will do in fleet because of one plan entry, told before it happens.

A reviewer approving a pull request wants to know more than "the JSON changed": whether
the change restarts anything, and how. This module predicts the scheduler's reaction
from the two specs alone (no fleet state), following the rules in
``scheduler/decide.py``:

- a change of ``replicas`` only keeps the running units' hash, so they are scaled in
  place without restarts (decide's "identity hash");
- a replica unit (``replicas`` set, not global) is replaced one instance at a time;
- a non-replica or global unit is destroyed first, then created (a brief downtime);
- a deleted spec destroys every fleet unit of the unit.

The plan layer may not import the scheduler (layers import downward only), and decide
detects the replicas-only case from fleet's hashes because it has no old spec. Here both
specs are known, so comparing them with ``replicas`` made equal is exact and cheaper.
Fleet unit names come from the same primitives ``render.render_units`` uses; they are the
names a fresh deploy gets (units adopted from the Go Kaylee may carry other slot ids).
"""

from __future__ import annotations

import dataclasses

from kaylee_sync.errors import SpecError
from kaylee_sync.plan.model import FleetEffect
from kaylee_sync.render import UnitName, slot_ids
from kaylee_sync.spec import UnitSpec, parse_stored, spec_hash6

UNREADABLE = "current entry unreadable"


def fleet_unit_names(spec: UnitSpec, prefix: str, generation: int) -> tuple[str, ...]:
    """The names ``render_units(spec, prefix, generation)`` gives, without rendering.

    Rendering every option of a 1000-replica unit only to read its names is wasteful in a
    plan of thousands of units; the naming rule is render's (same helpers, same loop).
    """
    return _names(spec, prefix, spec_hash6(spec, generation), range(1, spec.instance_count + 1))


def _names(spec: UnitSpec, prefix: str, hash6: str, indexes: range) -> tuple[str, ...]:
    slots = slot_ids(spec.name, hash6, spec.slots)
    return tuple(str(UnitName(prefix, spec.name, hash6, slots[i % len(slots)], i)) for i in indexes)


def _units(count: int) -> str:
    return "1 fleet unit" if count == 1 else f"{count} fleet units"


def _replicas(count: int) -> str:
    return "1 replica" if count == 1 else f"{count} replicas"


def _global_note(spec: UnitSpec) -> str:
    return "; global: fleet runs one on every matching machine" if spec.global_ else ""


def read_stored(value: str, name: str) -> UnitSpec | None:
    """The spec an etcd entry holds, or None if the scheduler could not read it either.

    Not strict: the scheduler adopts entries the Go Kaylee wrote, so the plan reads them
    the same way.
    """
    try:
        return parse_stored(value, f"units/{name}", name)
    except SpecError:
        return None


def create_effect(new: UnitSpec, prefix: str, generation: int) -> FleetEffect:
    names = fleet_unit_names(new, prefix, generation)
    return FleetEffect(f"starts {_units(len(names))}{_global_note(new)}", new_units=names)


def delete_effect(old_value: str, name: str, prefix: str, generation: int) -> FleetEffect:
    old = read_stored(old_value, name)
    if old is None:
        # The scheduler still destroys every fleet unit carrying the name.
        return FleetEffect(f"destroys every fleet unit of units/{name} ({UNREADABLE})")
    names = fleet_unit_names(old, prefix, generation)
    if len(names) == 1:
        return FleetEffect(f"destroys its fleet unit{_global_note(old)}", old_units=names)
    return FleetEffect(f"destroys all {_units(len(names))}{_global_note(old)}", old_units=names)


def update_effect(
    old_value: str, new: UnitSpec, name: str, prefix: str, generation: int
) -> FleetEffect:
    new_names = fleet_unit_names(new, prefix, generation)
    old = read_stored(old_value, name)
    if old is None:
        # Fleet units of an unreadable entry are left alone by the scheduler; once the entry
        # is readable again it replaces whatever runs by the rules for the new spec.
        return FleetEffect(f"{UNREADABLE}; then {_replace_summary(new, None)}", new_units=new_names)
    old_hash, new_hash = spec_hash6(old, generation), spec_hash6(new, generation)
    if old_hash == new_hash:
        # The same spec in other bytes (key order, spacing, escapes written by hand).
        return FleetEffect("no fleet change")
    if _only_replicas_differ(old, new):
        a, b = old.replicas, new.replicas
        removed = range(b + 1, a + 1)  # instances above the new count go away
        return FleetEffect(
            f"scales from {a} to {b} replicas in place (no restarts)",
            old_units=_names(old, prefix, old_hash, removed),
        )
    return FleetEffect(
        _replace_summary(new, old),
        old_units=fleet_unit_names(old, prefix, generation),
        new_units=new_names,
    )


def _only_replicas_differ(old: UnitSpec, new: UnitSpec) -> bool:
    """decide's "replica variant": both replica units, equal once replicas are equal."""
    return (
        old.is_replica_unit
        and new.is_replica_unit
        and dataclasses.replace(old, replicas=new.replicas) == new
    )


def _replace_summary(new: UnitSpec, old: UnitSpec | None) -> str:
    """How the scheduler replaces the running units (decide: _roll or _replace_whole)."""
    if new.is_replica_unit and not new.global_:
        summary = f"rolling replacement of {_replicas(new.replicas)}, one at a time"
        if old is not None and old.instance_count != new.replicas:
            summary += f" (was {_replicas(old.instance_count)})"
        return summary
    return f"destroy then create (brief downtime){_global_note(new)}"
