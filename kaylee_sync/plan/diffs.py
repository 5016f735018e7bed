"""Unified diffs of two etcd values, as a reviewer wants to read them.

Values are stored as compact Go JSON, one line per unit, which would make every diff a
one-line replacement. They are pretty-printed first (indent 2, key order kept, non-ASCII
shown as itself) so a diff shows which field changed. A value that is not JSON (an etcd
entry written by hand) is diffed as it is rather than hidden.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Scalars go through the C encoder. ``json.dumps(indent=2)`` cannot use it: it falls back
# to the pure-Python encoder, which is slow and leaves a garbage cycle per call (closures
# that call each other), 28 MB of them in a plan of 10,000 creates while a sync holds
# the cyclic collector (bench/repo_sync, bench/daemon_rss).
_SCALAR = json.JSONEncoder(ensure_ascii=False).encode
# The C function that encoder applies to a str (the same text, without its dispatch):
# strings are nearly every scalar of a spec.
_STRING: Callable[[str], str] = (
    getattr(json.encoder, "c_encode_basestring", None) or json.encoder.py_encode_basestring
)


def pretty(value: str) -> str:
    """``value`` pretty-printed (indent 2, key order kept), or as it is if not JSON.

    The same text as ``json.dumps(json.loads(value), indent=2, ensure_ascii=False)``.
    """
    try:
        return _indented(json.loads(value), "\n")
    except (ValueError, RecursionError):  # not JSON, or nested beyond Python's limit
        return value


def _indented(data: Any, newline: str) -> str:
    """``data`` as JSON, each member on a line of its own after ``newline`` + 2 spaces."""
    kind = type(data)
    if kind is str:
        return _STRING(data)
    inner = newline + "  "
    if kind is dict and data:
        members = [
            f"{_STRING(key)}: {_STRING(item) if type(item) is str else _indented(item, inner)}"
            for key, item in data.items()
        ]
        return "{" + inner + ("," + inner).join(members) + newline + "}"
    if kind is list and data:
        items = [_STRING(i) if type(i) is str else _indented(i, inner) for i in data]
        return "[" + inner + ("," + inner).join(items) + newline + "]"
    return _SCALAR(data)


@dataclass(frozen=True)
class Diff:
    """A unified diff not written yet: what :func:`unified_diff` is given. A plan holds
    one per entry and writes the text when it is first shown, so a sync that applies a
    plan of 10,000 creates and never shows it does not pretty-print 10,000 values (a
    third of a cold plan's time, bench/repo_sync). Two are equal when their inputs are.
    """

    old: str | None
    new: str | None
    old_label: str
    new_label: str

    def text(self) -> str:
        return unified_diff(self.old, self.new, self.old_label, self.new_label)


def unified_diff(old: str | None, new: str | None, old_label: str, new_label: str) -> str:
    """A unified diff from ``old`` to ``new`` (None = absent); "" when they are equal."""
    if old == new:
        return ""
    text = _diff(
        pretty(old) if old is not None else "",
        pretty(new) if new is not None else "",
        old_label,
        new_label,
    )
    if not text:
        # Equal once pretty-printed (spacing or escapes differ): show the raw values so
        # the change that will be written is never invisible.
        text = _diff(old or "", new or "", old_label, new_label)
    return text


def _diff(a: str, b: str, old_label: str, new_label: str) -> str:
    a_lines, b_lines = _lines(a), _lines(b)
    if not a_lines or not b_lines:
        # A create or a delete: one hunk holding every line. Written directly, as
        # difflib writes it (tests/test_plan_diffs.py compares the two), because a
        # cold plan of 10,000 creates spent a third of its time in difflib's matcher.
        return _one_sided(a_lines, b_lines, old_label, new_label)
    # Split on "\n" only: str.splitlines would also break at U+2028 and friends, which
    # JSON strings may hold literally once pretty-printed.
    lines = difflib.unified_diff(
        a_lines, b_lines, fromfile=old_label, tofile=new_label, lineterm=""
    )
    out = "\n".join(lines)
    return out + "\n" if out else ""


def _one_sided(a: list[str], b: list[str], old_label: str, new_label: str) -> str:
    """difflib.unified_diff's output when ``a`` or ``b`` is empty ("" when both are)."""
    if not a and not b:
        return ""
    sign, lines = ("+", b) if b else ("-", a)
    old_range = _range(len(a))
    new_range = _range(len(b))
    head = f"--- {old_label}\n+++ {new_label}\n@@ -{old_range} +{new_range} @@\n"
    return head + sign + f"\n{sign}".join(lines) + "\n"


def _range(length: int) -> str:
    """difflib's ``_format_range_unified`` for a range starting at the first line."""
    if length == 0:
        return "0,0"
    return "1" if length == 1 else f"1,{length}"


def _lines(text: str) -> list[str]:
    return text.split("\n") if text else []
