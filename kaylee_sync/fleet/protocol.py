"""The one interface the scheduler uses to drive fleet, whatever the transport.

fleet can be driven through its registry in etcd (what the Go Kaylee did) or through
fleetd's HTTP API (what fleetctl does by default); the scheduler must not care which,
so both drivers implement this Protocol and the tests can swap either in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from kaylee_sync.fleet.model import FleetUnit, Machine, UnitState
from kaylee_sync.unitfile import UnitOption


class FleetClient(Protocol):
    """fleet's units, their reported states and its machines.

    Errors: FleetUnavailable when fleet cannot be reached (after the driver's own
    bounded retries), FleetNotFound for a unit that does not exist, FleetError otherwise.
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

    def create_unit(
        self, name: str, options: Sequence[UnitOption], desired_state: str = "launched"
    ) -> None:
        """Submit a unit (replacing one with other options) and set its target state.

        A unit already there with the same options and target state is left untouched:
        nothing is written.
        """
        ...

    def set_target_state(self, name: str, state: str) -> None:
        """Set the target state (inactive, loaded, launched); FleetNotFound if no unit."""
        ...

    def destroy_unit(self, name: str) -> None:
        """Remove the unit from fleet; FleetNotFound if there is none."""
        ...
