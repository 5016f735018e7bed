"""A changed unit's first step comes before the full read (scheduler/focus.py).

Against a real etcd and the fleet simulator, with the registry driver wrapped so that
the test sees the order of fleet calls: ``snapshot`` is the full pass's read of all of
fleet, so a create recorded before the next ``snapshot`` was made by the early step.
What the early step must never do — stop, destroy, or act on a unit with a rollout
policy — is checked the same way: those calls come only after a full read.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.fleet.model import LAUNCHED, FleetUnit, UnitState
from kaylee_sync.fleet.registry import RegistryDriver
from kaylee_sync.fleetsim import SimulatedCluster
from kaylee_sync.render import parse_unit_name
from kaylee_sync.scheduler.decide import Decision
from kaylee_sync.scheduler.runner import Scheduler, SchedulerSettings
from kaylee_sync.spec import App, UnitSpec, spec_hash6, to_json
from kaylee_sync.spec.policy import RolloutPolicy, UnitPolicy, policy_to_json
from kaylee_sync.store import Op, Store, keys
from kaylee_sync.unitfile import UnitOption
from tests.polling import wait_for

FAST = SchedulerSettings(
    stable=0.3, rollout_timeout=10.0, destroy_timeout=3.0, active_interval=0.1, resync=30.0
)
WEB_A = UnitSpec(name="web-a", replicas=2, apps=(App("docker://web-a:1"),))
WEB_Z = UnitSpec(name="web-z", replicas=2, apps=(App("docker://web-z:1"),))
DB = UnitSpec(name="db", apps=(App("docker://db:1"),))


class Recording(RegistryDriver):
    """The registry driver, logging each full read and each write, in order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def _log(self, what: str, name: str) -> None:
        with self._lock:
            self.calls.append((what, name))

    def log(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self.calls)

    def snapshot(self) -> tuple[list[FleetUnit], list[UnitState]]:
        self._log("snapshot", "")
        return super().snapshot()

    def create_unit(
        self,
        name: str,
        options: Sequence[UnitOption],
        desired_state: str = LAUNCHED,
        *,
        fresh: bool = False,
    ) -> None:
        self._log("create", name)
        super().create_unit(name, options, desired_state, fresh=fresh)

    def set_target_state(self, name: str, state: str, *, seen: FleetUnit | None = None) -> None:
        self._log(f"target {state}", name)
        super().set_target_state(name, state, seen=seen)

    def destroy_unit(self, name: str, *, seen: FleetUnit | None = None) -> None:
        self._log("destroy", name)
        super().destroy_unit(name, seen=seen)


class Quiet(Scheduler):
    """The scheduler, numbering its passes and remembering which found nothing to do."""

    leading = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started = 0
        self.quiet: list[int] = []  # numbers of the passes that found every unit steady

    def run_pass(self) -> list[Decision]:
        self.started += 1
        number = self.started
        decisions = super().run_pass()
        if decisions and all(not d.actions and d.phase == "steady" for d in decisions):
            self.quiet.append(number)
        return decisions


class Harness:
    def __init__(self, store: Store, fleet: Recording) -> None:
        self.store, self.fleet = store, fleet
        self.scheduler = Quiet(store, fleet, FAST, is_leader=lambda: self.scheduler.leading)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.scheduler.run, args=(self.stop,), daemon=True)

    def put(self, spec: UnitSpec) -> None:
        self.store.put_unit(spec.name, to_json(spec))

    def settled(self) -> None:
        """Until a pass started after now finds every unit steady (a pass that acts is
        followed by another within the active interval, so one trigger is enough)."""
        seen = self.scheduler.started
        self.scheduler.trigger()
        wait_for(lambda: any(n > seen for n in self.scheduler.quiet), 30.0, "a quiet pass")

    def first(self, what: str, unit: str, hash6: str = "") -> int:
        """Index in the call log of the first ``what`` on a fleet unit of ``unit``."""

        def found() -> int | None:
            for i, (kind, name) in enumerate(self.fleet.log()):
                parsed = parse_unit_name(name)
                if kind == what and parsed and parsed.unit == unit and hash6 in name:
                    return i + 1  # truthy
            return None

        return wait_for(found, 30.0, f"{what} of {unit}") - 1

    def snapshots_before(self, index: int) -> int:
        return sum(1 for kind, _ in self.fleet.log()[:index] if kind == "snapshot")


@pytest.fixture
def harness(etcd_endpoint: str, prefix: str, store: Store) -> Iterator[Harness]:
    machines = [{"metadata": {"disk": "ssd"}}, {"metadata": {"disk": "ssd"}}]
    with (
        SimulatedCluster(
            etcd_endpoint, prefix, machines=machines, engine_interval=0.1, agent_interval=0.1
        ),
        Etcd2Client(etcd_endpoint) as client,
    ):
        h = Harness(store, Recording(client, prefix))
        for spec in (WEB_A, WEB_Z, DB):
            h.put(spec)
        h.thread.start()
        try:
            h.settled()
            yield h
        finally:
            h.stop.set()
            h.scheduler.trigger()
            h.thread.join(timeout=10)


def test_a_changed_unit_gets_its_first_new_replica_before_the_full_read(
    harness: Harness,
) -> None:
    before = len(harness.fleet.log())
    snapshots = harness.snapshots_before(before)
    new = UnitSpec(name="web-z", replicas=2, apps=(App("docker://web-z:2"),))
    harness.put(new)

    created = harness.first("create", "web-z", f":{spec_hash6(new)}:")

    assert created >= before
    # No full read of fleet between the change and the create: the early step made it.
    assert harness.snapshots_before(created) == snapshots
    # One new replica (a rolling update), and nothing stopped before the full read.
    early = harness.fleet.log()[before : created + 1]
    assert [kind for kind, _ in early] == ["create"]
    # The rollout then completes through full passes, as before.
    harness.settled()
    names = [u.name for u in harness.fleet.units() if ":web-z:" in u.name]
    assert len(names) == 2 and all(f":{spec_hash6(new)}:" in n for n in names)


def test_the_early_step_never_stops_a_unit_replaced_whole(harness: Harness) -> None:
    before = len(harness.fleet.log())
    snapshots = harness.snapshots_before(before)
    harness.put(UnitSpec(name="db", apps=(App("docker://db:2"),)))

    stopped = harness.first("target loaded", "db")

    # A non-replica unit stops its old instance first; only a full read may decide that.
    assert harness.snapshots_before(stopped) > snapshots
    early = [kind for kind, name in harness.fleet.log()[before:stopped] if ":db:" in name]
    assert early == []


def test_a_scale_down_is_left_to_the_full_pass(harness: Harness) -> None:
    before = len(harness.fleet.log())
    snapshots = harness.snapshots_before(before)
    harness.put(UnitSpec(name="web-a", replicas=1, apps=(App("docker://web-a:1"),)))

    stopped = harness.first("target loaded", "web-a")

    assert harness.snapshots_before(stopped) > snapshots


def test_a_unit_given_a_rollout_policy_is_left_to_the_full_pass(
    harness: Harness, store: Store
) -> None:
    # The policy arrives with the change, in the sync's one transaction, and the pass
    # begins before the policy's own watch event (driven by hand here, to be sure of
    # that order): the gate has not read the policy, so only the early step's own look
    # at policy/ holds the unit back.
    harness.stop.set()
    harness.scheduler.trigger()
    harness.thread.join(10)
    before = len(harness.fleet.log())
    new = UnitSpec(name="web-z", replicas=2, apps=(App("docker://web-z:3"),))
    policy = UnitPolicy(rollout=RolloutPolicy(max_parallel=2))
    ops = [
        Op.put(keys.policy_key("web-z"), policy_to_json(policy)),
        Op.put(keys.unit_key("web-z"), to_json(new)),
    ]
    assert store.txn([], ops)
    harness.scheduler._touched.add("web-z")  # as the unit's watch event would

    harness.scheduler.run_pass()

    created = harness.first("create", "web-z", f":{spec_hash6(new)}:")
    assert harness.snapshots_before(created) > harness.snapshots_before(before)


def test_no_early_create_once_the_lease_is_not_live(harness: Harness) -> None:
    harness.scheduler.leading = False
    new = UnitSpec(name="web-z", replicas=2, apps=(App("docker://web-z:4"),))
    harness.put(new)
    harness.scheduler._touched.add("web-z")  # as the watch would, had a pass begun

    assert harness.scheduler.run_pass() == []
    marker = f":web-z:{spec_hash6(new)}:"
    assert not [c for c in harness.fleet.log() if c[0] == "create" and marker in c[1]]
