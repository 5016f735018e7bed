"""A simulated fleet agent: one machine that loads, starts and reports units.

It does what fleet's agent does (``agent/reconcile.go``, ``agent/agent.go``): keep its
``machines/<id>/object`` alive under a TTL, work out which units it should have (those
targeted at it plus matching globals), load / start / stop / unload them through the
simulated systemd, heartbeat ``job/<name>/job-state`` for launched units, and publish
each unit's state to ``states/<name>/<id>`` and ``state/<name>`` with a TTL. A clean stop
unloads everything and deletes its states and machine object; a crash just stops, and
etcd's TTLs do the rest.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kaylee_sync.fleet.etcd2 import CompareFailed, Etcd2Client, Etcd2Error, KeyNotFound
from kaylee_sync.fleetsim.registry import JobRecord, SimRegistry, machine_object, unit_state
from kaylee_sync.fleetsim.scheduling import INACTIVE, LAUNCHED, Machine, desired_units
from kaylee_sync.fleetsim.systemd import Behaviour, SimUnit, behaviour_for
from kaylee_sync.fleetsim.worker import Worker
from kaylee_sync.render import kaylee_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentSettings:
    """Timing and failure injection shared by every agent of a cluster."""

    interval: float = 5.0  # seconds between reconciles (fleet: 5 s; tests: 0.1-0.2 s)
    state_ttl: int = 30  # TTL of states, heartbeats (fleet's agent TTL: 30 s)
    machine_ttl: int = 30  # TTL of machines/<id>/object (fleet: 30 s, refreshed every 15 s)
    default_start_delay: float = 0.0  # seconds a unit spends activating before running
    behaviours: Mapping[str, Behaviour] = field(default_factory=dict)  # glob -> behaviour
    unit_dir: Path | None = None  # if set, unit files are written to <unit_dir>/<id>/<name>
    # unit-name glob -> presence key template (${KAYLEE_ID}), written in etcd v2 while
    # the instance is healthy: the sidekick of the original's sample unit
    presence: Mapping[str, str] = field(default_factory=dict)


def _refresh_period(ttl: float) -> float:
    # fleet's rule for heartbeats and state publishing
    return ttl * 4 / 5 if ttl > 10 else ttl / 2


class Agent(Worker):
    def __init__(
        self,
        client: Etcd2Client,
        prefix: str,
        machine_id: str,
        metadata: Mapping[str, str],
        settings: AgentSettings,
        public_ip: str = "",
    ) -> None:
        super().__init__(f"fleetsim-agent-{machine_id[:8]}", settings.interval)
        self.registry = SimRegistry(client, prefix)
        self.machine_id = machine_id
        self.metadata = dict(metadata)
        self.public_ip = public_ip
        self.settings = settings
        self.clean_stop = True  # False = crash: leave every key to its TTL
        self._units: dict[str, SimUnit] = {}
        self._published: dict[str, str] = {}  # unit name -> JSON last written
        self._lock = threading.Lock()
        self._machine_due = 0.0
        self._refresh_due = 0.0
        self._ids: dict[str, str] = {}  # KAYLEE_ID -> unit name
        self._present: dict[str, str] = {}  # unit name -> presence key written

    def units(self) -> dict[str, tuple[str, str, str]]:
        """name -> (load, active, sub) of what this agent has loaded, for tests."""
        with self._lock:
            return {n: u.state for n, u in self._units.items()}

    def health_of(self, instance_id: str) -> bool | None:
        """For the health endpoint: is the instance with this KAYLEE_ID healthy here?"""
        with self._lock:
            unit = self._units.get(self._ids.get(instance_id, ""))
            if unit is None or unit.running_at is None:
                return None
            return unit.healthy(time.monotonic())

    def unit_files(self) -> dict[str, str]:
        """name -> the unit text this agent loaded (fleet's stored ``Raw``)."""
        with self._lock:
            return {n: u.raw for n, u in self._units.items()}

    def tick(self) -> float | None:
        now = time.monotonic()
        self._keep_machine_alive(now)
        registry = self.registry
        machine = registry.machine(self.machine_id) or Machine(self.machine_id, self.metadata)
        records = {r.job.name: r for r in registry.jobs()}
        desired = desired_units(machine, (r.job for r in records.values()))
        with self._lock:
            for name in sorted(set(desired) | set(self._units)):
                record = records.get(name) if name in desired else None
                self._reconcile_unit(name, record, now)
            for unit in self._units.values():
                unit.advance(now)
            refresh = now >= self._refresh_due
            if refresh:
                self._refresh_due = now + _refresh_period(self.settings.state_ttl)
            self._publish(refresh)
            self._publish_presence(now, refresh)
            dues = [u.due for u in self._units.values() if u.due is not None]
        return min(dues) - time.monotonic() if dues else None

    # -- the machine -----------------------------------------------------------------

    def _keep_machine_alive(self, now: float) -> None:
        if now < self._machine_due:
            return
        client, ttl = self.registry.client, self.settings.machine_ttl
        key = self.registry.key("machines", self.machine_id, "object")
        try:
            if self._machine_due == 0.0:
                raise KeyNotFound("first write")
            client.refresh_ttl(key, ttl)  # a refresh wakes no watcher
        except KeyNotFound:
            client.set(key, machine_object(self.machine_id, self.public_ip, self.metadata), ttl)
        self._machine_due = now + ttl / 2

    # -- units -----------------------------------------------------------------------

    def _reconcile_unit(self, name: str, record: JobRecord | None, now: float) -> None:
        current = self._units.get(name)
        if record is None or record.job.target_state == INACTIVE:
            if current is not None:
                self._unload(current)
            return
        if current is not None and current.unit_hash != record.job.unit_hash:
            self._unload(current)
            current = None
        if current is None:
            current = self._load(record)
        launch = record.job.target_state == LAUNCHED
        if launch and not current.launched:
            current.start(now)
            self._heartbeat(name)
        elif not launch and current.launched:
            current.stop()
            self._clear_heartbeat(name)

    def _load(self, record: JobRecord) -> SimUnit:
        name = record.job.name
        behaviour = behaviour_for(name, record.options, self.settings.behaviours)
        unit = SimUnit(
            name, record.job.unit_hash, record.raw, behaviour, self.settings.default_start_delay
        )
        self._units[name] = unit
        self._ids[kaylee_id(name)] = name
        if self.settings.unit_dir is not None:
            path = self.settings.unit_dir / self.machine_id / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(record.raw, encoding="utf-8")
        return unit

    def _unload(self, unit: SimUnit) -> None:
        if unit.launched:
            self._clear_heartbeat(unit.name)
        unit.stop()
        del self._units[unit.name]
        self._ids.pop(kaylee_id(unit.name), None)
        if self.settings.unit_dir is not None:
            (self.settings.unit_dir / self.machine_id / unit.name).unlink(missing_ok=True)

    def _heartbeat(self, name: str) -> None:
        key = self.registry.key("job", name, "job-state")
        self.registry.client.set(key, self.machine_id, ttl=self.settings.state_ttl)

    def _clear_heartbeat(self, name: str) -> None:
        # fleet deletes unconditionally; comparing on our id keeps us from erasing the
        # heartbeat of the machine a moved unit now runs on.
        key = self.registry.key("job", name, "job-state")
        with contextlib.suppress(CompareFailed):
            self.registry.client.delete(key, prev_value=self.machine_id)

    # -- states ----------------------------------------------------------------------

    def _publish(self, refresh: bool) -> None:
        client, ttl = self.registry.client, self.settings.state_ttl
        for name, unit in self._units.items():
            value = unit_state(*unit.state, self.machine_id, unit.unit_hash)
            if refresh or self._published.get(name) != value:
                client.set(self.registry.key("states", name, self.machine_id), value, ttl=ttl)
                client.set(self.registry.key("state", name), value, ttl=ttl)
                self._published[name] = value
                if refresh and unit.launched:
                    self._heartbeat(name)
        for name in [n for n in self._published if n not in self._units]:
            self._remove_state(name, self._published.pop(name))

    def _publish_presence(self, now: float, refresh: bool) -> None:
        """Write (or refresh) the presence key of each healthy instance; drop the others'."""
        client, ttl = self.registry.client, self.settings.state_ttl
        for name, unit in self._units.items():
            template = next(
                (t for g, t in self.settings.presence.items() if fnmatch.fnmatchcase(name, g)), ""
            )
            if not template or unit.behaviour.no_presence or not unit.healthy(now):
                continue
            key = template.replace("${KAYLEE_ID}", kaylee_id(name))
            if refresh or self._present.get(name) != key:
                client.set(key, self.public_ip or self.machine_id, ttl=ttl)
                self._present[name] = key
        for name, key in list(self._present.items()):
            held = self._units.get(name)
            if held is None or not held.healthy(now):
                with contextlib.suppress(KeyNotFound):
                    client.delete(key)
                del self._present[name]

    def _remove_state(self, name: str, last: str) -> None:
        client = self.registry.client
        client.delete(self.registry.key("states", name, self.machine_id))
        try:
            # the legacy single-machine copy goes only if it is still ours
            client.delete(self.registry.key("state", name), prev_value=last)
            client.delete(self.registry.key("states", name), dir=True)
        except Etcd2Error:
            pass  # another machine's state is there: leave it

    def on_stop(self) -> None:
        if not self.clean_stop:
            return  # a crash: keys expire with their TTLs
        with self._lock:
            for unit in list(self._units.values()):
                self._unload(unit)
            self._publish(refresh=False)
            self._publish_presence(time.monotonic(), refresh=False)
        self.registry.client.delete(self.registry.key("machines", self.machine_id, "object"))
