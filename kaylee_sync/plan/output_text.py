"""A plan for a terminal or a CI log: one line per unit that matters, then the diffs.

The order follows what a reader asks: what happens (one line each, with why and what it
does in fleet), the details (diffs and fleet unit names), what blocks the sync (invalid
files), and the totals last, where a scrolling terminal leaves them in view. Unchanged
units are only counted. Colour is the caller's choice (TTY and NO_COLOR unset).

Reasons, paths and values can carry text from a commit or from etcd, so control
characters are shown escaped: a plan must not be able to drive the reader's terminal.
"""

from __future__ import annotations

import re

from kaylee_sync.plan.model import Action, FleetEffect, Plan, PlanEntry
from kaylee_sync.plan.summary import SYMBOLS, header_parts, prune_lines, shown, summary_line

MAX_NAMES = 6  # fleet unit names listed per side of an entry; the JSON has them all
_NAME_WIDTH = 24

_RESET = "\x1b[0m"
_COLORS: dict[Action, str] = {
    Action.CREATE: "\x1b[32m",
    Action.UPDATE: "\x1b[33m",
    Action.DELETE: "\x1b[31m",
    Action.UNCHANGED: "",
    Action.POLICY: "\x1b[34m",
    Action.SUSPENDED: "\x1b[36m",
    Action.INVALID: "\x1b[1;35m",
    Action.PRUNE_REFUSED: "\x1b[1;31m",
}
_BOLD = "\x1b[1m"
# First match wins: file headers before added/removed lines.
_DIFF_COLORS = (
    ("+++", _BOLD),
    ("---", _BOLD),
    ("@@", "\x1b[36m"),
    ("+", "\x1b[32m"),
    ("-", "\x1b[31m"),
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def safe(text: str) -> str:
    """``text`` with control characters (ESC above all) shown as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)


def render_text(plan: Plan, *, color: bool) -> str:
    """The whole plan as text, ending with a newline."""
    paint = _Paint(color)
    what, against = header_parts(plan)
    out = [paint(_BOLD, safe(f"Plan for {what} against {against}")), ""]
    entries = shown(plan)
    width = min(_NAME_WIDTH, max((len(e.name) for e in entries), default=0))
    action_width = max((len(e.action.value) for e in entries), default=0)
    for entry in entries:
        out.append(paint(_COLORS[entry.action], _entry_line(entry, width, action_width)))
    if entries:
        out.append("")
    guard = prune_lines(plan)
    if guard:
        out += [paint(_COLORS[Action.PRUNE_REFUSED], safe(line)) for line in guard]
        out.append("")
    if plan.expired_suspensions:
        names = ", ".join(plan.expired_suspensions)
        out += [safe(f"Suspension ran out for {names}: Git syncs them again."), ""]
    details = [e for e in entries if e.diff or _has_names(e.effect)]
    for entry in details:
        out += _details(entry, paint)
        out.append("")
    if plan.problems:
        out.append(paint(_COLORS[Action.INVALID], "Invalid files:"))
        for problem in plan.problems:
            lines = [str(issue) for issue in problem.issues] or [f"{problem.path}: invalid"]
            out += [f"  {safe(line)}" for line in lines]
        out.append("")
    out.append(paint(_BOLD, summary_line(plan) + "."))
    return "\n".join(out) + "\n"


def _entry_line(entry: PlanEntry, width: int, action_width: int) -> str:
    sym = SYMBOLS[entry.action]
    line = f"  {sym} {entry.name:<{width}}  {entry.action.value:<{action_width}} {entry.reason}"
    if entry.effect is not None:
        line += f"; fleet: {entry.effect.summary}"
    return safe(line)


def _has_names(effect: FleetEffect | None) -> bool:
    return effect is not None and bool(effect.old_units or effect.new_units)


def _details(entry: PlanEntry, paint: _Paint) -> list[str]:
    out = [paint(_BOLD, safe(f"{SYMBOLS[entry.action]} {entry.name} ({entry.action.value})"))]
    # "\n" only: a pretty-printed JSON string may hold U+2028, which splitlines splits at.
    for line in entry.diff.removesuffix("\n").split("\n") if entry.diff else ():
        out.append(paint(_diff_color(line), safe(line)))
    effect = entry.effect
    if effect is not None and _has_names(effect):
        out.append("  fleet units:")
        out += [paint(_COLORS[Action.DELETE], line) for line in _names("-", effect.old_units)]
        out += [paint(_COLORS[Action.CREATE], line) for line in _names("+", effect.new_units)]
    return out


def _names(sign: str, names: tuple[str, ...]) -> list[str]:
    lines = [f"    {sign} {safe(n)}" for n in names[:MAX_NAMES]]
    if len(names) > MAX_NAMES:
        lines.append(f"    {sign} … and {len(names) - MAX_NAMES} more")
    return lines


def _diff_color(line: str) -> str:
    for prefix, code in _DIFF_COLORS:
        if line.startswith(prefix):
            return code
    return ""


class _Paint:
    """Wraps text in an ANSI colour, or leaves it alone when colour is off."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, code: str, text: str) -> str:
        return f"{code}{text}{_RESET}" if self.enabled and code and text else text
