"""The simulated fleet engine: hold the leader lease, then schedule and unschedule jobs.

Only the engine leader schedules (``lease/engine-leader``, TTL five reconcile intervals,
as fleet sets it). Each pass reads machines and jobs, asks :func:`scheduling.plan` what
to change, and writes exactly what fleet's engine writes: ``job/<name>/target`` created
with prevExist=false, removed by compare-and-delete on the machine id. A lease held by
someone else (say a second simulator on the same prefix) makes this engine stand by.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math

from kaylee_sync.fleet.etcd2 import AlreadyExists, CompareFailed, Etcd2Client, KeyNotFound
from kaylee_sync.fleetsim.registry import SimRegistry
from kaylee_sync.fleetsim.scheduling import Decision, plan
from kaylee_sync.fleetsim.worker import Worker

log = logging.getLogger(__name__)

ENGINE_VERSION = 1


class Engine(Worker):
    """fleet's engine for one (simulated) machine id; call ``start()``/``stop()``."""

    def __init__(self, client: Etcd2Client, prefix: str, machine_id: str, interval: float) -> None:
        super().__init__(f"fleetsim-engine-{machine_id[:8]}", interval)
        self.registry = SimRegistry(client, prefix)
        self.machine_id = machine_id
        self.lease_ttl = max(2, math.ceil(interval * 5))
        self._lease_index: int | None = None
        self.decisions: list[Decision] = []  # every write made, for tests and debugging

    @property
    def is_leader(self) -> bool:
        return self._lease_index is not None

    def tick(self) -> float | None:
        if not self._ensure_version() or not self._hold_lease():
            return None
        registry = self.registry
        records = registry.jobs()
        decisions = plan((r.job for r in records), registry.machines())
        for d in decisions:
            self._apply(d)
        return None

    def _ensure_version(self) -> bool:
        key = self.registry.key("engine", "version")
        client = self.registry.client
        node = client.get(key)
        if node is None:
            try:
                client.create(key, str(ENGINE_VERSION))
            except AlreadyExists:
                return self._ensure_version()
            return True
        try:
            return int(node.value or 0) <= ENGINE_VERSION
        except ValueError:
            return False

    def _hold_lease(self) -> bool:
        client, key = self.registry.client, self.registry.key("lease", "engine-leader")
        value = json.dumps({"MachineID": self.machine_id, "Version": ENGINE_VERSION})
        try:
            if self._lease_index is None:
                node = client.create(key, value, ttl=self.lease_ttl)
            else:  # renew only the lease we hold: compare on its index
                node = client.set(key, value, ttl=self.lease_ttl, prev_index=self._lease_index)
        except (AlreadyExists, CompareFailed, KeyNotFound):
            if self._lease_index is not None:
                log.info("%s: lost the engine lease", self.name)
            self._lease_index = None
            return False
        self._lease_index = node.modified_index
        return True

    def _apply(self, d: Decision) -> None:
        client = self.registry.client
        key = self.registry.key("job", d.job, "target")
        try:
            if d.action == "schedule":
                client.create(key, d.machine_id)
            else:
                client.delete(key, prev_value=d.machine_id)
        except (AlreadyExists, CompareFailed, KeyNotFound) as exc:
            # Someone changed the job since we read it; the next pass sees the new state.
            log.debug("%s: %s %s skipped: %s", self.name, d.action, d.job, exc)
            return
        log.info("%s: %s %s on %s (%s)", self.name, d.action, d.job, d.machine_id, d.reason)
        self.decisions.append(d)

    def on_stop(self) -> None:
        # Release the lease so another engine can lead at once (fleet does the same).
        if self._lease_index is not None:
            key = self.registry.key("lease", "engine-leader")
            with contextlib.suppress(CompareFailed, KeyNotFound):
                self.registry.client.delete(key, prev_index=self._lease_index)
            self._lease_index = None
