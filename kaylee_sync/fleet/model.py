"""What the scheduler sees of fleet, as plain frozen data shared by both drivers.

The registry driver builds these from fleet's etcd keys and the API driver from fleetd's
JSON, so the scheduler compares like with like whichever driver is configured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from kaylee_sync.errors import UsageError
from kaylee_sync.unitfile import UnitOption, unit_hash

#: where fleet keeps its registry in etcd (fleetd's and fleetctl's --etcd-key-prefix)
DEFAULT_KEY_PREFIX = "/_coreos.com/fleet/"

INACTIVE: Final = "inactive"
LOADED: Final = "loaded"
LAUNCHED: Final = "launched"
#: fleet's job states, in order: a unit is never "more" than its target state
JOB_STATES: Final = (INACTIVE, LOADED, LAUNCHED)


def check_state(state: str) -> str:
    """``state`` if it is one of fleet's job states, else a UsageError."""
    if state not in JOB_STATES:
        raise UsageError(f"invalid fleet unit state {state!r}: expected one of {JOB_STATES}")
    return state


@dataclass(frozen=True)
class FleetUnit:
    """One fleet unit (a "job"): its options, target state and what fleet made of it.

    ``desired_state`` is fleet's target-state; ``current_state`` the job state fleetctl
    shows (inactive: not scheduled or no state reported; loaded: on its machine;
    launched: the agent heartbeats it). ``machine_id`` is the machine it is scheduled
    to, "" if none (always "" for a global unit).
    """

    name: str
    options: tuple[UnitOption, ...]
    desired_state: str
    current_state: str = INACTIVE
    machine_id: str = ""
    object_index: int = field(default=0, compare=False)
    """etcd v2 modifiedIndex of ``job/<name>/object`` when read (registry driver; 0:
    unknown). Writes based on this reading are conditional on it (fencing)."""
    state_index: int = field(default=0, compare=False)
    """etcd v2 modifiedIndex of ``job/<name>/target-state`` when read (0: absent/unknown)."""

    @property
    def hash(self) -> str:
        """fleet's unit hash of ``options`` (the ``unit/<hash>`` key suffix)."""
        return unit_hash(self.options)


@dataclass(frozen=True)
class UnitState:
    """What an agent reports for a unit on its machine: systemd's three states."""

    name: str
    hash: str
    machine_id: str
    load_state: str
    active_state: str
    sub_state: str


@dataclass(frozen=True)
class Machine:
    """A fleet agent. ``metadata`` already has the dynamic (API-set) metadata applied."""

    id: str
    public_ip: str = ""
    metadata: dict[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Debris:
    """Registry leftovers a crash or a stale writer can leave under our unit prefix.

    ``kind`` is ``job`` (a job directory without ``object``, or whose ``object`` names a
    unit body that is missing: fleet ignores it, and it blocks creating the unit) or
    ``body`` (a ``unit/<hash>`` of ours that no job refers to). ``index`` is the highest
    etcd v2 index seen under ``key``: cleaning is conditional on it.
    """

    kind: str
    key: str
    index: int
    reason: str
