"""A FleetClient that counts what the daemon's scheduler does to fleet, for /metrics.

Writes (submit, target state, destroy) and failures are what an operator alerts on:
a burst of destroys, a fleet that refuses every write. Counting at the protocol boundary
keeps both drivers and the scheduler free of metrics code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from kaylee_sync.daemon.metrics import Metrics
from kaylee_sync.errors import FleetConflict, FleetError, FleetFenced
from kaylee_sync.fleet.model import Debris, FleetUnit, Machine, UnitState
from kaylee_sync.fleet.protocol import FleetClient
from kaylee_sync.unitfile import UnitOption

T = TypeVar("T")


class MeteredFleet:
    """Delegates every call to ``fleet``; counts writes and FleetErrors in ``metrics``."""

    def __init__(self, fleet: FleetClient, metrics: Metrics) -> None:
        self.fleet = fleet
        self.metrics = metrics

    def _call(self, op: str, call: Callable[[], T]) -> T:
        try:
            result = call()
        except (FleetConflict, FleetFenced):
            raise  # not a failure: fleet moved under a conditional write, or we stopped
        except FleetError:
            self.metrics.fleet_call(op, failed=True)
            raise
        self.metrics.fleet_call(op, failed=False)
        return result

    def units(self) -> list[FleetUnit]:
        return self._call("read", self.fleet.units)

    def unit(self, name: str) -> FleetUnit | None:
        return self._call("read", lambda: self.fleet.unit(name))

    def unit_states(self) -> list[UnitState]:
        return self._call("read", self.fleet.unit_states)

    def snapshot(self) -> tuple[list[FleetUnit], list[UnitState]]:
        return self._call("read", self.fleet.snapshot)

    def machines(self) -> list[Machine]:
        return self._call("read", self.fleet.machines)

    def close(self) -> None:
        self.fleet.close()

    def set_write_guard(self, guard: Callable[[str], None] | None) -> None:
        self.fleet.set_write_guard(guard)

    def create_unit(
        self,
        name: str,
        options: Sequence[UnitOption],
        desired_state: str = "launched",
        *,
        fresh: bool = False,
    ) -> None:
        self._call(
            "create_unit",
            lambda: self.fleet.create_unit(name, options, desired_state, fresh=fresh),
        )

    def set_target_state(self, name: str, state: str, *, seen: FleetUnit | None = None) -> None:
        self._call("set_target_state", lambda: self.fleet.set_target_state(name, state, seen=seen))

    def destroy_unit(self, name: str, *, seen: FleetUnit | None = None) -> None:
        self._call("destroy_unit", lambda: self.fleet.destroy_unit(name, seen=seen))

    def debris(self, unit_prefix: str) -> list[Debris]:
        return self._call("read", lambda: self.fleet.debris(unit_prefix))

    def clean(self, item: Debris) -> None:
        self._call("clean", lambda: self.fleet.clean(item))
