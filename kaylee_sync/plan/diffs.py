"""Unified diffs of two etcd values, as a reviewer wants to read them.

Values are stored as compact Go JSON, one line per unit, which would make every diff a
one-line replacement. They are pretty-printed first (indent 2, key order kept, non-ASCII
shown as itself) so a diff shows which field changed. A value that is not JSON (an etcd
entry written by hand) is diffed as it is rather than hidden.
"""

from __future__ import annotations

import difflib
import json

# Scalars go through the C encoder. ``json.dumps(indent=2)`` cannot use it: it falls back
# to the pure-Python encoder, which is slow and leaves a garbage cycle per call (closures
# that call each other), 28 MB of them in a plan of 10,000 creates while a sync holds
# the cyclic collector (bench/repo_sync, bench/daemon_rss).
_SCALAR = json.JSONEncoder(ensure_ascii=False).encode


def pretty(value: str) -> str:
    """``value`` pretty-printed (indent 2, key order kept), or as it is if not JSON.

    The same text as ``json.dumps(json.loads(value), indent=2, ensure_ascii=False)``.
    """
    try:
        return _indented(json.loads(value), "\n")
    except (ValueError, RecursionError):  # not JSON, or nested beyond Python's limit
        return value


def _indented(data: object, newline: str) -> str:
    """``data`` as JSON, each member on a line of its own after ``newline`` + 2 spaces."""
    inner = newline + "  "
    if isinstance(data, dict) and data:
        members = (f"{_SCALAR(key)}: {_indented(item, inner)}" for key, item in data.items())
        return "{" + inner + ("," + inner).join(members) + newline + "}"
    if isinstance(data, list) and data:
        items = (_indented(item, inner) for item in data)
        return "[" + inner + ("," + inner).join(items) + newline + "]"
    return _SCALAR(data)


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
    # Split on "\n" only: str.splitlines would also break at U+2028 and friends, which
    # JSON strings may hold literally once pretty-printed.
    lines = difflib.unified_diff(
        _lines(a), _lines(b), fromfile=old_label, tofile=new_label, lineterm=""
    )
    out = "\n".join(lines)
    return out + "\n" if out else ""


def _lines(text: str) -> list[str]:
    return text.split("\n") if text else []
