"""What to do next for one Kaylee unit: a pure function of its spec and fleet's state.

The scheduler is level-triggered: on every pass it looks at the spec (from etcd), at
the fleet units carrying the unit's name and at the states agents report, and decides
the next *non-blocking* steps — create, launch, stop, destroy — or to wait. Nothing
here sleeps or does I/O, so a slow rollout never holds up another unit, any leader
(after a failover too) reaches the same decision from the same facts, and every rule
is tested without a server.

Vocabulary:

- *identity hash*: the hash6 the unit's fleet units should carry. Normally the spec
  hash; but when a group of running units differs from the spec **only in replicas**
  (the spec hash covers ``replicas``), that group keeps its hash and is scaled in place
  — no needless restarts.
- *current* units carry the identity hash; *old* units carry any other hash.
- a unit is *stable* once fleet has reported it ``running`` for ``stable`` seconds.

Rules (design.md "Rollouts"):

- replica units roll one at a time: start one new instance, wait until it is stable,
  then stop one old one; repeat. Running instances never drop below what was there.
  A new instance not stable within ``rollout_timeout`` is stopped, the rollout is marked
  failed for that hash, and the old instances keep running.
- non-replica and global units are replaced whole: stop and destroy the old first.
- destroying is: target-state ``loaded``, wait for ``dead`` (≤ ``destroy_timeout``),
  then destroy.
- a deleted spec destroys all of its fleet units.

Unknown is not dead. fleet's unit states live under a 30 s TTL: after an etcd stall, a
partition or a failover they are missing for a while although the units run on. So a
launched unit with *no* reported state counts as serving for the rolling floor and is
never stopped or destroyed because of that absence; "not running" needs an agent to say
so (or fleet to have no machine for it). While the scheduler is *settling* (just
elected, or just recovered from a failed read: agents may not have republished yet), a
unit with a launched fleet unit that reports nothing gets no stop, no destroy and no
timeout judgement at all until its states are back or the settling time is over.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from kaylee_sync.fleet.model import INACTIVE, LAUNCHED, LOADED, FleetUnit, UnitState
from kaylee_sync.health import Phase
from kaylee_sync.render import UnitName, conflicts_for, render_options, slot_ids
from kaylee_sync.spec.codec import spec_hash6
from kaylee_sync.spec.model import UnitSpec
from kaylee_sync.unitfile import UnitOption

RUNNING = "running"
DEAD_SUB_STATES = frozenset({"dead", "failed"})
MAX_REPLICAS = 1000
_TRUTHY = frozenset({"true", "yes", "1", "on", "t"})  # fleet's spellings of Global=true


@dataclass(frozen=True)
class Timing:
    """The scheduler's clocks, in seconds (see SchedulerSettings for the defaults' why)."""

    stable: float = 10.0
    rollout_timeout: float = 300.0
    destroy_timeout: float = 30.0


@dataclass
class Timers:
    """What the leader remembers between passes (monotonic clock times).

    Losing it (a failover) is safe: every wait simply starts again.
    """

    running_since: dict[str, float] = field(default_factory=dict)
    created_at: dict[str, float] = field(default_factory=dict)
    stop_requested_at: dict[str, float] = field(default_factory=dict)

    def observe(self, units: Iterable[FleetUnit], running: Iterable[str], now: float) -> None:
        """Update the clocks from one look at fleet (call once per pass, before decide)."""
        names = {u.name for u in units}
        running_now = set(running)
        for name in running_now - self.running_since.keys():
            self.running_since[name] = now
        for name in list(self.running_since):
            if name not in running_now:
                del self.running_since[name]
        for name in names:
            self.created_at.setdefault(name, now)
        for table in (self.created_at, self.stop_requested_at):
            for name in list(table):
                if name not in names:
                    del table[name]


@dataclass(frozen=True)
class Create:
    name: str
    options: tuple[UnitOption, ...]


@dataclass(frozen=True)
class Launch:
    name: str


@dataclass(frozen=True)
class Stop:
    name: str


@dataclass(frozen=True)
class Destroy:
    name: str


Action = Create | Launch | Stop | Destroy


@dataclass(frozen=True)
class Decision:
    """The next steps for one unit, and how its rollout stands (for status and ``ls``)."""

    unit: str
    actions: tuple[Action, ...]
    phase: Phase
    hash6: str = ""
    desired: int = 0
    running: int = 0
    message: str = ""
    failed_hash: str = ""


@dataclass(frozen=True)
class UnitView:
    """Everything decide() needs to know about one Kaylee unit."""

    name: str
    prefix: str
    spec: UnitSpec | None
    generation: int
    units: Sequence[tuple[UnitName, FleetUnit]]
    states: Mapping[str, Sequence[UnitState]]
    failed_hash: str = ""  # a hash whose rollout failed: not retried until the spec changes
    settling: bool = False  # states may still be missing after an election or a stall


def is_running(states: Sequence[UnitState]) -> bool:
    """Running on every machine that reports it (a global unit reports many)."""
    return bool(states) and all(s.sub_state == RUNNING for s in states)


def is_dead(states: Sequence[UnitState]) -> bool:
    """Every machine that reports the unit reports it dead (nothing reported: unknown)."""
    return bool(states) and all(s.sub_state in DEAD_SUB_STATES for s in states)


def is_global(unit: FleetUnit) -> bool:
    return any(
        o.section == "X-Fleet" and o.name == "Global" and o.value.lower() in _TRUTHY
        for o in unit.options
    )


def serving(unit: FleetUnit, states: Sequence[UnitState]) -> bool | None:
    """Whether ``unit`` serves: True/False when fleet says so, None when unknown.

    Without a reported state, only a non-global unit that fleet has not placed on any
    machine is known not to run; anything else may well be running unseen.
    """
    if states:
        return is_running(states)
    if not unit.machine_id and not is_global(unit):
        return False
    return None


def known_dead(unit: FleetUnit, states: Sequence[UnitState]) -> bool:
    """Dead by fleet's word: every reported state is dead, or nothing is reported and
    fleet never placed the (non-global) unit on a machine."""
    return is_dead(states) if states else serving(unit, states) is False


def unsure(view: UnitView) -> bool:
    """Settling, and some launched fleet unit of this unit has no reported state."""
    return view.settling and any(
        unit.desired_state == LAUNCHED and not view.states.get(unit.name) for _, unit in view.units
    )


@functools.lru_cache(maxsize=4096)
def replica_variant(spec: UnitSpec, generation: int, candidate: str) -> bool:
    """True if ``candidate`` is the hash6 of this spec with only ``replicas`` changed."""
    if not spec.is_replica_unit:
        return False
    for replicas in range(1, MAX_REPLICAS + 1):
        if replicas != spec.replicas:
            variant = dataclasses.replace(spec, replicas=replicas)
            if spec_hash6(variant, generation) == candidate:
                return True
    return False


def identity_hash(spec: UnitSpec, generation: int, groups: Mapping[str, Sequence[object]]) -> str:
    own = spec_hash6(spec, generation)
    if own in groups:
        return own
    variants = [h for h in groups if replica_variant(spec, generation, h)]
    # Several variants (a scale during a scale): keep the biggest group, then the lowest hash.
    return min(variants, key=lambda h: (-len(groups[h]), h)) if variants else own


def decide(view: UnitView, timers: Timers, now: float, timing: Timing) -> Decision:
    """The next steps for one unit. ``timers`` must have observed this look at fleet."""
    return hold_unsure(view, _decide(view, timers, now, timing))


def hold_unsure(view: UnitView, decision: Decision) -> Decision:
    """``decision`` without stops and destroys while some instance's state is unknown."""
    if not unsure(view):
        return decision
    held = tuple(a for a in decision.actions if not isinstance(a, Stop | Destroy))
    if held == decision.actions:
        return decision
    return dataclasses.replace(
        decision,
        actions=held,
        message="waiting for fleet to report the state of every instance before stopping any",
    )


def _decide(view: UnitView, timers: Timers, now: float, timing: Timing) -> Decision:
    if view.spec is None:
        return _delete_all(view, timers, now, timing)
    spec = view.spec
    groups: dict[str, list[tuple[UnitName, FleetUnit]]] = {}
    for parsed, unit in view.units:
        groups.setdefault(parsed.hash6, []).append((parsed, unit))
    ident = identity_hash(spec, view.generation, groups)
    current = sorted(groups.get(ident, []), key=lambda pu: (pu[0].index, pu[1].name))
    old = [unit for h, members in sorted(groups.items()) if h != ident for _, unit in members]

    want = spec.instance_count
    kept: dict[int, tuple[UnitName, FleetUnit]] = {}
    surplus: list[FleetUnit] = []
    for parsed, unit in current:
        if parsed.index <= want and parsed.index not in kept:
            kept[parsed.index] = (parsed, unit)
        else:
            surplus.append(unit)
    step = _Step(view, spec, ident, kept, timers, now, timing, judge=not unsure(view))
    # Scale-down leftovers are wound down whatever else happens.
    for unit in surplus:
        step.wind_down(unit)

    if view.failed_hash and view.failed_hash == ident:
        # A failed rollout is not retried, and what runs is left running (the instance
        # that timed out was stopped when the rollout failed) until the spec changes.
        return step.decision(
            Phase.FAILED,
            f"rollout of {ident} failed; old instances kept (change or restart the unit)",
            failed_hash=ident,
        )
    for _, unit in kept.values():
        # A unit with no target state is a create cut short before its last write (a
        # crash, an etcd outage): launched whatever else happens, or a rollout would
        # wait for it forever. Units someone stopped by hand are launched again (drift)
        # once no rollout is under way.
        if unit.desired_state == INACTIVE or (not old and unit.desired_state != LAUNCHED):
            step.actions.append(Launch(unit.name))
    missing = [i for i in range(1, want + 1) if i not in kept]
    if spec.global_ or not spec.is_replica_unit:
        return _replace_whole(step, missing, old)
    return _roll(step, missing, old)


@dataclass
class _Step:
    """One decision in the making: the facts, and the actions gathered so far."""

    view: UnitView
    spec: UnitSpec
    ident: str
    kept: dict[int, tuple[UnitName, FleetUnit]]
    timers: Timers
    now: float
    timing: Timing
    judge: bool = True  # False while states are missing: no timeout is judged
    actions: list[Action] = field(default_factory=list)

    def states(self, unit: FleetUnit) -> Sequence[UnitState]:
        return self.view.states.get(unit.name, ())

    def stable(self, unit: FleetUnit) -> bool:
        since = self.timers.running_since.get(unit.name)
        return (
            unit.desired_state == LAUNCHED
            and since is not None
            and self.now - since >= self.timing.stable
        )

    def running(self) -> int:
        return sum(1 for _, u in self.kept.values() if is_running(self.states(u)))

    def wind_down(self, unit: FleetUnit) -> None:
        """Stop, then destroy once dead or after destroy_timeout (fleet issue #1000)."""
        self.actions.extend(_wind_down(unit, self.view.states, self.timers, self.now, self.timing))

    def overdue(self) -> Decision | None:
        """A "failed" report when an instance has not run within the rollout timeout and
        there is nothing older to fall back to (a first deploy or a scale-up).

        Not sticky, unlike a failed rollout: the instances stay launched — fleet keeps
        trying, and an image that is merely slow to pull still comes up — and the unit
        reports steady again once they run. It tells ``kaylee ls`` and ``run --wait``
        why nothing is running yet instead of "deploying" forever.
        """
        if not self.judge:
            return None
        for _, unit in self.kept.values():
            started = self.timers.created_at.get(unit.name, self.now)
            late = self.now - started > self.timing.rollout_timeout
            if late and not is_running(self.states(unit)):
                return self.decision(
                    Phase.FAILED,
                    f"{unit.name} did not run within {self.timing.rollout_timeout:.0f}s "
                    "(no older instances to keep; left launched, fleet keeps trying)",
                )
        return None

    def decision(self, phase: Phase, message: str = "", failed_hash: str = "") -> Decision:
        return Decision(
            unit=self.view.name,
            actions=tuple(self.actions),
            phase=phase,
            hash6=self.ident,
            desired=self.spec.instance_count,
            running=self.running(),
            message=message,
            failed_hash=failed_hash,
        )


def _roll(step: _Step, missing: list[int], old: list[FleetUnit]) -> Decision:
    want = step.spec.instance_count
    stable = [u for _, u in step.kept.values() if step.stable(u)]
    if not old:
        # First deploy or scale: every missing instance at once, nothing to protect.
        step.actions.extend(_create(step, missing))
        if not step.actions and step.running() == want:
            return step.decision(Phase.STEADY)
        return step.overdue() or step.decision(Phase.SCALING if step.kept else Phase.DEPLOYING)

    pending = [u for _, u in step.kept.values() if u not in stable]
    for unit in pending if step.judge else ():
        started = step.timers.created_at.get(unit.name, step.now)
        if step.now - started > step.timing.rollout_timeout:
            step.actions.append(Stop(unit.name))
            return step.decision(
                Phase.FAILED,
                f"{unit.name} did not run stably within {step.timing.rollout_timeout:.0f}s; "
                "stopped it and kept the old instances",
                failed_hash=step.ident,
            )

    # An old instance whose state is unknown counts as serving: absent is not dead.
    old_serving = [
        u for u in old if u.desired_state == LAUNCHED and serving(u, step.states(u)) is not False
    ]
    for unit in old:
        if unit not in old_serving:  # fleet says it serves nothing: nothing to protect
            step.wind_down(unit)
    if old_serving and len(stable) + len(old_serving) > want:
        # A new instance is stable (or the unit shrank): retire one old instance.
        step.wind_down(max(old_serving, key=lambda u: u.name))
    elif not pending and missing:
        step.actions.extend(_create(step, missing[:1]))
    return step.decision(
        Phase.ROLLING,
        f"{len(stable)}/{want} new instances stable, {len(old_serving)} old still serving",
    )


def _replace_whole(step: _Step, missing: list[int], old: list[FleetUnit]) -> Decision:
    if old:
        for unit in old:
            step.wind_down(unit)
        return step.decision(
            Phase.REPLACING, f"stopping {len(old)} old unit(s) before starting the new one"
        )
    step.actions.extend(_create(step, missing))
    if not step.actions and step.running() == step.spec.instance_count:
        return step.decision(Phase.STEADY)
    return step.overdue() or step.decision(Phase.DEPLOYING)


def _delete_all(view: UnitView, timers: Timers, now: float, timing: Timing) -> Decision:
    actions: list[Action] = []
    for _, unit in view.units:
        actions.extend(_wind_down(unit, view.states, timers, now, timing))
    return Decision(
        unit=view.name,
        actions=tuple(actions),
        phase=Phase.DELETING if view.units else Phase.DELETED,
        message=f"destroying {len(view.units)} fleet unit(s) of a deleted unit",
    )


def _wind_down(
    unit: FleetUnit,
    states: Mapping[str, Sequence[UnitState]],
    timers: Timers,
    now: float,
    timing: Timing,
) -> list[Action]:
    if unit.desired_state == LAUNCHED:
        return [Stop(unit.name)]
    asked = timers.stop_requested_at.setdefault(unit.name, now)
    if unit.desired_state != LOADED or known_dead(unit, states.get(unit.name, ())):
        # Dead by fleet's word (a reported dead state, or never placed on a machine);
        # a unit that reports nothing waits for the destroy timeout like a slow stop.
        return [Destroy(unit.name)]
    if now - asked >= timing.destroy_timeout:
        return [Destroy(unit.name)]
    return []


def _create(step: _Step, indexes: Sequence[int]) -> list[Action]:
    """Create units for ``indexes``, spreading them over the unit's conflict slots."""
    if not indexes:
        return []
    spec, ident, prefix = step.spec, step.ident, step.view.prefix
    slots = spec.slots
    canonical = slot_ids(spec.name, ident, slots)
    in_use: dict[str, int] = {}
    for parsed, _ in step.kept.values():
        in_use[parsed.slot] = in_use.get(parsed.slot, 0) + 1
    # The slot ids existing instances use (adopted from the Go Kaylee: random ones) come
    # first; fresh deterministic ids fill up to ``slots`` distinct ones.
    pool = list(in_use)
    pool += [s for s in canonical if s not in in_use][: max(0, slots - len(pool))]
    actions: list[Action] = []
    for index in indexes:
        preferred = canonical[index % slots]
        if not step.kept and preferred in pool:
            slot = preferred  # a fresh deploy: exactly render_units' names
        else:
            slot = min(pool, key=lambda s: (in_use.get(s, 0), pool.index(s)))
        in_use[slot] = in_use.get(slot, 0) + 1
        name = str(UnitName(prefix, spec.name, ident, slot, index))
        options = render_options(spec, name, conflicts_for(spec, prefix, ident, slot))
        actions.append(Create(name, options))
    return actions
