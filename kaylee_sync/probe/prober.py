"""The leader's health checker: every instance's checks, on one event loop of its own.

The scheduler hands over each unit's :class:`~kaylee_sync.health.checks.Target` list on
every pass (``set_targets``) and reads verdicts back (``health``); the checking itself
runs here, in a thread with an asyncio loop, so that

- a slow or hanging endpoint costs one pending coroutine, never a scheduler pass, and
  never another unit's checks (design.md: a slow unit never blocks another);
- at most ``max_in_flight`` checks are in flight at once, whatever the fleet's size;
- each instance is checked every ``interval``, its first check spread over the interval
  (by a hash of its name) so that 2,500 instances are not all checked in the same tick;
- one queue and one 50 ms tick start every due check and enforce every deadline: no
  task, timer or coroutine per check (bench/health_check.py: that was half the cost);
- presence keys are read with one range read per unit and interval, not one per
  instance, in a small thread pool (the etcd clients block).

Results are folded by ``health.checks`` (pure), which is where "healthy" is defined.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from kaylee_sync.errors import KayleeError
from kaylee_sync.health.checks import CheckState, Health, Target, combine, common_directory
from kaylee_sync.probe.http import HttpProber

log = logging.getLogger(__name__)

TICK = 0.05  # seconds between looks at the queue of due checks (and at deadlines)
#: (keyspace "v2"|"v3", directory) -> the keys present under it (recursively)
PresenceReader = Callable[[str, str], set[str]]


class Prober:
    """Runs checks for the targets it is given. ``start()`` it, ``stop()`` it."""

    def __init__(
        self,
        read_presence: PresenceReader | None = None,
        *,
        max_in_flight: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.read_presence = read_presence
        self.max_in_flight = max_in_flight
        self.clock = clock
        self._targets: dict[str, dict[str, Target]] = {}  # unit -> instance -> target
        self._states: dict[str, dict[str, CheckState]] = {}  # instance -> kind -> state
        self._owner: dict[str, str] = {}  # instance -> unit
        # the loop's own tables (touched only on the loop's thread)
        self._http: dict[str, dict[str, Target]] = {}  # unit -> instance -> HTTP target
        # (due, tie-breaker, instance, unit, target): a heap of the HTTP checks to start
        self._queue: list[tuple[float, int, str, str, Target]] = []
        self._seq = itertools.count()
        self._in_flight = 0
        self._ticker: asyncio.Task[None] | None = None
        self._presence: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="probe-etcd")
        self.checks_run = 0  # HTTP checks and presence reads done (for metrics and tests)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Prober:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="health-prober", daemon=True)
            self._thread.start()
            self._ready.wait()
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
        self._thread = self._loop = None
        self._pool.shutdown(wait=False, cancel_futures=True)
        close = getattr(self.read_presence, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Prober:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._client = HttpProber()
        for unit, table in list(self._targets.items()):  # given before the loop ran
            loop.call_soon(self._sync, unit, table)
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            tasks = [*self._presence.values()]
            if self._ticker is not None:
                tasks.append(self._ticker)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._client.close()
            loop.run_until_complete(asyncio.sleep(0))  # let the transports close their sockets
            loop.close()

    # -- what to check (any thread) ----------------------------------------------------

    def set_targets(self, unit: str, targets: Iterable[Target]) -> None:
        """Check exactly ``targets`` for ``unit`` from now on (an empty list: nothing)."""
        table = {t.instance: t for t in targets}
        if self._targets.get(unit) == table:
            return  # the common case on every pass: nothing changed, no hop to the loop
        self._targets[unit] = table
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._sync, unit, table)

    def forget_all(self) -> None:
        """Stop every check (the leader stepped down)."""
        for unit in list(self._targets):
            self.set_targets(unit, ())

    def health(self, instance: str) -> Health | None:
        """The instance's verdict; None when it has no checks configured."""
        states = self._states.get(instance)
        return None if states is None else combine(dict(states))

    # -- the loop (its own thread) -----------------------------------------------------

    def _sync(self, unit: str, table: dict[str, Target]) -> None:
        http = self._http.setdefault(unit, {})
        for instance, target in list(http.items()):
            if table.get(instance) != target:
                del http[instance]  # its queued check is dropped when it comes up
                self._states.pop(instance, None)  # another target: its results do not carry
        for instance in [i for i, u in self._owner.items() if u == unit and i not in table]:
            del self._owner[instance]
            self._states.pop(instance, None)
        loop = asyncio.get_running_loop()
        for instance, target in table.items():
            self._owner[instance] = unit
            kinds = self._states.setdefault(instance, {})
            if target.url and instance not in http:
                http[instance] = target
                kinds["http"] = CheckState(failures=target.failures)
                # The first check is spread over the interval by a hash of the name.
                phase = (zlib.crc32(instance.encode()) % 1000) / 1000 * target.interval
                heapq.heappush(
                    self._queue, (loop.time() + phase, next(self._seq), instance, unit, target)
                )
            if target.etcd_key:
                kinds.setdefault("etcdKey", CheckState(failures=1))
        if not http:
            del self._http[unit]
        if self._ticker is None and self._queue:
            self._ticker = loop.create_task(self._tick())
        presence = self._presence.get(unit)
        if any(t.etcd_key for t in table.values()) and (presence is None or presence.done()):
            self._presence[unit] = loop.create_task(self._presence_loop(unit))

    async def _tick(self) -> None:
        """Start the checks that are due, every TICK: one timer for all of them."""
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            now = loop.time()
            self._client.sweep(now)
            while queue and queue[0][0] <= now and self._in_flight < self.max_in_flight:
                due, seq, instance, unit, target = heapq.heappop(queue)
                if self._http.get(unit, {}).get(instance) != target:
                    continue  # no longer wanted (or replaced, with its own queue entry)
                self._in_flight += 1
                self._client.check(
                    target.url, target.timeout, functools.partial(self._done, instance, target)
                )
                # Every interval from the planned time; a checker that fell behind
                # (at most max_in_flight at once) starts over from now, not in a burst.
                due = (
                    due + target.interval if due + target.interval > now else now + target.interval
                )
                heapq.heappush(queue, (due, seq, instance, unit, target))
            await asyncio.sleep(TICK)

    def _done(self, instance: str, target: Target, status: int, error: str) -> None:
        self._in_flight -= 1
        self.checks_run += 1
        state = self._states.get(instance, {}).get("http")
        if (
            state is None
            or self._http.get(self._owner.get(instance, ""), {}).get(instance) != target
        ):
            return  # the target changed while the check was in flight
        passed = 200 <= status < 300
        state.record(passed, self.clock(), "" if passed else error or f"HTTP {status}")

    async def _presence_loop(self, unit: str) -> None:
        loop = asyncio.get_running_loop()
        while True:
            table = self._targets.get(unit) or {}
            targets = [t for t in table.values() if t.etcd_key]
            if not targets or self.read_presence is None:
                return
            interval = min(t.interval for t in targets)
            started = time.monotonic()
            by_space: dict[str, list[Target]] = {}
            for t in targets:
                by_space.setdefault(t.keyspace, []).append(t)
            for space, group in by_space.items():
                directory = common_directory([t.etcd_key for t in group])
                try:
                    present = await loop.run_in_executor(
                        self._pool, self.read_presence, space, directory
                    )
                    error = ""
                except KayleeError as exc:  # etcd trouble: no verdict either way this round
                    log.warning("health: reading %s (%s) failed: %s", directory, space, exc)
                    continue
                self.checks_run += 1
                now = self.clock()
                for t in group:
                    state = self._states.get(t.instance, {}).get("etcdKey")
                    if state is not None:
                        found = t.etcd_key in present
                        error = "" if found else f"{t.etcd_key} ({space}) is not there"
                        state.record(found, now, error)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
