"""Loops that cannot die quietly: heartbeats, a registry of loops, and retry after a bug.

A daemon is a handful of threads that each loop for the life of the process (the sync
worker, the scheduler, its etcd watch, the election, the triggers, the watchdog
pinger). The trouble with threads is that one that raises ends silently: the process
keeps running, its probes stay green and it keeps the lease, while the work it was there
for has stopped. This module gives every loop three things:

- :class:`Failures`, what a loop does with an exception it did not expect: log it once
  with its traceback (a repeat of the same failure is one line), and back off
  exponentially before going on. The loop survives its bugs.
- :class:`Heartbeat`, the loop's sign of life. A loop beats at the start of each
  step, and before it waits it says for how long (``beat(idle=…)``); a loop that has
  not beaten by then plus its bound is *stuck*. A loop whose thread ended while nobody
  asked it to stop is *dead*.
- :class:`Loops`, the registry the health check reads (and :meth:`Loops.start`, the
  thread wrapper that restarts a loop function that raised, and marks it dead only on a
  ``BaseException`` — which is how tests kill a loop).

It is stdlib only and sits beside ``errors`` at the bottom of the layers, so the
scheduler and the election (below the daemon) can use it too.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


class Failures:
    """Unexpected exceptions of one loop: logged once each, with exponential backoff.

    The first occurrence of a failure is logged at ERROR with its traceback; the same
    failure (same type and message) again in a row is one WARNING line, so a bug hit on
    every pass does not flood the log. ``first`` doubles per failure in a row up to
    ``cap``; a success (:meth:`succeeded`) resets both.
    """

    def __init__(
        self, what: str, logger: logging.Logger = log, *, first: float = 0.5, cap: float = 30.0
    ) -> None:
        self.what = what
        self.log = logger
        self.first = first
        self.cap = cap
        self.in_a_row = 0
        #: every unexpected exception this loop survived (a counter for /metrics)
        self.total = 0
        self._last: tuple[type[BaseException], str] | None = None

    def failed(self, exc: BaseException) -> float:
        """Log ``exc``; return the seconds to wait before the next try."""
        self.in_a_row += 1
        self.total += 1
        delay: float = min(self.cap, self.first * 2.0 ** (self.in_a_row - 1))
        signature = (type(exc), str(exc))
        if signature != self._last:
            self.log.error(
                "%s failed unexpectedly; retrying in %.1f s", self.what, delay, exc_info=exc
            )
        else:
            self.log.warning(
                "%s failed again (%s: %s, %d in a row); retrying in %.1f s",
                self.what,
                type(exc).__name__,
                exc,
                self.in_a_row,
                delay,
            )
        self._last = signature
        return delay

    def succeeded(self) -> None:
        if self.in_a_row:
            self.log.info("%s works again after %d failures", self.what, self.in_a_row)
        self.in_a_row = 0
        self._last = None


class Heartbeat:
    """One loop's sign of life; thread-safe (plain attribute writes and reads)."""

    def __init__(
        self,
        name: str,
        stuck_after: float,
        *,
        leader_only: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not stuck_after > 0:
            raise ValueError(f"stuck_after must be positive, not {stuck_after!r}")
        self.name = name
        #: seconds a step may take beyond the announced idle time before it counts as stuck
        self.stuck_after = stuck_after
        #: a loop that only works while leading: its failure makes the process resign
        self.leader_only = leader_only
        self.clock = clock
        self.failures = Failures(f"the {name} loop")
        #: beats so far: a test waits for the loop to have gone round again
        self.count = 0
        # (time of the last beat, idle time announced with it): one tuple, replaced whole,
        # so a reader on another thread never pairs a new time with an old idle time
        self._beat = (clock(), 0.0)
        self._dead: str | None = None
        self._stopped = False
        self._thread: threading.Thread | None = None

    def beat(self, idle: float = 0.0) -> None:
        """Alive now; the next beat comes within ``idle`` + ``stuck_after`` seconds.

        Call it with no argument when a step starts, and with the wait's length just
        before waiting. ``idle=math.inf`` suspends the check (a loop blocked on events
        that may never come, whose liveness another check covers).
        """
        self._beat = (self.clock(), idle)
        self.count += 1

    def attach(self, thread: threading.Thread) -> None:
        """Judge this loop dead when ``thread`` ends before :meth:`stopped`."""
        self._thread = thread

    def died(self, reason: str) -> None:
        self._dead = reason

    def stopped(self) -> None:
        """The loop ended because it was asked to: not a failure."""
        self._stopped = True

    def problem(self) -> str | None:
        """Why this loop is not healthy ("" never); None when it is."""
        if self._stopped:
            return None
        if self._dead is not None:
            return f"the {self.name} loop is dead ({self._dead})"
        if self._thread is not None and not self._thread.is_alive():
            return f"the {self.name} loop is dead (its thread ended)"
        now = self.clock()
        last, idle = self._beat
        # Judged with the bound as it is now (not as it was at the last beat).
        if now > last + idle + self.stuck_after:
            return (
                f"the {self.name} loop is stuck: no sign of life for {now - last:.0f} s "
                f"(bound {self.stuck_after:g} s)"
            )
        return None


@dataclass(frozen=True)
class Problem:
    loop: str
    reason: str
    leader_only: bool


class Loops:
    """Every supervised loop of a process, for the health check and /metrics."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._beats: dict[str, Heartbeat] = {}
        self._lock = threading.Lock()

    def add(self, name: str, stuck_after: float, *, leader_only: bool = False) -> Heartbeat:
        beat = Heartbeat(name, stuck_after, leader_only=leader_only, clock=self.clock)
        with self._lock:
            if name in self._beats:
                raise ValueError(f"a loop named {name!r} is already registered")
            self._beats[name] = beat
        return beat

    def heartbeats(self) -> list[Heartbeat]:
        with self._lock:
            return list(self._beats.values())

    def problems(self) -> list[Problem]:
        found = []
        for beat in self.heartbeats():
            reason = beat.problem()
            if reason is not None:
                found.append(Problem(beat.name, reason, beat.leader_only))
        return found

    def start(
        self,
        name: str,
        target: Callable[[Heartbeat], None],
        stop: threading.Event,
        *,
        stuck_after: float,
        leader_only: bool = False,
    ) -> threading.Thread:
        """Run ``target(heartbeat)`` on a daemon thread until ``stop`` is set.

        An exception escaping ``target`` is logged (once) and ``target`` runs again after
        a backoff; returning early does the same. Only a ``BaseException`` (never raised
        by our code; a test's way to kill a thread) ends the thread, and the loop is dead.
        """
        beat = self.add(name, stuck_after, leader_only=leader_only)
        thread = threading.Thread(
            target=_supervised, args=(beat, target, stop), name=f"kaylee-{name}", daemon=True
        )
        beat.attach(thread)
        thread.start()
        return thread


def _supervised(
    beat: Heartbeat, target: Callable[[Heartbeat], None], stop: threading.Event
) -> None:
    try:
        while not stop.is_set():
            beat.beat()
            try:
                target(beat)
            except Exception as exc:
                delay = beat.failures.failed(exc)
            else:
                if stop.is_set():
                    break
                delay = beat.failures.failed(RuntimeError(f"{beat.name} returned early"))
            beat.beat(idle=delay)
            stop.wait(delay)
    except BaseException as exc:
        log.critical("the %s loop died: %r", beat.name, exc, exc_info=exc)
        # Not re-raised: threading's excepthook would print the traceback a second time.
        beat.died(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        return
    beat.stopped()


#: for a loop blocked on events that may never come (see :meth:`Heartbeat.beat`)
FOREVER = math.inf
