"""A changed unit's first step, before the pass reads everything.

A full pass reads every spec, every rollout report and all of fleet's registry before it
decides anything (at 10,000 fleet units, about a second), then decides unit after unit
in name order. A commit that changes one unit would wait for all of that before its
rollout starts. So when the watch names the units that changed, the pass first reads
just those — the spec, its restart generation and rollout report, and each of its fleet
units as the last full pass knew them, read again one by one — and carries out their
*creates*. The full pass follows at once and does everything else.

Why only creates are safe here: this view can miss a fleet unit created since the last
full pass, and it reads no agent states (every instance counts as "unknown", which
decide() treats as serving, never as dead). Missing something can only make decide()
want a unit that already exists; fleet units are created with ``fresh`` (fleet's
``prevExist=false``) under names derived from the spec, so such a create is refused,
not doubled. Stops, destroys and launches are judged on the full view only. A unit with
a rollout policy or an operator request (``policy/``, ``rollout/``) is left to the full
pass too: its health-gated rollout needs what this view does not read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from kaylee_sync.errors import SpecError, StoreError
from kaylee_sync.fleet.model import FleetUnit
from kaylee_sync.fleet.protocol import FleetClient
from kaylee_sync.health import decode_report
from kaylee_sync.render import UnitName, parse_unit_name
from kaylee_sync.scheduler.records import Complaints, decode_generation
from kaylee_sync.spec.loader import parse_stored
from kaylee_sync.spec.model import UnitSpec
from kaylee_sync.store import Store, keys

#: more changed units than this in one pass: the full pass alone (a big commit gains
#: nothing from reading its units one by one first)
MAX_FOCUSED = 16
#: a unit with more fleet units than this is read by the full pass only
MAX_FLEET_UNITS = 64


@dataclass(frozen=True)
class Focused:
    """What the early step knows about one changed unit."""

    name: str
    spec: UnitSpec
    generation: int
    failed_hash: str
    units: tuple[tuple[UnitName, FleetUnit], ...]


def touched_names(area: str, key: str) -> str | None:
    """The unit a watch event under ``units/`` or ``restart/`` is about (None: other)."""
    if area in (keys.UNITS, keys.RESTART) and key.startswith(area):
        return key.removeprefix(area) or None
    return None


def read_focused(
    store: Store,
    fleet: FleetClient,
    name: str,
    known: Sequence[str],
    prefix: str,
    complain: Complaints,
) -> Focused | None:
    """The unit's spec and fleet units, read on their own; None when the early step
    must leave it to the full pass (deleted, invalid, gated, or too big)."""
    stored = store.get(keys.unit_key(name))
    if stored is None or len(known) > MAX_FLEET_UNITS:
        return None
    if store.get(keys.policy_key(name)) is not None:
        return None
    if store.get(keys.control_key(name)) is not None:
        return None
    try:
        spec = parse_stored(stored.value, stored.key, expected_name=name)
    except SpecError:
        return None  # the full pass logs it and leaves the unit alone
    generation = 0
    restart = store.get(keys.restart_key(name))
    if restart is not None:
        decoded = decode_generation(restart.key, restart.value, complain)
        if decoded is None:
            return None
        generation = decoded
    failed_hash = ""
    report = store.get(keys.rollout_key(name))
    if report is not None:
        try:
            failed_hash = decode_report(report.value, report.key).failed_hash
        except StoreError:
            return None
    units: list[tuple[UnitName, FleetUnit]] = []
    for fleet_name in known:
        parsed = parse_unit_name(fleet_name, prefix)
        unit = fleet.unit(fleet_name)
        if parsed is not None and unit is not None:
            units.append((parsed, unit))
    return Focused(name, spec, generation, failed_hash, tuple(units))


def fleet_names_by_unit(
    ours: Mapping[str, Iterable[tuple[UnitName, FleetUnit]]],
) -> dict[str, tuple[str, ...]]:
    """Each unit's fleet unit names, as a full pass saw them."""
    return {name: tuple(u.name for _, u in members) for name, members in ours.items()}
