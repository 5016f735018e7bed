"""Finite, bounded times and durations: the range check every number gets where it is decoded.

A number from etcd or a flag is used far from where it was read: a suspension's ``until``
is compared and formatted at every sync, a poll interval is handed to ``Event.wait``. A
value that JSON, Python's ``float()`` or click accept can still break those uses — NaN
compares false with everything, ``inf`` overflows a timer, and a time past the year 9999
makes ``datetime`` raise — and then every daemon fails at its next sync, far from the
mistake. So each decoder calls these checks and turns a bad value into a one-line error
that names its key or flag, while the value is still next to its name.

The checks raise ``ValueError`` with the reason only ("must be finite, not nan"): the
caller knows the key or flag and wraps the reason into its own StoreError or UsageError.
"""

from __future__ import annotations

import json
import math

# The last second datetime can represent (9999-12-31 23:59:59 UTC): every time kaylee
# stores is shown to people at some point, and a later one cannot be formatted.
MAX_UNIX_TIME = 253_402_300_799.0

# Ten years: longer than any suspension, timeout or interval anyone means, yet far below
# where adding it to "now" could pass MAX_UNIX_TIME (before the year 9989).
MAX_DURATION = 10 * 365 * 86_400.0


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, not {_shown(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        raise ValueError(f"must be finite, not {_shown(value)}") from None
    if not math.isfinite(number):
        raise ValueError(f"must be finite, not {number}")
    return number


def check_time(value: object) -> float:
    """``value`` as a unix time between 1970 and the year 9999; ValueError otherwise."""
    number = _number(value)
    if not 0 <= number <= MAX_UNIX_TIME:
        raise ValueError(f"must be a unix time between 0 and {MAX_UNIX_TIME:.0f}, not {number:g}")
    return number


def check_duration(value: object, *, minimum: float = 0.0, maximum: float = MAX_DURATION) -> float:
    """``value`` as seconds between ``minimum`` and ``maximum``; ValueError otherwise."""
    number = _number(value)
    if not minimum <= number <= maximum:
        raise ValueError(f"must be between {minimum:g} and {maximum:g} seconds, not {number:g}")
    return number


def load_json(value: bytes) -> object:
    """A stored value as JSON; ValueError for bytes that are not UTF-8 JSON.

    Deep nesting (``[[[[…``) makes the json module raise RecursionError, which no
    decoder expects; it is turned into the same ValueError as any other bad JSON.
    """
    try:
        return json.loads(value.decode("utf-8"))
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError("not UTF-8 JSON") from None


def _shown(value: object) -> str:
    """A short, printable form of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"
