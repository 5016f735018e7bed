"""Waiting for something to become true, the one way every test does it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T | None], timeout: float = 5.0, what: str = "", step: float = 0.01
) -> T:
    """Poll ``predicate`` until it returns something truthy (returned); AssertionError after
    ``timeout`` seconds, naming ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what or 'condition'} not true within {timeout} s")
        time.sleep(step)
