"""The write-rate limit and retry policy both fleet drivers share.

Every write to fleet's keyspace wakes every fleetd in the cluster (the engine and each
agent watch the whole prefix and re-read the registry), so a burst of writes costs the
cluster far more than it costs us. A token bucket caps the rate. Its default (200
writes/s, burst 100) is generous on purpose: a rollout of many units is never visibly
slowed, while a bug that writes in a tight loop is held to a rate etcd and the agents
survive. Transient failures (FleetUnavailable: etcd or fleetd unreachable, leader
election) are retried a bounded number of times with exponential backoff and full
jitter, so that several kaylee-sync processes do not retry in lockstep.

The write *guard* is the fence of a leader's writes (design.md, "Fencing fleet writes"):
a callable run right before every write attempt is sent — after the wait for a token
and after every retry's backoff — that raises (FleetFenced) when this process no longer
holds a live leader lease or is stopping. A paused or deposed leader therefore never
sends a write, not even the retry of one it started while it still led.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from kaylee_sync.errors import FleetUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class ThrottleSettings:
    """How hard a driver may push fleet, and how patiently it retries."""

    #: sustained writes per second (tokens added per second)
    write_rate: float = 200.0
    #: writes allowed back to back before the rate applies
    write_burst: int = 100
    #: attempts per call, the first included; 1 disables retrying
    attempts: int = 5
    #: seconds before the first retry; doubles each time (full jitter: uniform 0..delay)
    backoff: float = 0.2
    #: ceiling of one backoff delay, seconds
    max_backoff: float = 5.0


@dataclass
class Throttle:
    """A token bucket for writes plus the retry loop. Thread-safe."""

    settings: ThrottleSettings = field(default_factory=ThrottleSettings)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    rand: Callable[[float, float], float] = random.uniform
    guard: Callable[[str], None] | None = None
    """Called with a description of each write right before it is sent; raises to refuse."""
    _tokens: float = field(default=-1.0, init=False, repr=False)
    _stamp: float = field(default=0.0, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def acquire(self) -> None:
        """Take one write token, sleeping until one is available."""
        rate, burst = self.settings.write_rate, float(self.settings.write_burst)
        with self._lock:  # held while sleeping: waiting writers queue in order
            now = self.clock()
            if self._tokens < 0:
                self._tokens, self._stamp = burst, now
            self._tokens = min(burst, self._tokens + (now - self._stamp) * rate)
            self._stamp = now
            if self._tokens < 1.0:
                wait = (1.0 - self._tokens) / rate
                self.sleep(wait)
                self._tokens, self._stamp = 1.0, now + wait
            self._tokens -= 1.0

    def call(self, what: str, fn: Callable[[], T], *, write: bool = False) -> T:
        """``fn()``, retried on FleetUnavailable; a write takes a token per attempt."""
        attempts = max(1, self.settings.attempts)
        for attempt in range(1, attempts + 1):
            if write:
                self.acquire()
            if self.guard is not None and (write or attempt > 1):
                # the last moment before sending (a refusal propagates); a read is only
                # checked before a retry, so a stopping process does not retry for long
                self.guard(what)
            try:
                return fn()
            except FleetUnavailable as exc:
                if attempt == attempts:
                    raise
                ceiling = min(self.settings.max_backoff, self.settings.backoff * 2 ** (attempt - 1))
                delay = self.rand(0.0, ceiling)
                log.warning(
                    "fleet %s failed (attempt %d/%d), retrying in %.2fs: %s",
                    what, attempt, attempts, delay, exc,
                )  # fmt: skip
                self.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover
