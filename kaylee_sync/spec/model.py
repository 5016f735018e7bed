"""The UnitSpec model: one Kaylee unit, as frozen plain data.

Field for field the Go original's ``spec.Spec`` (kaylee-spec.md); empty strings, zero
and empty tuples stand for "absent", exactly as Go's ``omitempty`` treats them, so the
canonical JSON and the spec hash come out the same as the original's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str = ""


@dataclass(frozen=True)
class Volume:
    """A volume: host path (no driver), systemd mount service, or plugin script."""

    path: str
    id: str = ""
    driver: str = ""
    source: str = ""
    options: str = ""


@dataclass(frozen=True)
class App:
    image: str
    cmd: str = ""
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class UnitSpec:
    name: str
    apps: tuple[App, ...]
    replicas: int = 0
    max_replicas_per_host: int = 0
    engine: str = ""
    env_files: tuple[str, ...] = ()
    env: tuple[EnvVar, ...] = ()
    volumes: tuple[Volume, ...] = ()
    net: str = ""
    args: tuple[str, ...] = ()
    machine: tuple[str, ...] = ()
    machine_id: str = ""
    global_: bool = False
    conflicts: tuple[str, ...] = ()

    @property
    def is_replica_unit(self) -> bool:
        """Replica units roll one by one; a unit without ``replicas`` is replaced whole."""
        return self.replicas > 0

    @property
    def instance_count(self) -> int:
        """How many fleet units this spec runs (a non-replica unit runs one)."""
        return self.replicas if self.replicas > 0 else 1

    @property
    def slots(self) -> int:
        """Distinct conflict slots: ``maxReplicasPerHost``, defaulting to the instances."""
        return self.max_replicas_per_host or self.instance_count
