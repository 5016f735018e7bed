"""Pausing Python's cyclic garbage collector around one bulk job, safely across threads.

A scheduler pass over 10,000 fleet units, or a sync attempt over 10,000 unit files,
builds some 100,000 objects that all live until the job ends. Each young-generation
collection finds them alive and promotes them, and the promotions set off full
collections that also walk every long-lived object (the parse caches among them): a
third of an idle scheduler pass and half of a one-file sync (bench/scheduler_idle,
bench/repo_sync). Reference counting still frees whatever a job drops; only reference
cycles wait until the collector resumes.

The scheduler thread and the sync worker may overlap, so pauses nest: the collector
is switched off by the first job to start and back on (if it was on before) by the last
one to end.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextmanager
def collector_paused() -> Iterator[None]:
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
