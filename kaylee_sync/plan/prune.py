"""The prune guard: how many deletions one commit may make, and how a refusal is held.

A deleted unit file destroys a running service, and the mistakes that delete many
files at once (a bad merge, a branch reset, a force-push of another history, a wrong
``--path``) look just like intended deletions. So deletions have a budget, and a commit
over it deletes nothing:

- **Every unit.** A commit that keeps no valid managed unit — every one deleted, or
  deleted and broken (an invalid file neither counts as a deletion nor as a unit kept)
  — is refused however large the budget.
- **The budget**: at most :data:`DEFAULT_MAX_PRUNE_PERCENT` % of the managed units
  (rounded down), but never less than :data:`PRUNE_FLOOR` — a small repository can
  still delete one unit per commit — and never more than :data:`DEFAULT_MAX_PRUNE`
  per commit. docs/gitops.md says why these numbers.

A refusal is **held** (:class:`~kaylee_sync.plan.model.PruneHold`, stored by sync):
the units stay owned and are not deleted at any later sync until Git brings them back,
a commit passes the guard judged against the number of units managed when the guard
first refused (the *baseline*, which never grows: the units a refused commit adds
would otherwise make its deletions look small at the next poll), or ``--allow-prune``
lifts the guard. Suspended units are never deleted, so only the others count against
the budget; a commit that would delete every unit is still judged on all of them, or
suspending one unit would disarm that guard.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from kaylee_sync.plan.model import PruneHold

DEFAULT_MAX_PRUNE = 20
"""Deletions one commit may make at most (``--max-prune``)."""
DEFAULT_MAX_PRUNE_PERCENT = 10.0
"""Share of the managed units one commit may delete (``--max-prune-percent``)."""
PRUNE_FLOOR = 1
"""Deletions always allowed whatever the share, so that a small repository works."""

_RELEASE = "restore the files, or pass --allow-prune to delete them"
_Y10K = 253_402_300_800  # 10000-01-01 UTC: a later time cannot be shown as a date


@dataclass(frozen=True)
class PruneLimits:
    """The guard's settings: the budget, and the explicit override."""

    max_count: int | None = DEFAULT_MAX_PRUNE  # None: no limit by count
    max_percent: float | None = DEFAULT_MAX_PRUNE_PERCENT  # None: no limit by share
    allow: bool = False  # --allow-prune: lift the guard and release a hold

    def budget(self, managed: int) -> int:
        """Deletions allowed out of ``managed`` units."""
        limit = managed
        if self.max_percent is not None:
            # A tiny epsilon: 10 % of 30 is 3, not 2.9999999999999996 rounded down.
            limit = max(PRUNE_FLOOR, math.floor(managed * self.max_percent / 100 + 1e-9))
        return limit if self.max_count is None else min(limit, self.max_count)

    def describe(self, managed: int) -> str:
        """Which limit makes the budget for ``managed`` units, naming its flag."""
        limit = self.budget(managed)
        if self.max_count is not None and limit == self.max_count:
            return f"--max-prune {self.max_count} per commit"
        if self.max_percent is not None:
            return f"--max-prune-percent {self.max_percent:g} % of them, at least {PRUNE_FLOOR}"
        return "no limit"


DEFAULT_LIMITS = PruneLimits()


@dataclass(frozen=True)
class Verdict:
    refused: str = ""  # why the deletions are refused ("" = they go ahead)
    hold: PruneHold | None = None  # the hold in force after the plan
    overridden: str = ""  # the refusal --allow-prune lifted
    released: str = ""  # why the hold in force ends


def judge(
    deletions: Collection[str],
    *,
    suspended: Collection[str],
    invalid: int,
    managed: int,
    hold: PruneHold | None,
    limits: PruneLimits,
    commit: str,
    now: float,
) -> Verdict:
    """The guard's verdict on ``deletions`` (managed units the commit drops).

    ``invalid`` counts the managed units whose file is invalid, ``managed`` the units
    the inventory lists that are in etcd, ``hold`` the refusal in force (if any).
    """
    real = [n for n in deletions if n not in suspended]
    baseline = managed if hold is None else min(managed, hold.baseline)
    # Units added since the first refusal: the messages say why the count is not theirs.
    grown = hold if hold is not None and hold.baseline < managed else None
    refusal = ""
    if real:
        refusal = _refusal(len(deletions), len(real), invalid, baseline, grown)
        refusal = refusal or _over_budget(len(real), baseline, grown, limits)
    if refusal and limits.allow:
        released = f"released by --allow-prune, deleting {len(real)} units" if hold else ""
        return Verdict(overridden=refusal, released=released)
    if refusal:
        since, first = (hold.since, hold.first_commit) if hold else (now, commit)
        new_hold = PruneHold(since, first, commit, baseline, len(real), refusal)
        return Verdict(refused=refusal, hold=new_hold)
    if hold is None:
        return Verdict()
    if deletions and not real:
        return Verdict(hold=hold)  # all suspended: resuming one must meet the hold again
    if real:
        why = f"the commit passes the guard against the {baseline} units managed when it refused"
        return Verdict(released=f"{why}, deleting {len(real)}")
    return Verdict(released="Git no longer deletes the held units")


def _refusal(total: int, real: int, invalid: int, baseline: int, grown: PruneHold | None) -> str:
    """The refusal of a commit that keeps no valid managed unit, or ""."""
    if total + invalid < baseline:
        return ""
    units = "unit" if real == 1 else "units"
    if grown is not None:
        what = (
            f"{real} {units}: every unit managed when the guard first refused, at "
            f"{grown.first_commit[:7]} ({baseline}; the units added since do not count)"
        )
    elif invalid:
        what = f"{real} {units}: with {invalid} invalid, no valid managed unit is left"
    else:
        what = f"every managed unit ({baseline})"
    return f"refusing to delete {what}; {_RELEASE}"


def _over_budget(real: int, baseline: int, grown: PruneHold | None, limits: PruneLimits) -> str:
    """The refusal of more deletions than the budget allows, or ""."""
    budget = limits.budget(baseline)
    if real <= budget:
        return ""
    when = "" if grown is None else f" when the guard first refused ({grown.first_commit[:7]})"
    return (
        f"refusing to delete {real} of {baseline} units managed{when}: more than the "
        f"budget of {budget} ({limits.describe(baseline)}); {_RELEASE}"
    )


# -- the hold as JSON (sync/prune-hold, sync/status, saved plans) ----------------------


def hold_to_doc(hold: PruneHold) -> dict[str, Any]:
    return {
        "since": hold.since,
        "first_commit": hold.first_commit,
        "commit": hold.commit,
        "baseline": hold.baseline,
        "held": hold.held,
        "reason": hold.reason,
    }


def hold_from_doc(doc: object, mod_revision: int = 0) -> PruneHold:
    """The hold ``doc`` holds; ValueError naming the field that is wrong."""
    if not isinstance(doc, Mapping):
        raise ValueError("not a JSON object")
    since = doc.get("since")
    if not isinstance(since, int | float) or isinstance(since, bool) or not 0 <= since < _Y10K:
        raise ValueError("since: expected a unix time (seconds, year 1970 to 9999)")
    return PruneHold(
        since=float(since),
        first_commit=_text(doc, "first_commit"),
        commit=_text(doc, "commit"),
        baseline=_count(doc, "baseline"),
        held=_count(doc, "held"),
        reason=_text(doc, "reason"),
        mod_revision=mod_revision,
    )


def _text(doc: Mapping[str, Any], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected a string")
    return value


def _count(doc: Mapping[str, Any], name: str) -> int:
    value = doc.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name}: expected a whole number >= 0")
    return value
