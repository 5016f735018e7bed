"""A plan as a pull-request comment: the table a reviewer scans, then the diffs, then why
the commit cannot be fully synced.

GitHub refuses comments over 65,536 characters, and a commit touching thousands of units
must still get its comment, so the output is fitted to ``limit`` by construction. What a
reviewer needs most is kept longest: the title and totals always; then the invalid files
and the table (rows cut at the end if needed); then the diffs, which share what is left:
the largest are cut first (water-filling: every diff keeps up to a common length) and,
when even short diffs do not fit, the later ones are left out. Every cut says how much it
omitted and to run ``kaylee-sync plan`` locally.

Text from a commit or from etcd is escaped (HTML and the markdown that would reformat a
table cell), and diff fences are longer than any backtick run inside them.
"""

from __future__ import annotations

import html
import re
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate

from kaylee_sync.plan.model import FileProblem, Plan, PlanEntry
from kaylee_sync.plan.summary import SYMBOLS, header_parts, prune_lines, shown, summary_line

MIN_DIFF = 600  # characters of a diff worth showing before dropping later diffs instead
LOCALLY = "run kaylee-sync plan locally for the full"
_MD_SPECIAL = re.compile(r"([\\`*_\[\]~|])")
_TABLE_HEAD = "| action | unit | file | fleet effect |\n|---|---|---|---|\n"
_DIFFS_HEAD = "\n### Diffs\n\n"


def render_markdown(plan: Plan, *, limit: int = 65536) -> str:
    """The plan as GitHub-flavoured markdown of at most ``limit`` characters."""
    title = _title(plan)
    budget = limit - len(title)
    entries = shown(plan)
    rows = [_row(e) for e in entries]
    problems = [_problem_line(issue) for p in plan.problems for issue in _issues(p)]
    blocks = [_DiffBlock.of(e) for e in entries if e.diff]
    # A cut table still leaves room to say that the diffs were left out.
    reserve = len(_DIFFS_HEAD + _diffs_note(len(blocks))) if blocks else 0
    # The invalid files are what blocks the sync: they keep at least half the space.
    need_rows = len(_TABLE_HEAD) + sum(len(row) for row in rows) if rows else 0
    problems_budget = max(budget // 2, budget - need_rows - reserve)
    problems_text = _fit(problems, "\n### Invalid files\n\n", _problems_note, problems_budget)
    table = _fit(rows, _TABLE_HEAD, _rows_note, budget - len(problems_text) - reserve)
    budget -= len(problems_text) + len(table)
    diffs = _fit_diffs(blocks, budget)
    out = title + table + diffs + problems_text
    if len(out) > limit:  # only when even the title does not fit a tiny limit
        out = out[: max(0, limit - 2)] + "…\n"
    return out[:limit]


def _title(plan: Plan) -> str:
    what, against = header_parts(plan)
    lines = [f"## kaylee-sync plan for {_code(what)}", ""]
    lines += [f"Against {_md(against)}: **{_md(summary_line(plan))}**", ""]
    for line in prune_lines(plan):
        head, _, rest = line.partition(": ")
        lines += [f"> **{_md(head)}:** {_md(rest)}", ""]
    if plan.expired_suspensions:
        names = ", ".join(plan.expired_suspensions)
        lines += [f"> Suspension ran out for {_md(names)}: Git syncs them again.", ""]
    return "\n".join(lines) + "\n"


def _row(e: PlanEntry) -> str:
    action = f"{SYMBOLS[e.action]} {e.action.value}"
    path = _code(e.path) if e.path else ""
    effect = _md(e.effect.summary) if e.effect is not None else _md(e.reason)
    return f"| {_md(action)} | {_code(e.name)} | {path} | {effect} |\n"


def _issues(p: FileProblem) -> list[str]:
    return [str(i) for i in p.issues] or [f"{p.path}: invalid"]


def _problem_line(issue: str) -> str:
    return f"- {_code(issue)}\n"


def _rows_note(omitted: int) -> str:
    return f"\n_… {omitted} more rows omitted; {LOCALLY} plan._\n"


def _problems_note(omitted: int) -> str:
    return f"- _… {omitted} more issues omitted; run kaylee-sync validate locally for all._\n"


def _fit(lines: list[str], head: str, note: Callable[[int], str], budget: int) -> str:
    """``head`` and as many leading ``lines`` as fit in ``budget``, with a note if cut."""
    if not lines:
        return ""
    full = head + "".join(lines)
    if len(full) <= budget:
        return full
    kept, used = 0, len(head)
    while kept < len(lines) and used + len(lines[kept]) + len(note(len(lines) - kept)) <= budget:
        # Taking this line must leave room for the note about the ones after it.
        used += len(lines[kept])
        kept += 1
    if kept == 0:
        only_note = note(len(lines))
        return only_note if len(only_note) <= budget else ""
    return head + "".join(lines[:kept]) + note(len(lines) - kept)


@dataclass(frozen=True)
class _DiffBlock:
    """One diff in its ``<details>``, measured so cuts can be planned without building it."""

    head: str
    lines: tuple[str, ...]
    tail: str
    prefix: tuple[int, ...]  # prefix[k] = characters of the first k lines

    @classmethod
    def of(cls, e: PlanEntry) -> _DiffBlock:
        lines = tuple(line + "\n" for line in e.diff.removesuffix("\n").split("\n"))
        fence = "`" * max(3, _longest_backtick_run(e.diff) + 1)
        summary = f"{SYMBOLS[e.action]} {e.action.value} <code>{_html(e.name)}</code>: "
        summary += _html(e.reason)
        head = f"<details><summary>{summary}</summary>\n\n{fence}diff\n"
        return cls(head, lines, f"{fence}\n", (0, *accumulate(len(line) for line in lines)))

    def size(self, kept: int) -> int:
        return len(self.head) + self.prefix[kept] + len(self.tail) + len(self._end(kept))

    def kept_at(self, cap: int) -> int:
        """How many whole lines fit in ``cap`` characters."""
        return bisect_right(self.prefix, cap) - 1

    def text(self, kept: int) -> str:
        return self.head + "".join(self.lines[:kept]) + self.tail + self._end(kept)

    def _end(self, kept: int) -> str:
        omitted = len(self.lines) - kept
        if not omitted:
            return "\n</details>\n\n"
        note = f"… diff truncated ({omitted} lines omitted); {LOCALLY} diff"
        return f"\n{note}\n\n</details>\n\n"


def _diffs_note(omitted: int) -> str:
    return f"_… {omitted} more diffs omitted; {LOCALLY} diff._\n\n" if omitted else ""


def _fit_diffs(blocks: list[_DiffBlock], budget: int) -> str:
    if not blocks:
        return ""
    budget -= len(_DIFFS_HEAD)
    full = [b.size(len(b.lines)) for b in blocks]
    if sum(full) <= budget:
        return _DIFFS_HEAD + "".join(b.text(len(b.lines)) for b in blocks)

    def total(cap: int, shown_blocks: int) -> int:
        size = sum(b.size(b.kept_at(cap)) for b in blocks[:shown_blocks])
        return size + len(_diffs_note(len(blocks) - shown_blocks))

    # As many diffs as fit with MIN_DIFF characters each; the later ones are left out.
    shown_blocks, used = 0, 0
    for block in blocks:
        size = block.size(block.kept_at(MIN_DIFF))
        if used + size + len(_diffs_note(len(blocks) - shown_blocks - 1)) > budget:
            break
        used += size
        shown_blocks += 1
    if shown_blocks == 0:
        note = _diffs_note(len(blocks))
        return _DIFFS_HEAD + note if len(note) <= budget else ""
    # Then the largest common cap that fits: the biggest diffs are the ones cut.
    lo, hi = MIN_DIFF, max(b.prefix[-1] for b in blocks[:shown_blocks])
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if total(mid, shown_blocks) <= budget:
            lo = mid
        else:
            hi = mid - 1
    parts = [b.text(b.kept_at(lo)) for b in blocks[:shown_blocks]]
    if shown_blocks < len(blocks):
        parts.append(_diffs_note(len(blocks) - shown_blocks))
    return _DIFFS_HEAD + "".join(parts)


def _longest_backtick_run(text: str) -> int:
    return max((len(run) for run in re.findall(r"`+", text)), default=0)


def _html(text: str) -> str:
    """Text inside an HTML block (no markdown there): entities only, one line."""
    return html.escape(text, quote=False).replace("\n", " ")


def _md(text: str) -> str:
    """Text in a markdown line or table cell: entities, and markdown punctuation escaped."""
    return _MD_SPECIAL.sub(r"\\\1", _html(text))


def _code(text: str) -> str:
    """Inline code that survives any content: an HTML <code> with the pipe as an entity."""
    return f"<code>{_html(text).replace('|', '&#124;')}</code>"
