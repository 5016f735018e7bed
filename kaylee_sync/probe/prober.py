"""The leader's health checker: every instance's checks, on one event loop of its own.

The scheduler hands over each unit's :class:`~kaylee_sync.health.checks.Target` list on
every pass (``set_targets``) and reads verdicts back (``health``); the checking itself
runs here, in a thread with an asyncio loop, so that

- a slow or hanging endpoint costs one pending coroutine, never a scheduler pass, and
  never another unit's checks (design.md: a slow unit never blocks another);
- at most ``max_in_flight`` checks are in flight at once, whatever the fleet's size;
- each instance is checked every ``interval``, its first check spread over the interval
  (by a hash of its name) so that 2,500 instances are not all checked in the same tick;
- presence keys are read with one range read per unit and interval, not one per
  instance, in a small thread pool (the etcd clients block).

Results are folded by ``health.checks`` (pure), which is where "healthy" is defined.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from kaylee_sync.errors import KayleeError
from kaylee_sync.health.checks import CheckState, Health, Target, combine, common_directory
from kaylee_sync.probe.http import HttpProber, ProbeFailed

log = logging.getLogger(__name__)

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
        self._http: dict[str, dict[str, tuple[Target, asyncio.Task[None]]]] = {}
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

    def __enter__(self) -> Prober:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._sem = asyncio.Semaphore(self.max_in_flight)
        self._client = HttpProber()
        for unit, table in list(self._targets.items()):  # given before the loop ran
            loop.call_soon(self._sync, unit, table)
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            tasks = [t for _, t in (v for d in self._http.values() for v in d.values())]
            tasks += self._presence.values()
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
        running = self._http.setdefault(unit, {})
        for instance, (target, task) in list(running.items()):
            if table.get(instance) != target:
                task.cancel()
                del running[instance]
                self._states.pop(instance, None)  # another target: its results do not carry
        for instance in [i for i in self._states if self._owner.get(i) == unit]:
            if table.get(instance) is None:
                del self._states[instance]
        for instance, target in table.items():
            self._owner[instance] = unit
            kinds = self._states.setdefault(instance, {})
            if target.url and instance not in running:
                kinds["http"] = CheckState(failures=target.failures)
                running[instance] = (target, asyncio.ensure_future(self._http_loop(target)))
            if target.etcd_key:
                kinds.setdefault("etcdKey", CheckState(failures=1))
        for instance in [i for i, u in self._owner.items() if u == unit and i not in table]:
            del self._owner[instance]
        if not running:
            del self._http[unit]
        presence = self._presence.get(unit)
        if any(t.etcd_key for t in table.values()) and (presence is None or presence.done()):
            self._presence[unit] = asyncio.ensure_future(self._presence_loop(unit))

    async def _http_loop(self, target: Target) -> None:
        phase = (zlib.crc32(target.instance.encode()) % 1000) / 1000 * target.interval
        await asyncio.sleep(min(phase, target.interval))
        while True:
            started = time.monotonic()
            async with self._sem:
                try:
                    status = await self._client.status(target.url, target.timeout)
                    passed, error = 200 <= status < 300, f"HTTP {status}"
                except ProbeFailed as exc:
                    passed, error = False, str(exc)
            self.checks_run += 1
            state = self._states.get(target.instance, {}).get("http")
            if state is not None:
                state.record(passed, self.clock(), "" if passed else error)
            await asyncio.sleep(max(0.0, target.interval - (time.monotonic() - started)))

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
