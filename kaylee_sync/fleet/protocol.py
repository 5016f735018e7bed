"""The one interface the scheduler uses to drive fleet, whatever the transport.

fleet can be driven through its registry in etcd (what the Go Kaylee did) or through
fleetd's HTTP API (what fleetctl does by default); the scheduler must not care which,
so both drivers implement this Protocol and the tests can swap either in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from kaylee_sync.fleet.model import Debris, FleetUnit, Machine, UnitState
from kaylee_sync.unitfile import UnitOption


class FleetClient(Protocol):
    """fleet's units, their reported states and its machines.

    Errors: FleetUnavailable when fleet cannot be reached (after the driver's own
    bounded retries), FleetNotFound for a unit that does not exist, FleetConflict when a
    write conditional on an earlier reading (``fresh``, ``seen``) found fleet changed,
    FleetFenced when the write guard refused to send, FleetError otherwise.
    """

    def units(self) -> list[FleetUnit]:
        """Every unit, sorted by name."""
        ...

    def unit(self, name: str) -> FleetUnit | None:
        """One unit, or None if fleet has no unit of that name."""
        ...

    def unit_states(self) -> list[UnitState]:
        """Every state an agent reports, sorted by (name, machine id)."""
        ...

    def snapshot(self) -> tuple[list[FleetUnit], list[UnitState]]:
        """``units()`` and ``unit_states()`` in one go: what a scheduler pass reads.

        A driver may read each range once for both (the registry driver reads fleet's
        ``states/`` for both and would otherwise read it twice per pass).
        """
        ...

    def machines(self) -> list[Machine]:
        """Every live machine, sorted by id."""
        ...

    def close(self) -> None:
        """Release the driver's connections."""
        ...

    def set_write_guard(self, guard: Callable[[str], None] | None) -> None:
        """Run ``guard(what)`` right before every write is sent (it raises to refuse)."""
        ...

    def create_unit(
        self,
        name: str,
        options: Sequence[UnitOption],
        desired_state: str = "launched",
        *,
        fresh: bool = False,
    ) -> None:
        """Submit a unit (replacing one with other options) and set its target state.

        A unit already there with the same options and target state is left untouched:
        nothing is written. ``fresh``: the caller saw no such unit; if one exists now,
        nothing is replaced and FleetConflict is raised.
        """
        ...

    def set_target_state(self, name: str, state: str, *, seen: FleetUnit | None = None) -> None:
        """Set the target state (inactive, loaded, launched); FleetNotFound if no unit.

        ``seen``: the unit as the caller read it; the write is refused (FleetConflict)
        if the unit changed or was destroyed since.
        """
        ...

    def destroy_unit(self, name: str, *, seen: FleetUnit | None = None) -> None:
        """Remove the unit from fleet; FleetNotFound if there is none (``seen``: as above)."""
        ...

    def debris(self, unit_prefix: str) -> list[Debris]:
        """Leftovers under ``<unit_prefix>:`` names only that a crash or a stale writer
        can leave (empty where the driver cannot see them)."""
        ...

    def clean(self, item: Debris) -> None:
        """Remove one piece of debris, conditional on it being unchanged (FleetConflict)."""
        ...
