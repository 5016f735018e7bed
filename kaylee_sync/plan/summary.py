"""What every plan output says the same way: counts, the summary line, symbols, exit code.

The text, markdown and JSON outputs are read by different people (a terminal, a pull
request, a script), but they must never disagree about what a plan amounts to, so the
counting and the exit-code rule live here once.
"""

from __future__ import annotations

from kaylee_sync.plan.compute import format_time, short_commit
from kaylee_sync.plan.model import Action, Plan, PlanEntry

EXIT_NO_CHANGES = 0
EXIT_INVALID = 1  # invalid files (the CLI also uses 1 for any error)
EXIT_CHANGES = 2

# One column wide, ASCII, so they line up in any terminal and any CI log.
SYMBOLS: dict[Action, str] = {
    Action.CREATE: "+",
    Action.UPDATE: "~",
    Action.DELETE: "-",
    Action.UNCHANGED: "=",
    Action.POLICY: "%",
    Action.SUSPENDED: "#",
    Action.INVALID: "!",
    Action.PRUNE_REFUSED: "x",
}


def plan_exit_code(plan: Plan) -> int:
    """1 if any file is invalid or a prune guard refused, else 2 if the plan changes etcd,
    else 0.

    An invalid file wins over changes because it is what CI must block on: the rest of
    the commit would be synced, but that file never would. A refused prune likewise
    means the commit cannot be synced as written (someone must pass --allow-prune or
    restore the files), so a pipeline must stop and a person must look.
    """
    if plan.problems or plan.prune_refused:
        return EXIT_INVALID
    return EXIT_CHANGES if plan.has_changes else EXIT_NO_CHANGES


def counts(plan: Plan) -> dict[str, int]:
    """Entries per action, every action present (JSON's ``summary``)."""
    out = dict.fromkeys((a.value for a in Action), 0)
    for entry in plan.entries:
        out[entry.action.value] += 1
    return out


def shown(plan: Plan) -> tuple[PlanEntry, ...]:
    """The entries worth a line: everything but UNCHANGED (which is only counted)."""
    return tuple(e for e in plan.entries if e.action != Action.UNCHANGED)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def summary_line(plan: Plan) -> str:
    """ "2 to create, 1 to update, 0 to delete, 5 unchanged, 1 invalid file"."""
    n = counts(plan)
    parts = [
        f"{n[Action.CREATE]} to create",
        f"{n[Action.UPDATE]} to update",
        f"{n[Action.DELETE]} to delete",
        f"{n[Action.UNCHANGED]} unchanged",
    ]
    if n[Action.POLICY]:
        parts.append(
            f"{n[Action.POLICY]} rollout policy change{'s' if n[Action.POLICY] > 1 else ''}"
        )
    if n[Action.SUSPENDED]:
        parts.append(f"{n[Action.SUSPENDED]} suspended")
    if n[Action.PRUNE_REFUSED]:
        parts.append(_plural(n[Action.PRUNE_REFUSED], "deletion") + " refused")
    if plan.problems:
        parts.append(_plural(len(plan.problems), "invalid file"))
    return ", ".join(parts)


def header_parts(plan: Plan) -> tuple[str, str]:
    """(what: "repo branch @ 1a2b3c4 (units/)", against) for the headers of both outputs."""
    d = plan.desired
    commit = short_commit(d.commit)
    where = f"{d.repo} {d.branch}".strip() or "(no repository)"
    path = f" ({d.path})" if d.path else ""
    return f"{where} @ {commit}{path}", plan.against


def prune_lines(plan: Plan) -> list[str]:
    """What the prune guard says about ``plan``, one line each (none when it is silent)."""
    lines = []
    hold = plan.prune_hold
    if plan.prune_refused:
        line = f"Prune guard: {plan.prune_refused}"
        if hold is not None and hold.first_commit != plan.desired.commit:
            first = short_commit(hold.first_commit)
            where = "" if first in plan.prune_refused else f", first refused at {first}"
            line += f" (held since {format_time(hold.since)}{where})"
        lines.append(line)
    if plan.prune_overridden:
        lines.append(f"Prune guard lifted by --allow-prune; it would say: {plan.prune_overridden}")
    if plan.prune_released:
        lines.append(f"Prune guard hold ends: {plan.prune_released}")
    return lines
