"""The scheduler's decisions, as a pure function of spec + fleet state (no server needed).

A tiny in-memory "world" applies the decided actions the way fleet would, so whole
rollouts can be played pass by pass and their invariants checked at every step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import pytest

from kaylee_sync.fleet.model import INACTIVE, LAUNCHED, LOADED, FleetUnit, UnitState
from kaylee_sync.render import parse_unit_name, render_units
from kaylee_sync.scheduler.decide import (
    Create,
    Decision,
    Destroy,
    Launch,
    Stop,
    Timers,
    Timing,
    UnitView,
    decide,
    is_running,
)
from kaylee_sync.spec import App, UnitSpec, spec_hash6

TIMING = Timing(stable=10, rollout_timeout=300, destroy_timeout=30)
WEB = UnitSpec(name="web", replicas=4, max_replicas_per_host=2, apps=(App("docker://web:1"),))


class World:
    """fleet as the scheduler sees it: units, their target state, and what agents report."""

    def __init__(self, start_delay: float = 0.0, never_start: Iterable[str] = ()) -> None:
        self.units: dict[str, FleetUnit] = {}
        self.started_at: dict[str, float] = {}
        self.start_delay = start_delay
        self.never_start = tuple(never_start)
        self.now = 0.0
        self.timers = Timers()
        self.failed_hash = ""
        self.settling = False
        self.silent: set[str] = set()  # units whose states expired (nothing reported)
        self.history: list[Decision] = []

    def add_running(self, name: str) -> None:
        self.units[name] = FleetUnit(name, (), LAUNCHED, LAUNCHED, "m1")
        self.started_at[name] = -1000.0

    def sub_state(self, name: str) -> str:
        unit = self.units[name]
        if unit.desired_state != LAUNCHED:
            return "dead"
        if any(marker in name for marker in self.never_start):
            return "auto-restart"
        return "running" if self.now - self.started_at[name] >= self.start_delay else "start-pre"

    def states(self) -> dict[str, list[UnitState]]:
        return {
            n: [UnitState(n, "h", "m1", "loaded", "active", self.sub_state(n))]
            for n in self.units
            if n not in self.silent
        }

    def running(self, hash6: str | None = None) -> int:
        states = self.states()
        return sum(
            1 for n in self.units if is_running(states[n]) and (hash6 is None or f":{hash6}:" in n)
        )

    def step(self, spec: UnitSpec | None, generation: int = 0, name: str = "web") -> Decision:
        states = self.states()
        self.timers.observe(
            self.units.values(), [n for n, s in states.items() if is_running(s)], self.now
        )
        ours = []
        for unit in self.units.values():
            parsed = parse_unit_name(unit.name)
            if parsed is not None and parsed.unit == name:
                ours.append((parsed, unit))
        view = UnitView(name, "k2", spec, generation, ours, states, self.failed_hash, self.settling)
        decision = decide(view, self.timers, self.now, TIMING)
        for action in decision.actions:
            self.apply(action)
        if decision.failed_hash:
            self.failed_hash = decision.failed_hash
        self.history.append(decision)
        return decision

    def apply(self, action: object) -> None:
        match action:
            case Create(name=name, options=options):
                assert name not in self.units, f"created twice: {name}"
                self.units[name] = FleetUnit(name, options, LAUNCHED, LAUNCHED, "m1")
                self.started_at[name] = self.now
            case Launch(name=name):
                self.units[name] = dataclasses.replace(self.units[name], desired_state=LAUNCHED)
                self.started_at[name] = self.now
            case Stop(name=name):
                self.units[name] = dataclasses.replace(self.units[name], desired_state=LOADED)
            case Destroy(name=name):
                del self.units[name]
            case _:
                raise AssertionError(action)

    def run(self, spec: UnitSpec | None, until: str, seconds: float = 2000, **kw: int) -> None:
        while self.now < seconds:
            if self.step(spec, **kw).phase == until:
                return
            self.now += 1
        raise AssertionError(f"never reached {until}: {self.history[-1]}")


def test_first_deploy_creates_every_instance_with_render_units_names() -> None:
    world = World()
    decision = world.step(WEB)
    assert decision.phase == "deploying"
    assert [a.name for a in decision.actions] == [u.name for u in render_units(WEB)]
    assert all(isinstance(a, Create) for a in decision.actions)
    created = {a.name: a.options for a in decision.actions if isinstance(a, Create)}
    assert created == {u.name: u.options for u in render_units(WEB)}


def test_steady_state_does_nothing() -> None:
    world = World()
    world.run(WEB, until="steady")
    assert world.step(WEB).actions == ()
    assert world.running() == 4


def test_rolling_update_never_drops_below_the_running_replicas() -> None:
    world = World(start_delay=3)
    world.run(WEB, until="steady")
    new = dataclasses.replace(WEB, apps=(App("docker://web:2"),))
    new_hash = spec_hash6(new)
    while world.now < 2000:
        decision = world.step(new)
        assert world.running() >= 4, decision
        assert sum(isinstance(a, Create) for a in decision.actions) <= 1  # one at a time
        if decision.phase == "steady":
            break
        world.now += 1
    assert world.running(new_hash) == 4
    assert all(f":{new_hash}:" in n for n in world.units)


def test_a_rollout_that_never_becomes_stable_fails_and_keeps_the_old_instances() -> None:
    world = World()
    world.run(WEB, until="steady")
    old_hash = spec_hash6(WEB)
    broken = dataclasses.replace(WEB, apps=(App("docker://broken:1"),))
    world.never_start = (f":{spec_hash6(broken)}:",)
    world.run(broken, until="failed", seconds=1000)
    assert world.now > TIMING.rollout_timeout
    assert world.running(old_hash) == 4
    stopped = [u for u in world.units.values() if f":{spec_hash6(broken)}:" in u.name]
    assert stopped and all(u.desired_state == LOADED for u in stopped)
    # And it stays failed: no new attempt until the spec changes.
    world.now += 1000
    decision = world.step(broken)
    assert decision.phase == "failed" and decision.actions == ()


def test_a_first_deploy_that_never_runs_reports_failed_but_stays_launched() -> None:
    world = World()
    broken = dataclasses.replace(WEB, apps=(App("docker://broken:1"),))
    world.never_start = (f":{spec_hash6(broken)}:",)
    world.run(broken, until="failed", seconds=1000)
    decision = world.step(broken)
    assert world.now > TIMING.rollout_timeout
    assert decision.phase == "failed" and "did not run within" in decision.message
    assert decision.failed_hash == ""  # not sticky: nothing older to protect
    assert len(world.units) == 4 and all(u.desired_state == LAUNCHED for u in world.units.values())
    # Once the image runs after all, the unit is steady again without a spec change.
    world.never_start = ()
    world.run(broken, until="steady", seconds=1000)
    assert world.running(spec_hash6(broken)) == 4


def test_scaling_up_only_adds_instances_and_keeps_the_running_ones() -> None:
    world = World()
    world.run(WEB, until="steady")
    before = set(world.units)
    bigger = dataclasses.replace(WEB, replicas=6)
    decision = world.step(bigger)
    assert decision.phase == "scaling"
    assert all(isinstance(a, Create) for a in decision.actions) and len(decision.actions) == 2
    assert before <= set(world.units)
    world.run(bigger, until="steady")
    assert before <= set(world.units) and len(world.units) == 6
    # maxReplicasPerHost 2 is kept: 6 instances spread over exactly 2 slots, 3 each.
    slots = [parse_unit_name(n).slot for n in world.units]  # type: ignore[union-attr]
    assert sorted(slots.count(s) for s in set(slots)) == [3, 3]


def test_scaling_down_retires_the_highest_instances_only() -> None:
    world = World()
    world.run(WEB, until="steady")
    smaller = dataclasses.replace(WEB, replicas=2)
    world.run(smaller, until="steady")
    assert sorted(parse_unit_name(n).index for n in world.units) == [1, 2]  # type: ignore[union-attr]
    assert world.running(spec_hash6(WEB)) == 2  # the same, never restarted


def test_restart_generation_rolls_every_instance() -> None:
    world = World()
    world.run(WEB, until="steady")
    world.run(WEB, until="steady", generation=1)
    assert world.running(spec_hash6(WEB, 1)) == 4 and len(world.units) == 4


def test_non_replica_unit_is_stopped_and_destroyed_before_the_new_one_starts() -> None:
    single = UnitSpec(name="db", apps=(App("docker://db:1"),), machine_id="abcdef12")
    world = World()
    world.run(single, until="steady", name="db")
    new = dataclasses.replace(single, apps=(App("docker://db:2"),))
    decision = world.step(new, name="db")
    assert decision.phase == "replacing"
    assert [type(a) for a in decision.actions] == [Stop]
    decision = world.step(new, name="db")  # dead at once in this world: destroy, nothing new
    assert [type(a) for a in decision.actions] == [Destroy]
    decision = world.step(new, name="db")
    assert [type(a) for a in decision.actions] == [Create]


def test_deleted_spec_destroys_all_of_its_fleet_units() -> None:
    world = World()
    world.run(WEB, until="steady")
    world.run(None, until="deleted")
    assert world.units == {}


def test_units_made_by_the_go_kaylee_with_random_slots_are_adopted() -> None:
    world = World()
    hash6 = spec_hash6(WEB)
    for i, slot in enumerate(["a1b2c3", "d4e5f6", "a1b2c3", "d4e5f6"], start=1):
        world.add_running(f"k2:web:{hash6}:{slot}:{i}.service")
    before = dict(world.units)
    world.now = 100
    decision = world.step(WEB)
    assert decision.actions == () and decision.phase == "steady"
    assert world.units == before


def test_units_stopped_by_hand_are_launched_again() -> None:
    world = World()
    world.run(WEB, until="steady")
    name = sorted(world.units)[0]
    world.apply(Stop(name))
    assert Launch(name) in world.step(WEB).actions


def test_a_stop_that_never_finishes_is_destroyed_after_the_destroy_timeout() -> None:
    world = World()
    world.run(WEB, until="steady")
    name = sorted(world.units)[0]
    world.apply(Stop(name))
    world.sub_state = lambda n: "running" if n in world.units else "dead"  # type: ignore[method-assign]
    world.timers.stop_requested_at.clear()
    assert Destroy(name) not in world.step(None).actions
    world.now += TIMING.destroy_timeout
    assert Destroy(name) in world.step(None).actions


@pytest.mark.parametrize("replicas", [1, 3, 7])
def test_every_replica_count_converges_from_scratch(replicas: int) -> None:
    spec = dataclasses.replace(WEB, replicas=replicas, max_replicas_per_host=1)
    world = World(start_delay=2)
    world.run(spec, until="steady")
    assert world.running(spec_hash6(spec)) == replicas


# -- unknown is not dead (issue 10) -------------------------------------------------------


def test_old_replicas_reporting_no_state_count_as_serving_and_are_never_stopped() -> None:
    world = World(start_delay=2)
    world.run(WEB, until="steady")
    old = set(world.units)
    world.silent = set(old)  # etcd stalled: every state expired
    new = dataclasses.replace(WEB, apps=(App("docker://web:2"),))
    for _ in range(50):
        decision = world.step(new)
        world.silent |= {n for n in world.units if n not in old}  # nor do the new ones
        world.now += 1
        assert not [a for a in decision.actions if isinstance(a, Stop | Destroy)], decision
    assert old <= set(world.units) and all(world.units[n].desired_state == LAUNCHED for n in old)
    assert "4 old still serving" in decision.message


def test_while_settling_silent_instances_are_not_stopped_and_no_timeout_is_judged() -> None:
    single = UnitSpec(name="db", apps=(App("docker://db:1"),))
    world = World()
    world.run(single, until="steady", name="db")
    world.silent = set(world.units)
    world.settling = True
    new = dataclasses.replace(single, apps=(App("docker://db:2"),))
    decision = world.step(new, name="db")
    assert decision.actions == () and "report the state" in decision.message
    world.settling = False  # settled: replacing a non-replica unit stops it, as designed
    assert [type(a) for a in world.step(new, name="db").actions] == [Stop]

    world = World(never_start=["web:2"])
    world.run(WEB, until="steady")
    world.run(dataclasses.replace(WEB, apps=(App("docker://web:2"),)), until="rolling")
    world.silent = set(world.units)
    world.settling = True
    world.now += TIMING.rollout_timeout * 2
    decision = world.step(dataclasses.replace(WEB, apps=(App("docker://web:2"),)))
    assert decision.phase == "rolling" and not decision.failed_hash


def test_a_stopped_unit_reporting_nothing_waits_for_the_destroy_timeout() -> None:
    world = World()
    world.run(WEB, until="steady")
    name = sorted(world.units)[0]
    world.apply(Stop(name))
    world.silent = {name}
    world.timers.stop_requested_at.clear()
    assert Destroy(name) not in world.step(None).actions
    world.now += TIMING.destroy_timeout
    assert Destroy(name) in world.step(None).actions


def test_a_unit_fleet_never_placed_is_known_not_to_run() -> None:
    world = World()
    world.run(WEB, until="steady")
    name = sorted(world.units)[0]
    world.units[name] = dataclasses.replace(world.units[name], desired_state=LOADED, machine_id="")
    world.silent = {name}
    world.timers.stop_requested_at.clear()
    assert Destroy(name) in world.step(None).actions


def test_a_create_cut_short_before_its_target_state_is_launched_mid_rollout() -> None:
    world = World(start_delay=2)
    world.run(WEB, until="steady")
    new = dataclasses.replace(WEB, apps=(App("docker://web:2"),))
    (created,) = [a.name for a in world.step(new).actions if isinstance(a, Create)]
    world.units[created] = dataclasses.replace(world.units[created], desired_state=INACTIVE)
    assert Launch(created) in world.step(new).actions
    world.run(new, until="steady")
