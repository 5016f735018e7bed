"""Health-gated rollouts decided pass by pass (scheduler.gated), in the in-memory world of
test_scheduler_decide: canaries, maxParallel, deadlines, revert, preemption, pause."""

from __future__ import annotations

import dataclasses

from kaylee_sync.health.rollout import RolloutReport
from kaylee_sync.render import parse_unit_name
from kaylee_sync.scheduler.decide import Create, Decision, UnitView, is_running
from kaylee_sync.scheduler.gated import Control, Gate, decide_gated
from kaylee_sync.spec import App, RolloutPolicy, UnitPolicy, UnitSpec, parse_stored, spec_hash6
from tests.test_scheduler_decide import TIMING, World

OLD = UnitSpec(name="web", replicas=4, max_replicas_per_host=2, apps=(App("docker://web:1"),))
GOOD = dataclasses.replace(OLD, apps=(App("docker://web:2"),))
BAD = dataclasses.replace(OLD, apps=(App("docker://web:bad"),))
CANARY = UnitPolicy(
    RolloutPolicy(
        canary=1, auto_promote=True, min_healthy_time=5, healthy_deadline=30, max_parallel=2
    )
)


class GatedWorld(World):
    """The world, plus health (instances of ``unhealthy`` hashes never pass their checks)
    and the rollout record carried from pass to pass, as the runner keeps it in etcd."""

    def __init__(self, policy: UnitPolicy = CANARY, start_delay: float = 2.0) -> None:
        super().__init__(start_delay=start_delay)
        self.policy = policy
        self.unhealthy: set[str] = set()
        self.record: RolloutReport | None = None
        self.control = Control()
        self.samples: list[dict[str, int]] = []
        self.delays: dict[str, float] = {}  # hash6 -> start delay of its instances

    def delay(self, name: str) -> float:
        return self.delays.get(name.split(":")[2], self.start_delay)

    def sub_state(self, name: str) -> str:
        if self.units[name].desired_state != "launched":
            return "dead"
        return "running" if self.now - self.started_at[name] >= self.delay(name) else "start-pre"

    def healthy_since(self) -> dict[str, float]:
        states = self.states()
        return {
            n: self.started_at[n] + self.delay(n)
            for n in self.units
            if is_running(states[n]) and not any(f":{h}:" in n for h in self.unhealthy)
        }

    def step(self, spec: UnitSpec | None, generation: int = 0, name: str = "web") -> Decision:
        states = self.states()
        self.timers.observe(
            self.units.values(), [n for n, s in states.items() if is_running(s)], self.now
        )
        ours = [(p, u) for u in self.units.values() if (p := parse_unit_name(u.name))]
        view = UnitView(name, "k2", spec, generation, ours, states, self.failed_hash)
        stable = None
        if self.record is not None and self.record.stable_spec:
            stable = parse_stored(self.record.stable_spec, "stable")
        healthy = self.healthy_since()
        failing = frozenset(n for n, s in states.items() if is_running(s) and n not in healthy)
        gate = Gate(
            self.policy, healthy, self.record, self.control, stable, self.now, failing=failing
        )
        decision, outcome = decide_gated(view, gate, self.timers, self.now, TIMING)
        for action in decision.actions:
            self.apply(action)
        if decision.failed_hash:
            self.failed_hash = decision.failed_hash
        self.record = RolloutReport(
            decision.phase,
            hash6=decision.hash6,
            desired=decision.desired,
            failed_hash=decision.failed_hash,
            message=decision.message,
            healthy=outcome.healthy,
            started=outcome.started,
            promoted=outcome.promoted,
            stable_spec=outcome.stable_spec,
            stable_generation=outcome.stable_generation,
        )
        self.history.append(decision)
        self.samples.append(self.count())
        return decision

    def count(self) -> dict[str, int]:
        """Per hash: instances; and "healthy": every instance healthy now."""
        out: dict[str, int] = {"healthy": len(self.healthy_since())}
        for n in self.units:
            h = n.split(":")[2]
            out[h] = out.get(h, 0) + 1
        return out


def deployed() -> GatedWorld:
    world = GatedWorld()
    world.run(OLD, until="steady")
    assert world.record is not None and world.record.stable_spec  # the healthy spec is kept
    world.samples.clear()
    world.history.clear()
    return world


def test_a_bad_canary_is_destroyed_and_the_old_instances_never_stop() -> None:
    world = deployed()
    old, bad = spec_hash6(OLD), spec_hash6(BAD)
    world.unhealthy.add(bad)
    start = world.now
    world.run(BAD, until="reverted", seconds=start + 200)
    created = [a.name for d in world.history for a in d.actions if isinstance(a, Create)]
    assert len([n for n in created if f":{bad}:" in n]) == 1  # exactly one canary
    # the 4 old instances ran (launched, never stopped) the whole time
    assert all(s.get(old) == 4 and s["healthy"] >= 4 for s in world.samples)
    assert all(u.desired_state == "launched" for u in world.units.values())
    assert not [n for n in world.units if f":{bad}:" in n]  # the canary is gone
    # within healthyDeadline (30 s) and a few passes
    assert world.now - start <= 30 + 5
    assert world.failed_hash == bad
    assert "failed health" in world.history[-1].message
    # pinned: the failed hash is not retried
    for _ in range(50):
        world.now += 1
        assert world.step(BAD).phase == "reverted"
    assert not [n for n in world.units if f":{bad}:" in n]


def test_a_good_canary_is_promoted_and_every_instance_replaced() -> None:
    world = deployed()
    good = spec_hash6(GOOD)
    world.samples.clear()
    world.run(GOOD, until="steady", seconds=world.now + 500)
    assert world.count() == {"healthy": 4, good: 4}
    phases = [d.phase for d in world.history]
    assert "canary" in phases and "rolling" in phases
    assert min(s["healthy"] for s in world.samples) >= 4  # never fewer than 4 healthy
    healthy_now = world.healthy_since()
    assert all(n in healthy_now for n in world.units)


def test_max_parallel_bounds_the_new_instances_not_yet_healthy() -> None:
    world = deployed()
    good = spec_hash6(GOOD)
    peak = 0
    while world.now < 1000:
        decision = world.step(GOOD)
        healthy = world.healthy_since()
        waiting = [
            n
            for n in world.units
            if f":{good}:" in n and not (n in healthy and world.now - healthy[n] >= 5)
        ]
        peak = max(peak, len(waiting))
        if decision.phase == "steady":
            break
        world.now += 1
    assert decision.phase == "steady"
    assert peak == 2  # maxParallel: 2


def test_canaries_wait_for_a_promotion_by_hand() -> None:
    world = deployed()
    world.policy = UnitPolicy(RolloutPolicy(canary=2, healthy_deadline=60, min_healthy_time=1))
    good = spec_hash6(GOOD)
    for _ in range(40):
        decision = world.step(GOOD)
        world.now += 1
    assert decision.phase == "canary" and "kaylee rollout promote web" in decision.message
    assert world.count()[good] == 2 and world.count()[spec_hash6(OLD)] == 4
    world.control = Control(promote=good)
    world.run(GOOD, until="steady", seconds=world.now + 500)
    assert world.count() == {"healthy": 4, good: 4}


def test_a_newer_spec_preempts_a_failing_rollout_at_once() -> None:
    world = deployed()
    bad, good = spec_hash6(BAD), spec_hash6(GOOD)
    world.unhealthy.add(bad)
    for _ in range(5):
        world.step(BAD)
        world.now += 1
    assert world.count().get(bad) == 1
    decision = world.step(GOOD)  # the newer commit, long before the bad canary's deadline
    assert decision.hash6 == good
    world.run(GOOD, until="steady", seconds=world.now + 400)
    assert world.count() == {"healthy": 4, good: 4}
    assert world.now < 200


def test_a_missed_progress_deadline_reverts_to_full_count_of_the_old_spec() -> None:
    world = deployed()
    world.policy = UnitPolicy(
        RolloutPolicy(max_parallel=2, min_healthy_time=1, healthy_deadline=30, progress_deadline=40)
    )
    old, slow = spec_hash6(OLD), spec_hash6(GOOD)
    world.delays[slow] = 25  # each new instance takes 25 s: 4 of them cannot make 40 s
    world.run(GOOD, until="reverted", seconds=world.now + 300)
    assert world.count() == {"healthy": 4, old: 4}
    assert min(s["healthy"] for s in world.samples) >= 4  # new ones kept until old are back
    assert "did not finish within 40s" in world.history[-1].message
    assert world.failed_hash == slow


def test_a_paused_rollout_starts_and_retires_nothing() -> None:
    world = deployed()
    world.control = Control(paused=True)
    decision = world.step(GOOD)
    assert decision.phase == "paused" and decision.actions == ()
    world.control = Control()
    assert world.step(GOOD).actions  # resumed: the canary starts


# -- trials: random rollouts, preemptions and failovers, the invariants counted ----------

TRIALS = int(__import__("os").environ.get("KAYLEE_GATED_TRIALS", "300"))


def trial(seed: int) -> str:
    """One random scenario; "" when every invariant held, else what broke."""
    import random

    rnd = random.Random(seed)
    world = GatedWorld(start_delay=rnd.choice([0.0, 1.0, 3.0]))
    world.run(OLD, until="steady")
    world.samples.clear()
    images = [f"docker://web:{n}" for n in range(2, 2 + rnd.randint(1, 3))]
    specs = [dataclasses.replace(OLD, apps=(App(i),)) for i in images]
    for s in specs:
        h = spec_hash6(s)
        if rnd.random() < 0.4:
            world.unhealthy.add(h)
        # a healthy spec always can make its deadlines (start + minHealthyTime < 15 s)
        world.delays[h] = rnd.choice([0.0, 2.0, 8.0])
    deadline = rnd.choice([15.0, 30.0])
    world.policy = UnitPolicy(
        RolloutPolicy(
            canary=rnd.randint(0, 2),
            auto_promote=True,
            max_parallel=rnd.randint(1, 3),
            min_healthy_time=rnd.choice([0.0, 2.0, 5.0]),
            healthy_deadline=deadline,
            progress_deadline=rnd.choice([None, 300.0]),
        )
    )
    # the commits arrive at random times; the leader may die at random passes
    arrivals = sorted(rnd.uniform(0, 40) for _ in specs)
    start = world.now
    current = OLD
    for _ in range(400):
        for s, at in zip(specs, arrivals, strict=True):
            if (
                world.now - start >= at
                and current is not s
                and specs.index(s) > (specs.index(current) if current in specs else -1)
            ):
                current = s
        if rnd.random() < 0.02:
            world.timers = type(world.timers)()  # a failover: the new leader's memory is empty
        world.step(current)
        if world.samples[-1]["healthy"] < 4:
            return f"seed {seed}: {world.samples[-1]['healthy']} healthy at t={world.now}"
        world.now += 1
        if world.now - start > max(arrivals) + 5 and world.history[-1].phase in (
            "steady",
            "reverted",
            "failed",
        ):
            break
    last = world.history[-1]
    h = spec_hash6(current)
    if h in world.unhealthy:
        return "" if last.phase in ("reverted", "failed") else f"seed {seed}: {last}"
    if last.phase != "steady" or world.count().get(h) != 4:
        return f"seed {seed}: ended {last.phase} with {world.count()}"
    return ""


def test_random_rollouts_never_drop_below_the_healthy_count() -> None:
    broken = [why for seed in range(TRIALS) if (why := trial(seed))]
    assert broken == [], f"{len(broken)}/{TRIALS} trials broke: {broken[:3]}"
