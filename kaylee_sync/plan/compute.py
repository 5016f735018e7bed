"""The planner: what a commit wants vs what etcd holds → one Plan, decided in one place.

Every rule the team decided about syncing (design.md, "Semantics the team has decided")
that can be decided without I/O lives here, so that ``kaylee-sync plan``, the daemon and
the tests agree by construction:

- an invalid file blocks only its own unit, which keeps its etcd entry (the inventory
  maps the file to its unit even when the file no longer parses);
- only units the inventory lists are deleted, and units created outside Git are never
  shown or touched;
- the prune guard (:mod:`kaylee_sync.plan.prune`) refuses a commit that would delete
  every managed unit or more than its budget, and keeps refusing until released; the
  other changes still go ahead;
- drift (a managed unit changed by hand) is put back, and said so;
- a suspended unit is left alone but shown, with what Git would have done; a suspension
  that has run out no longer counts.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from kaylee_sync.errors import SpecError
from kaylee_sync.plan.diffs import Diff
from kaylee_sync.plan.effect import create_effect, delete_effect, update_effect
from kaylee_sync.plan.model import (
    Action,
    ActualState,
    ActualUnit,
    DesiredState,
    DesiredUnit,
    FileProblem,
    FleetEffect,
    InventoryEntry,
    Plan,
    PlanEntry,
    PlanIndex,
    Suspension,
)
from kaylee_sync.plan.prune import DEFAULT_LIMITS, PruneLimits, Verdict, judge
from kaylee_sync.render import DEFAULT_UNIT_PREFIX
from kaylee_sync.spec import parse_stored_policy

# What Git would do to a unit, said of a suspended one.
_GIT_WOULD = {
    Action.CREATE: "Git would create it",
    Action.UPDATE: "Git would update it",
    Action.DELETE: "Git would delete it",
    Action.UNCHANGED: "Git agrees with it",
    Action.POLICY: "Git would change its rollout policy",
}


def make_plan(
    desired: DesiredState,
    actual: ActualState,
    *,
    now: float,
    prune: PruneLimits = DEFAULT_LIMITS,
    unit_prefix: str = DEFAULT_UNIT_PREFIX,
    generations: Mapping[str, int] | None = None,
    previous: Plan | None = None,
    touched: Collection[str] | None = None,
) -> Plan:
    """The plan that makes etcd follow ``desired``; ``now`` (unix seconds) ends suspensions,
    ``prune`` is the prune guard's budget (or its lifting).

    With ``previous`` (the plan of the last sync) and ``touched`` (the units whose file,
    etcd keys, inventory entry, suspension or restart generation changed since it was
    made), only those units and the entries of ``previous`` that were not UNCHANGED are
    decided anew; every other entry is taken from ``previous`` as it is. The result is
    the same plan either way (a test holds the two to that); the caller must be sure of
    ``touched``, and passes None when it is not.
    """
    planner = _Planner(desired, actual, now, unit_prefix, generations or {})
    entries = planner.invalid_entries()
    if previous is None or touched is None:
        kept: dict[str, PlanEntry] = {}
        redo: Collection[str] = desired.units.keys()
    else:
        kept = previous.index.by_name.copy()  # copy(): fast even once entries were replaced
        redo = {*touched, *(e.name for e in previous.index.notable)}
        for name in (*redo, *entries):
            kept.pop(name, None)
    for name in redo:
        unit = desired.units.get(name)
        if unit is not None and name not in entries:  # an invalid file claiming it wins
            entries[name] = planner.desired_entry(unit)
    if previous is None or touched is None:
        managed = planner.managed(None, ())
        deletions = planner.deletions(managed, managed, kept.keys(), entries.keys())
    else:
        # A unit's managed status changes only with its inventory entry or its etcd key,
        # and either puts it in ``touched``: a unit to delete is among the names redone.
        managed = planner.managed(previous.index.managed, redo)
        deletions = planner.deletions(managed, redo, entries.keys())
    verdict = planner.prune_verdict(deletions, entries.values(), prune, managed)
    for name, inv in deletions.items():
        entries[name] = planner.delete_entry(name, inv, verdict)
    if previous is not None and touched is not None:
        everything = kept  # the last use of kept: no second copy of 10,000 entries
        everything.update(entries)
        before = previous.index.by_name
        # The names stay the same unless a name redone came or went (every other name is
        # in both plans, as kept).
        same = all((n in entries) == (n in before) for n in (*redo, *entries))
        notable = tuple(
            entries[n] for n in sorted(entries) if entries[n].action != Action.UNCHANGED
        )
        positions: dict[str, int] | None = None
        if same:  # the entries decided anew go to their places; no lookup of the rest
            positions = previous.positions
            slots = list(previous.entries)
            for name, entry in entries.items():
                slots[positions[name]] = entry
            ordered = tuple(slots)
        else:
            ordered = tuple(map(everything.__getitem__, sorted(everything)))
        recomputed = frozenset({*entries, *redo})
        known = PlanIndex(everything, notable, recomputed, positions, managed)
    else:
        ordered = tuple(entries[name] for name in sorted(entries))
        known = PlanIndex.of(ordered, managed)
    return Plan(
        desired=desired,
        against=actual.source,
        entries=ordered,
        problems=desired.problems,
        prune_refused=verdict.refused,
        prune_hold=verdict.hold,
        prune_overridden=verdict.overridden,
        prune_released=verdict.released,
        state_index=actual.state_index,
        inventory_revision=actual.inventory_revision,
        expired_suspensions=tuple(sorted(n for n, s in actual.suspended.items() if s.expired(now))),
        known=known,
    )


def short_commit(commit: str) -> str:
    """The 7-digit form of a commit, or "worktree" for a state read from a work tree."""
    return commit[:7] if commit else "worktree"


def format_time(t: float) -> str:
    """A unix time for people, in UTC so that a plan does not depend on the machine."""
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def suspension_text(s: Suspension) -> str:
    """Who suspended a unit, until when and why: "suspended by alice until resumed: hotfix"."""
    until = f"until {format_time(s.until)}" if s.until is not None else "until resumed"
    text = f"suspended by {s.who or 'someone'} {until}"
    return f"{text}: {s.reason}" if s.reason else text


@dataclass
class _Planner:
    """The facts one plan is made from, and the rule for each kind of entry."""

    desired: DesiredState
    actual: ActualState
    now: float
    prefix: str
    generations: Mapping[str, int]

    def __post_init__(self) -> None:
        self.inventory: dict[str, InventoryEntry] = (
            self.actual.inventory.units if self.actual.inventory is not None else {}
        )
        self.suspended = {n: s for n, s in self.actual.suspended.items() if not s.expired(self.now)}
        self.commit = short_commit(self.desired.commit)

    @functools.cached_property
    def by_path(self) -> dict[str, str]:
        """Unit names by the path of their file (for deletions only: built when needed)."""
        return {u.path: u.name for u in self.desired.units.values()}

    # -- labels and shared parts -------------------------------------------------------

    def _diff(
        self, name: str, old: str | None, new: str | None, path: str, note: str = ""
    ) -> Diff | str:
        if old == new:  # most entries of a plan: nothing to keep for them
            return ""
        old_label = f"{self.actual.source} units/{name}"
        return Diff(old, new, old_label, f"{path} @ {self.commit}{note}")

    def _suspended(self, name: str, would: Action, entry: PlanEntry) -> PlanEntry:
        """``entry`` turned into the SUSPENDED entry it becomes while the unit is suspended."""
        s = self.suspended[name]
        return PlanEntry(
            name=name,
            action=Action.SUSPENDED,
            path=entry.path,
            reason=f"{_GIT_WOULD[would]}, but it is {suspension_text(s)}",
            old_value=entry.old_value,
            new_value=entry.new_value,
            mod_revision=entry.mod_revision,
            diff_source=entry.diff_source,
            effect=None,
        )

    # -- invalid files -----------------------------------------------------------------

    def invalid_entries(self) -> dict[str, PlanEntry]:
        """An INVALID entry for each unit an invalid file belongs to (by name or inventory)."""
        if not self.desired.problems:
            return {}
        by_path: dict[str, list[str]] = {}
        for name, inv in self.inventory.items():
            by_path.setdefault(inv.path, []).append(name)
        owners: dict[str, list[FileProblem]] = {}
        for problem in self.desired.problems:
            names = [problem.name] if problem.name else []
            # The unit the file used to define keeps its entry too, unless another (valid)
            # file defines that unit now (a file renamed or split).
            names += [
                n
                for n in by_path.get(problem.path, ())
                if n != problem.name and n not in self.desired.units
            ]
            for name in names:
                owners.setdefault(name, []).append(problem)
        return {name: self._invalid_entry(name, problems) for name, problems in owners.items()}

    def _invalid_entry(self, name: str, problems: list[FileProblem]) -> PlanEntry:
        paths = sorted({p.path for p in problems})
        if len(paths) == 1:
            files = f"{paths[0]} is invalid"
        elif len(paths) == 2:
            files = f"{paths[0]} and {paths[1]} are invalid"
        else:
            files = f"{paths[0]} and {len(paths) - 1} other files are invalid"
        current = self.actual.units.get(name)
        reason = f"{files}; units/{name} is " + ("left as it is" if current else "not created")
        if name in self.suspended:
            reason += f" (it is also {suspension_text(self.suspended[name])})"
        return PlanEntry(
            name=name,
            action=Action.INVALID,
            path=paths[0],
            reason=reason,
            old_value=current.value if current else None,
            new_value=None,
            mod_revision=current.mod_revision if current else 0,
            diff_source="",
            effect=None,
            issues=tuple(issue for p in problems for issue in p.issues),
        )

    # -- units the commit has ----------------------------------------------------------

    def desired_entry(self, unit: DesiredUnit) -> PlanEntry:
        name = unit.name
        current = self.actual.units.get(name)
        # a policy left behind by a unit deleted by hand is replaced, guarded like any other
        orphan = self.actual.orphan_policies.get(name, ("", 0))
        generation = self.generations.get(name, 0)
        effect = None
        if current is None:
            action, reason = Action.CREATE, self._create_reason(unit)
            effect = create_effect(unit.spec, self.prefix, generation)
        elif current.value == unit.value and current.policy != unit.policy:
            action, reason = Action.POLICY, _policy_reason(current.policy, unit.policy)
            effect = FleetEffect("none: only the rollout policy changes, no instance restarts")
        elif current.value == unit.value:
            action, reason = Action.UNCHANGED, "unchanged"
        else:
            action, reason = Action.UPDATE, self._update_reason(unit)
            if current.reverted:
                reason += (
                    f"; last rollout of {current.reverted} failed health and was reverted; "
                    "this change retries it"
                )
            effect = _gated(
                update_effect(current.value, unit.spec, name, self.prefix, generation),
                unit.policy,
            )
        old = current.value if current else None
        entry = PlanEntry(
            name=name,
            action=action,
            path=unit.path,
            reason=reason,
            old_value=old,
            new_value=unit.value,
            mod_revision=current.mod_revision if current else 0,
            diff_source=self._policy_diff(name, current, unit)
            if action == Action.POLICY and current is not None
            else self._diff(name, old, unit.value, unit.path),
            effect=effect,
            old_policy=current.policy if current else orphan[0],
            new_policy=unit.policy,
            policy_revision=current.policy_revision if current else orphan[1],
        )
        return self._suspended(name, action, entry) if name in self.suspended else entry

    def _policy_diff(self, name: str, current: ActualUnit, unit: DesiredUnit) -> Diff:
        old_label = f"{self.actual.source} policy/{name}"
        return Diff(
            current.policy or None,
            unit.policy or None,
            old_label,
            f"{unit.path} @ {self.commit} (rollout: and health:)",
        )

    def _create_reason(self, unit: DesiredUnit) -> str:
        inv = self.inventory.get(unit.name)
        if inv is None:
            return "new file"
        if inv.blob == unit.blob:
            return (
                f"drift: units/{unit.name} is missing in etcd (deleted outside Git, or an "
                "earlier sync stopped half way); putting it back"
            )
        return f"file changed (units/{unit.name} was missing in etcd)"

    def _update_reason(self, unit: DesiredUnit) -> str:
        inv = self.inventory.get(unit.name)
        if inv is None:
            return "takes over a unit created outside Git"
        if inv.blob == unit.blob:
            return f"drift: units/{unit.name} was changed in etcd outside Git; putting it back"
        return "file changed"

    # -- deletions and the prune guards ------------------------------------------------

    def managed(self, before: AbstractSet[str] | None, redo: Collection[str]) -> AbstractSet[str]:
        """Units the inventory lists that are in etcd: found anew (``before`` None), or
        ``before`` (a previous plan's) corrected for the names ``redo``."""
        inventory, units = self.inventory, self.actual.units
        if before is None:
            return inventory.keys() & units.keys()
        now = set(before)
        for name in redo:
            if name in inventory and name in units:
                now.add(name)
            else:
                now.discard(name)
        return now

    def deletions(
        self, managed: AbstractSet[str], among: Iterable[str], *planned: Collection[str]
    ) -> dict[str, InventoryEntry]:
        """Managed units ``among`` those given that no entry planned keeps (suspended
        ones included)."""
        gone = {name for name in among if name in managed}.difference(*planned)
        return {name: self.inventory[name] for name in sorted(gone)}

    def prune_verdict(
        self,
        deletions: Mapping[str, InventoryEntry],
        planned: Iterable[PlanEntry],
        limits: PruneLimits,
        managed: AbstractSet[str],
    ) -> Verdict:
        """The prune guard's verdict (see :mod:`kaylee_sync.plan.prune`)."""
        # A managed unit whose file is invalid is neither deleted nor kept by the commit.
        invalid = sum(1 for e in planned if e.action == Action.INVALID and e.name in managed)
        return judge(
            deletions,
            suspended=self.suspended.keys(),
            invalid=invalid,
            managed=len(managed),
            hold=self.actual.prune_hold,
            limits=limits,
            commit=self.desired.commit,
            now=self.now,
        )

    def delete_entry(self, name: str, inv: InventoryEntry, verdict: Verdict) -> PlanEntry:
        current = self.actual.units[name]
        # A file still there that now declares another unit is not "gone": say what happened.
        successor = self.by_path.get(inv.path)
        if successor is None:
            path, gone = None, f"{inv.path} was removed from Git"
        else:
            path, gone = inv.path, f"{inv.path} now declares units/{successor}"
        if verdict.overridden:
            gone += "; --allow-prune lifts the prune guard"
        entry = PlanEntry(
            name=name,
            action=Action.DELETE,
            path=path,
            reason=gone,
            old_value=current.value,
            new_value=None,
            mod_revision=current.mod_revision,
            diff_source=self._diff(name, current.value, None, inv.path, " (removed)"),
            effect=delete_effect(current.value, name, self.prefix, self.generations.get(name, 0)),
            old_policy=current.policy,
            policy_revision=current.policy_revision,
        )
        if name in self.suspended:
            return self._suspended(name, Action.DELETE, entry)
        if verdict.refused:
            return PlanEntry(
                name=name,
                action=Action.PRUNE_REFUSED,
                path=path,
                reason=f"{gone}, but the prune guard refused to delete it",
                old_value=entry.old_value,
                new_value=None,
                mod_revision=entry.mod_revision,
                diff_source=entry.diff_source,
                effect=None,
            )
        return entry


def _policy_reason(old: str, new: str) -> str:
    if not old:
        return "rollout policy added (rollout:/health:); nothing restarts"
    if not new:
        return "rollout policy removed (rollout:/health:); nothing restarts"
    return "rollout policy changed (rollout:/health:); nothing restarts"


def _gated(effect: FleetEffect, policy_json: str) -> FleetEffect:
    """A replacement as the unit's rollout policy will run it (not "one at a time")."""
    if not policy_json or not effect.summary.endswith(", one at a time"):
        return effect
    try:
        rollout = parse_stored_policy(policy_json, "policy").rollout
    except SpecError:
        return effect
    how = f"{rollout.max_parallel} at a time" if rollout.max_parallel > 1 else "one at a time"
    if rollout.canary:
        how = f"after {rollout.canary} {'canary' if rollout.canary == 1 else 'canaries'}, {how}"
    summary = effect.summary.removesuffix("one at a time") + how + ", health-gated"
    return replace(effect, summary=summary)
