"""The simulated fleetd's view of fleet's registry keys (etcd v2).

This is fleetd's side of the key layout in fleet-registry.md: the engine, the agents and
the API server read jobs, unit files, machines and unit states from here and write the
keys fleetd writes. It is deliberately separate from ``kaylee_sync.fleet.registry`` (the
submitter's side): two independent readings of the same layout let the tests catch a
disagreement instead of sharing one mistake.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kaylee_sync.fleet.etcd2 import Etcd2Client, Node
from kaylee_sync.fleetsim.requirements import Requirements
from kaylee_sync.fleetsim.scheduling import INACTIVE, Job, Machine
from kaylee_sync.unitfile import UnitFileError, UnitOption, parse

FLEET_VERSION = "1.0.0"
JOB_STATES = frozenset({"inactive", "loaded", "launched"})


def hash_to_bytes(unit_hash: str) -> list[int]:
    """The unit hash as fleet's job object stores it: a JSON array of 20 byte values."""
    return list(bytes.fromhex(unit_hash))


def job_object(name: str, unit_hash: str) -> str:
    return json.dumps({"Name": name, "UnitHash": hash_to_bytes(unit_hash)}, separators=(",", ":"))


def machine_object(machine_id: str, public_ip: str, metadata: dict[str, str]) -> str:
    return json.dumps(
        {
            "ID": machine_id,
            "PublicIP": public_ip,
            "Metadata": metadata,
            "Capabilities": {"DISABLE_ENGINE": False, "GRPC": False},
            "Version": FLEET_VERSION,
        },
        separators=(",", ":"),
    )


def unit_state(load: str, active: str, sub: str, machine_id: str, unit_hash: str) -> str:
    """The JSON an agent publishes under ``states/<name>/<machine>`` and ``state/<name>``."""
    return json.dumps(
        {
            "loadState": load,
            "activeState": active,
            "subState": sub,
            # fleet marshals a MachineState holding only the ID, zero values elsewhere
            "machineState": {
                "ID": machine_id,
                "PublicIP": "",
                "Metadata": None,
                "Capabilities": None,
                "Version": "",
            },
            "unitHash": unit_hash,
        },
        separators=(",", ":"),
    )


@dataclass(frozen=True)
class JobRecord:
    """One ``job/<name>/`` directory whose unit file exists (fleet skips the others)."""

    job: Job
    options: tuple[UnitOption, ...]
    raw: str
    target_state_key: str  # "" when the key is absent (fleet then omits desiredState)
    heartbeat: str  # job-state: the machine that last heartbeat a launched unit


@dataclass(frozen=True)
class StateRecord:
    name: str
    machine_id: str
    load: str
    active: str
    sub: str
    unit_hash: str


def _children(node: Node | None) -> dict[str, Node]:
    return {c.name: c for c in node.nodes} if node is not None else {}


class SimRegistry:
    """fleet's keys under ``prefix`` (e.g. ``/_coreos.com/fleet/``), read and written."""

    def __init__(self, client: Etcd2Client, prefix: str) -> None:
        self.client = client
        self.prefix = "/" + prefix.strip("/") + "/"
        # unit/<hash> never changes once written, so parsed files are cached for good.
        self._units: dict[str, tuple[tuple[UnitOption, ...], str] | None] = {}
        self._lock = threading.Lock()

    def key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    # -- unit files and jobs ---------------------------------------------------------

    def unit_file(self, unit_hash: str) -> tuple[tuple[UnitOption, ...], str] | None:
        with self._lock:
            if unit_hash in self._units:
                return self._units[unit_hash]
        node = self.client.get(self.key("unit", unit_hash))
        parsed: tuple[tuple[UnitOption, ...], str] | None = None
        if node is not None and node.value is not None:
            try:
                raw = str(json.loads(node.value)["Raw"])
                parsed = (parse(raw), raw)
            except (ValueError, KeyError, TypeError, UnitFileError):
                parsed = None
        if parsed is not None:  # a missing file may still appear: do not cache the miss
            with self._lock:
                self._units[unit_hash] = parsed
        return parsed

    def jobs(self) -> list[JobRecord]:
        root = self.client.get(self.key("job"), recursive=True, sorted=True)
        records = []
        for job_dir in root.nodes if root is not None else ():
            record = self._job_record(job_dir)
            if record is not None:
                records.append(record)
        return records

    def job(self, name: str) -> JobRecord | None:
        node = self.client.get(self.key("job", name), recursive=True)
        return self._job_record(node) if node is not None and node.dir else None

    def _job_record(self, job_dir: Node) -> JobRecord | None:
        keys = _children(job_dir)
        obj = keys.get("object")
        if obj is None or obj.value is None:
            return None
        try:
            model: dict[str, Any] = json.loads(obj.value)
            unit_hash = bytes(model["UnitHash"]).hex()
        except (ValueError, KeyError, TypeError):
            return None
        found = self.unit_file(unit_hash)
        if found is None:
            return None
        options, raw = found
        name = str(model.get("Name") or job_dir.name)

        def value(key: str) -> str:
            node = keys.get(key)
            return node.value or "" if node is not None else ""

        state_key = value("target-state")
        # A missing or unknown target-state is treated as inactive (fleet parses "" as an
        # unset state; nothing but a half-written submit produces it).
        target_state = state_key if state_key in JOB_STATES else INACTIVE
        job = Job(
            name=name,
            target_state=target_state,
            requirements=Requirements.from_options(name, options),
            target=value("target"),
            unit_hash=unit_hash,
        )
        return JobRecord(job, options, raw, state_key, value("job-state"))

    # -- machines and states ---------------------------------------------------------

    def machines(self) -> list[Machine]:
        root = self.client.get(self.key("machines"), recursive=True, sorted=True)
        found = []
        for mdir in root.nodes if root is not None else ():
            machine = self._machine(mdir)
            if machine is not None:
                found.append(machine)
        return found

    def machine(self, machine_id: str) -> Machine | None:
        node = self.client.get(self.key("machines", machine_id), recursive=True)
        return self._machine(node) if node is not None else None

    @staticmethod
    def _machine(mdir: Node) -> Machine | None:
        keys = _children(mdir)
        obj = keys.get("object")
        if obj is None or obj.value is None:
            return None  # fleet lists only machines whose object is alive
        try:
            state: dict[str, Any] = json.loads(obj.value)
        except ValueError:
            return None
        metadata = dict(state.get("Metadata") or {})
        # Dynamic metadata overrides the object's; an empty value removes the key.
        for node in _children(keys.get("metadata")).values():
            if node.value:
                metadata[node.name] = node.value
            else:
                metadata.pop(node.name, None)
        machine_id = str(state.get("ID") or "")
        return Machine(machine_id, metadata) if machine_id else None

    def public_ips(self) -> dict[str, str]:
        root = self.client.get(self.key("machines"), recursive=True)
        ips = {}
        for mdir in root.nodes if root is not None else ():
            obj = _children(mdir).get("object")
            if obj is not None and obj.value:
                state = json.loads(obj.value)
                ips[str(state.get("ID"))] = str(state.get("PublicIP") or "")
        return ips

    def states(self) -> list[StateRecord]:
        """Every ``states/<name>/<machine>`` entry, sorted by unit name then machine."""
        root = self.client.get(self.key("states"), recursive=True)
        out = []
        for unit_dir in root.nodes if root is not None else ():
            for node in unit_dir.nodes:
                try:
                    s: dict[str, Any] = json.loads(node.value or "")
                except ValueError:
                    continue
                out.append(
                    StateRecord(
                        unit_dir.name,
                        node.name,
                        str(s.get("loadState", "")),
                        str(s.get("activeState", "")),
                        str(s.get("subState", "")),
                        str(s.get("unitHash", "")),
                    )
                )
        return sorted(out, key=lambda r: (r.name, r.machine_id))


def job_state(record: JobRecord, states: Iterable[StateRecord]) -> str:
    """fleet's ``determineJobState``: what ``fleetctl list-units`` calls the unit's state."""
    target = record.job.target
    if not target or not any(s.name == record.job.name and s.machine_id == target for s in states):
        return "inactive"
    return "launched" if record.heartbeat == target else "loaded"
