"""Health-gated rollouts: the next steps for a replica unit that has a rollout policy.

``decide`` (decide.py) rolls units without a ``rollout:``/``health:`` section exactly as
before. A unit with one comes here, where "good" means *healthy* — running in fleet and
passing its checks (health.checks) for ``minHealthyTime`` — and the policy says how fast
and how safely to go (Nomad's ``update`` block, spec/policy.py):

- **canaries**: ``canary`` new instances start beside the old ones (indexes 1..canary);
  nothing old stops until they are healthy and promoted (``autoPromote``, or ``kaylee
  rollout promote``, which names the hash it promotes);
- **rolling**: at most ``maxParallel`` new instances are not yet healthy at any time; an
  old instance is retired only for a new one that is healthy, so the unit never has fewer
  healthy instances than it asks for;
- **deadlines**: a new instance not healthy within ``healthyDeadline`` of its creation,
  or a rollout not done within ``progressDeadline`` of its start, fails the rollout;
- **revert** (``autoRevert``, the default): the failed hash is pinned, its instances are
  stopped and destroyed, and the last healthy spec — kept in the rollout record, so a new
  leader knows it — is brought back to full count. Without ``autoRevert`` the late
  instance is stopped and the old ones kept, as without a policy;
- **preemption**: a newer spec is simply the new target; instances of the rollout it
  overtakes are old ones like any other (retired when not serving, or as new ones become
  healthy), so nothing waits for the older rollout's deadlines;
- **pause**: no new instance starts and none is retired until resumed.

Pure like decide(): same facts, same decision, on any leader.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from kaylee_sync.fleet.model import LAUNCHED, FleetUnit
from kaylee_sync.health.rollout import Phase, RolloutReport
from kaylee_sync.render import UnitName
from kaylee_sync.scheduler.decide import (
    Decision,
    Launch,
    Stop,
    Timers,
    Timing,
    UnitView,
    _create,
    _Step,
    hold_unsure,
    identity_hash,
    is_running,
    serving,
    unsure,
)
from kaylee_sync.spec.codec import to_json
from kaylee_sync.spec.model import UnitSpec
from kaylee_sync.spec.policy import UnitPolicy


@dataclass(frozen=True)
class Control:
    """What operators asked for (``kaylee rollout pause|resume|promote``)."""

    paused: bool = False
    promote: str = ""  # the hash6 whose canaries were promoted by hand


@dataclass(frozen=True)
class Gate:
    """What a health-gated decision needs besides the UnitView."""

    policy: UnitPolicy
    healthy_since: Mapping[str, float]  # fleet unit -> since when healthy (absent: not)
    record: RolloutReport | None  # the unit's last report: started, promoted, stable spec
    control: Control
    stable: UnitSpec | None  # the last healthy spec (from the record), None if unknown
    wall_now: float  # unix time, for the record's ``started``
    failing: frozenset[str] = frozenset()  # fleet units known to fail their checks now


@dataclass(frozen=True)
class Outcome:
    """What the record keeps besides the Decision (health.rollout.RolloutReport fields)."""

    healthy: int = 0
    started: float | None = None
    promoted: bool = False
    stable_spec: str = ""
    stable_generation: int = 0
    # New instances not yet healthy: their creation times go in the record (not only
    # those not yet running), so a new leader's healthyDeadline counts from creation.
    waiting: tuple[str, ...] = ()


def decide_gated(
    view: UnitView, gate: Gate, timers: Timers, now: float, timing: Timing
) -> tuple[Decision, Outcome]:
    """The next steps; like decide(), nothing is stopped while a state is unknown."""
    decision, outcome = _decide_gated(view, gate, timers, now, timing)
    return hold_unsure(view, decision), outcome


def _decide_gated(
    view: UnitView, gate: Gate, timers: Timers, now: float, timing: Timing
) -> tuple[Decision, Outcome]:
    assert view.spec is not None
    spec, rollout = view.spec, gate.policy.rollout
    groups: dict[str, list[tuple[UnitName, FleetUnit]]] = {}
    for parsed, unit in view.units:
        groups.setdefault(parsed.hash6, []).append((parsed, unit))
    ident = identity_hash(spec, view.generation, groups)
    kept, surplus = _by_index(groups.get(ident, []), spec.instance_count)
    old = [u for h, members in sorted(groups.items()) if h != ident for _, u in members]
    step = _Step(view, spec, ident, kept, timers, now, timing, judge=not unsure(view))
    for unit in surplus:
        step.wind_down(unit)

    min_healthy = timing.stable if rollout.min_healthy_time is None else rollout.min_healthy_time
    deadline = rollout.healthy_deadline or timing.rollout_timeout
    record = gate.record
    same = record is not None and record.hash6 == ident
    outcome = Outcome(
        started=record.started if same and record is not None else gate.wall_now,
        promoted=bool(same and record is not None and record.promoted)
        or gate.control.promote == ident,
        stable_spec=record.stable_spec if record is not None else "",
        stable_generation=record.stable_generation if record is not None else 0,
    )

    def healthy(unit: FleetUnit) -> bool:
        since = gate.healthy_since.get(unit.name)
        return unit.desired_state == LAUNCHED and since is not None and now - since >= min_healthy

    new = [u for _, u in kept.values()]
    good = [u for u in new if healthy(u)]
    waiting = tuple(u.name for u in new if not healthy(u))
    outcome = replace(outcome, healthy=len(good), waiting=waiting)

    if view.failed_hash and view.failed_hash == ident:
        return _revert(step, gate, old, outcome)

    want = spec.instance_count
    missing = [i for i in range(1, want + 1) if i not in kept]
    if not old:
        for unit in new:
            if unit.desired_state != LAUNCHED:
                step.actions.append(Launch(unit.name))
        step.actions.extend(_create(step, missing))
        if not step.actions and len(good) == want:
            steady = replace(outcome, stable_spec=to_json(spec), stable_generation=view.generation)
            return _decision(step, Phase.STEADY, ""), steady
        return (step.overdue() or _decision(step, Phase.DEPLOYING, "")), outcome

    pending = [u for u in new if not healthy(u)]
    late = [u for u in pending if now - timers.created_at.get(u.name, now) > deadline]
    started = outcome.started if outcome.started is not None else gate.wall_now
    overdue = rollout.progress_deadline and gate.wall_now - started > rollout.progress_deadline
    if (late or overdue) and not gate.control.paused and step.judge:
        why = (
            f"{late[0].name} was not healthy within {deadline:g}s"
            if late
            else f"the rollout did not finish within {rollout.progress_deadline:g}s"
        )
        if rollout.auto_revert and outcome.stable_spec:
            step.actions.clear()
            return _revert(step, gate, old, outcome, why)
        step.actions.extend(Stop(u.name) for u in late or pending if u.desired_state == LAUNCHED)
        message = f"{why}; stopped it and kept the old instances"
        return _decision(step, Phase.FAILED, message, failed_hash=ident), outcome

    # Unknown is not dead (decide.py): an old instance without a state, or whose checks
    # have not run yet (a new leader's prober starts afresh), counts as serving; one that
    # fleet says is down, or that fails its checks, does not.
    old_serving = [
        u
        for u in old
        if u.desired_state == LAUNCHED
        and serving(u, step.states(u)) is not False
        and u.name not in gate.failing
    ]
    for unit in old:
        if unit not in old_serving:  # not serving anything (e.g. an overtaken rollout's)
            step.wind_down(unit)
    if gate.control.paused:
        message = f"paused by an operator: {len(good)}/{want} new instances healthy"
        return _decision(step, Phase.PAUSED, message), outcome

    canary = min(rollout.canary, want)
    if canary and not outcome.promoted:
        step.actions.extend(_create(step, [i for i in range(1, canary + 1) if i not in kept]))
        canaries = [kept[i][1] for i in range(1, canary + 1) if i in kept]
        ready = len(canaries) == canary and all(healthy(u) for u in canaries)
        if not ready:
            healthy_canaries = sum(1 for u in canaries if healthy(u))
            message = (
                f"{healthy_canaries}/{canary} canaries healthy; {len(old_serving)} old serving"
            )
            return _decision(step, Phase.CANARY, message), outcome
        if not rollout.auto_promote:
            message = f"{canary} canaries healthy; waiting for `kaylee rollout promote {view.name}`"
            return _decision(step, Phase.CANARY, message), outcome
        outcome = replace(outcome, promoted=True)

    # Rolling: retire one old instance for each healthy new one beyond the count, and
    # keep at most maxParallel new instances on their way to healthy.
    excess = len(good) + len(old_serving) - want
    for unit in sorted(old_serving, key=lambda u: u.name, reverse=True)[: max(0, excess)]:
        step.wind_down(unit)
    room = rollout.max_parallel - len(pending)
    if room > 0:
        step.actions.extend(_create(step, missing[:room]))
    message = f"{len(good)}/{want} new instances healthy, {len(old_serving)} old still serving"
    return _decision(step, Phase.ROLLING, message), outcome


def _revert(
    step: _Step,
    gate: Gate,
    old: list[FleetUnit],
    outcome: Outcome,
    why: str = "",
) -> tuple[Decision, Outcome]:
    """Destroy the failed hash's instances; bring the last healthy spec back to full count.

    Instances of other specs that serve (healthy now: the failed one's, or an overtaken
    rollout's) go only as the last healthy spec's come back healthy, so a revert never
    leaves the unit with fewer healthy instances than it asks for.
    """
    view, ident = step.view, step.ident
    stable = gate.stable
    new = [u for _, u in step.kept.values()]
    if stable is None:
        for unit in new:
            step.wind_down(unit)
        message = (
            f"rollout of {ident} failed{': ' + why if why else ''}; no earlier healthy spec "
            "is known, so the old instances were kept"
        )
        return _decision(step, Phase.FAILED, message, failed_hash=ident), outcome
    groups: dict[str, list[tuple[UnitName, FleetUnit]]] = {}
    for parsed, unit in view.units:
        groups.setdefault(parsed.hash6, []).append((parsed, unit))
    groups.pop(ident, None)
    stable_hash = identity_hash(stable, outcome.stable_generation, groups)
    kept, surplus = _by_index(groups.get(stable_hash, []), stable.instance_count)
    back = _Step(view, stable, stable_hash, kept, step.timers, step.now, step.timing)
    keep = {u.name for _, u in kept.values()}
    others = [*new, *surplus, *(u for u in old if u.name not in keep)]
    serving_others = [
        u for u in others if u.desired_state == LAUNCHED and u.name in gate.healthy_since
    ]
    for unit in others:
        if unit not in serving_others:
            step.wind_down(unit)
    missing = [i for i in range(1, stable.instance_count + 1) if i not in kept]
    step.actions.extend(_create(back, missing))
    back_up = sum(1 for _, u in kept.values() if u.name in gate.healthy_since)
    excess = len(serving_others) + back_up - stable.instance_count
    for unit in sorted(serving_others, key=lambda u: u.name)[: max(0, excess)]:
        step.wind_down(unit)
    for _, unit in kept.values():
        if unit.desired_state != LAUNCHED:
            step.actions.append(Launch(unit.name))
    running = sum(1 for _, u in kept.values() if is_running(step.states(u)))
    done = not step.actions and not serving_others and running == stable.instance_count
    detail = f" ({why})" if why else ""
    message = (
        f"last rollout of {view.name}@{ident} failed health{detail} and was reverted to "
        f"{stable_hash}; a new commit or `kaylee restart {view.name}` retries"
    )
    record = gate.record
    # Later passes keep the first pass's reason (the late instance is gone by then).
    first = f"last rollout of {view.name}@{ident} failed health"
    if not why and record is not None and record.message.startswith(first):
        message = record.message
    phase = Phase.REVERTED if done else Phase.REVERTING
    decision = _decision(step, phase, message, failed_hash=ident)
    return replace(decision, running=running), replace(outcome, promoted=False)


def _by_index(
    members: list[tuple[UnitName, FleetUnit]], want: int
) -> tuple[dict[int, tuple[UnitName, FleetUnit]], list[FleetUnit]]:
    kept: dict[int, tuple[UnitName, FleetUnit]] = {}
    surplus: list[FleetUnit] = []
    for parsed, unit in sorted(members, key=lambda pu: (pu[0].index, pu[1].name)):
        if parsed.index <= want and parsed.index not in kept:
            kept[parsed.index] = (parsed, unit)
        else:
            surplus.append(unit)
    return kept, surplus


def _decision(step: _Step, phase: Phase, message: str, failed_hash: str = "") -> Decision:
    return step.decision(phase, message, failed_hash=failed_hash)
