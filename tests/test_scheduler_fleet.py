"""The scheduler against a real etcd and the fleet simulator, through both drivers.

Specs are written with the store (as ``kaylee run`` does); the scheduler's passes run
in a thread with short timings; the simulator's engine and agents place and "run" the
fleet units. Assertions read fleet's registry, as fleetctl would.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kaylee_sync.fleet.api import ApiDriver
from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.fleet.protocol import FleetClient
from kaylee_sync.fleet.registry import RegistryDriver
from kaylee_sync.fleetsim import FleetApiServer, SimulatedCluster
from kaylee_sync.render import conflicts_for, parse_unit_name, render_options
from kaylee_sync.scheduler.runner import Scheduler, SchedulerSettings
from kaylee_sync.spec import App, UnitSpec, spec_hash6, to_json
from kaylee_sync.store import Store

FAST = SchedulerSettings(
    stable=0.6, rollout_timeout=4.0, destroy_timeout=3.0, active_interval=0.1, resync=1.0
)
WEB = UnitSpec(name="web", replicas=4, max_replicas_per_host=2, apps=(App("docker://web:1"),))
MACHINES = [
    {"metadata": {"disk": "ssd"}},
    {"metadata": {"disk": "ssd"}},
    {"metadata": {"disk": "hdd"}},
]


class Harness:
    def __init__(self, store: Store, fleet: FleetClient, cluster: SimulatedCluster) -> None:
        self.store, self.fleet, self.cluster = store, fleet, cluster
        self.scheduler = Scheduler(store, fleet, FAST)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.scheduler.run, args=(self.stop,), daemon=True)
        self.samples: list[dict[str, list[str]]] = []

    def put(self, spec: UnitSpec) -> None:
        self.store.put_unit(spec.name, to_json(spec))
        if not self.thread.is_alive():
            self.thread.start()  # the scheduler starts with the first spec
        self.scheduler.trigger()

    def ours(self, unit: str = "web") -> dict[str, list[str]]:
        """Fleet unit name -> machines where it runs, for one Kaylee unit."""
        running = self.cluster.running_units()
        return {
            u.name: running.get(u.name, [])
            for u in self.fleet.units()
            if (p := parse_unit_name(u.name)) is not None and p.unit == unit
        }

    def wait_running(
        self, spec: UnitSpec, timeout: float = 20.0, generation: int = 0
    ) -> dict[str, list[str]]:
        hash6 = spec_hash6(spec, generation)

        def done() -> dict[str, list[str]] | None:
            units = self.ours(spec.name)
            self.samples.append(units)
            ok = len(units) == spec.instance_count and all(
                f":{hash6}:" in n and m for n, m in units.items()
            )
            return units if ok else None

        return self.cluster.wait_until(done, timeout=timeout, interval=0.1)  # type: ignore[no-any-return]


@pytest.fixture(params=["etcd", "api"])
def harness(
    request: pytest.FixtureRequest,
    etcd_endpoint: str,
    etcd_prefix: str,
    store: Store,
    tmp_path: Path,
) -> Iterator[Harness]:
    fleet_prefix = etcd_prefix + "/fleet/"
    behaviours = {"*broken*": "never_start"}
    with SimulatedCluster(
        etcd_endpoint, fleet_prefix, machines=MACHINES, engine_interval=0.1, agent_interval=0.1,
        behaviours=behaviours, default_start_delay=0.2,
    ) as cluster:  # fmt: skip
        if request.param == "etcd":
            fleet: Any = RegistryDriver(Etcd2Client(etcd_endpoint), fleet_prefix)
            server = None
        else:
            server = FleetApiServer(
                etcd_endpoint, fleet_prefix, f"unix://{tmp_path}/fleet.sock"
            ).start()
            fleet = ApiDriver(f"unix://{tmp_path}/fleet.sock")
        h = Harness(store, fleet, cluster)
        try:
            yield h
        finally:
            h.stop.set()
            h.scheduler.trigger()
            if h.thread.is_alive():
                h.thread.join(timeout=10)
            (fleet.client if isinstance(fleet, RegistryDriver) else fleet).close()
            if server is not None:
                server.stop()


def running_count(sample: dict[str, list[str]]) -> int:
    return sum(1 for machines in sample.values() if machines)


def test_first_deploy_runs_every_replica_respecting_max_replicas_per_host(harness: Harness) -> None:
    harness.put(WEB)
    units = harness.wait_running(WEB)
    per_machine: dict[str, int] = {}
    for machines in units.values():
        for m in machines:
            per_machine[m] = per_machine.get(m, 0) + 1
    assert max(per_machine.values()) <= 2
    report = harness.store.get("scheduler/rollouts/web")
    assert report is not None and b'"phase"' in report.value


def test_rolling_update_never_has_fewer_running_replicas(harness: Harness) -> None:
    harness.put(WEB)
    harness.wait_running(WEB)
    harness.samples.clear()
    new = dataclasses.replace(WEB, apps=(App("docker://web:2"),))
    harness.put(new)
    harness.wait_running(new, timeout=40)
    assert harness.samples and min(running_count(s) for s in harness.samples) >= 4


def test_failed_rollout_keeps_the_old_replicas(harness: Harness) -> None:
    harness.put(WEB)
    old = harness.wait_running(WEB)
    broken = dataclasses.replace(WEB, apps=(App("docker://broken:1"),))
    harness.put(broken)

    def failed() -> bool:
        report = harness.store.get("scheduler/rollouts/web")
        return report is not None and b'"phase": "failed"' in report.value

    harness.cluster.wait_until(failed, timeout=30)
    now = harness.ours()
    assert {n for n, m in now.items() if m} == set(old)


def test_scale_up_and_down_keep_the_running_units(harness: Harness) -> None:
    harness.put(WEB)
    before = harness.wait_running(WEB)
    bigger = dataclasses.replace(WEB, replicas=6)
    harness.put(bigger)
    after = harness.cluster.wait_until(
        lambda: (u := harness.ours()) and running_count(u) == 6 and u, timeout=20
    )
    assert set(before) <= set(after)
    smaller = dataclasses.replace(WEB, replicas=2)
    harness.put(smaller)
    final = harness.cluster.wait_until(
        lambda: (u := harness.ours()) and len(u) == 2 and u, timeout=20
    )
    assert set(final) <= set(before)


def test_restart_replaces_every_instance_and_delete_destroys_them(harness: Harness) -> None:
    harness.put(WEB)
    harness.wait_running(WEB)
    assert harness.store.bump_restart("web") == 1
    harness.scheduler.trigger()
    harness.wait_running(WEB, generation=1, timeout=40)
    harness.store.delete_unit("web")
    harness.scheduler.trigger()
    harness.cluster.wait_until(lambda: not harness.ours(), timeout=20)


def test_global_and_machine_id_units(harness: Harness) -> None:
    agent = UnitSpec(
        name="agent", global_=True, machine=("disk=ssd",), apps=(App("docker://agent:1"),)
    )
    pinned_machine = harness.cluster.machine_ids[2]
    db = UnitSpec(
        name="db", machine_id=pinned_machine[:8], apps=(App("docker://db:1"),), conflicts=("web",)
    )
    harness.put(agent)
    harness.put(db)
    units = harness.cluster.wait_until(
        lambda: (u := harness.ours("agent")) and all(len(m) == 2 for m in u.values()) and u,
        timeout=20,
    )
    ssd = sorted(harness.cluster.machine_ids[:2])
    assert [sorted(m) for m in units.values()] == [ssd] or all(
        sorted(m) == sorted(set(m)) for m in units.values()
    )
    if isinstance(harness.fleet, ApiDriver):
        # fleet's API refuses MachineID with Conflicts, which the original always renders
        # for a non-replica unit: the refusal is reported, not retried silently.
        def refused() -> bool:
            report = harness.store.get("scheduler/rollouts/db")
            return report is not None and b"MachineID cannot be used with Conflicts" in report.value

        harness.cluster.wait_until(refused, timeout=20)
        return
    dbs = harness.cluster.wait_until(
        lambda: (u := harness.ours("db")) and all(u.values()) and u, timeout=20
    )
    assert [m for m in dbs.values()] == [[pinned_machine]]


def test_units_made_by_the_go_kaylee_are_adopted_without_restart(harness: Harness) -> None:
    hash6 = spec_hash6(WEB)
    names = []
    for i, slot in enumerate(["a1b2c3", "d4e5f6", "a1b2c3", "d4e5f6"], start=1):
        name = f"k2:web:{hash6}:{slot}:{i}.service"
        conflicts = conflicts_for(WEB, "k2", hash6, slot)
        harness.fleet.create_unit(name, render_options(WEB, name, conflicts), "launched")
        names.append(name)
    harness.cluster.wait_until(lambda: running_count(harness.ours()) == 4, timeout=20)
    harness.put(WEB)
    harness.scheduler.trigger()
    for _ in range(10):  # several passes: nothing must change
        harness.samples.append(harness.ours())
        threading.Event().wait(0.2)
    assert sorted(harness.ours()) == sorted(names)


def test_fleet_units_without_our_prefix_are_never_touched(harness: Harness) -> None:
    harness.fleet.create_unit("hello.service", render_options(WEB, "hello.service", ()), "launched")
    harness.fleet.create_unit(
        "k3:web:abcdef:abcdef:1.service", render_options(WEB, "x", ()), "launched"
    )
    harness.put(WEB)
    harness.wait_running(WEB)
    names = {u.name for u in harness.fleet.units()}
    assert {"hello.service", "k3:web:abcdef:abcdef:1.service"} <= names
