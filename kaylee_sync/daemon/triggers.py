"""One funnel for every reason to sync: poll ticks, new local commits, webhooks, startup.

Everything that wants a sync calls :meth:`SyncQueue.request`; one worker calls
:meth:`SyncQueue.wait` and runs a sync per answer. Requests made while a sync runs are
coalesced into exactly one more run (their reasons joined, for the log), so a burst of
triggers — a push that fires a webhook and a poll at once, a rebase that rewrites a ref
ten times — costs one sync, and two syncs never overlap.

:class:`Triggers` owns the feeders that are not somebody else's callback:

- an APScheduler 3.x interval job (``coalesce=True, max_instances=1``, so a stalled
  process that wakes up fires once, not once per missed tick), with jitter so that the
  daemons of a cluster do not poll the Git server in lockstep;
- a watchdog observer on the directories holding git's ref files. Git replaces
  ``refs/heads/<branch>``, ``packed-refs`` and ``HEAD`` by renaming a ``.lock`` file
  over them, which a watch on the file itself would miss (the watched inode is gone), so
  the *directories* are watched and events are filtered on their source/destination
  path. Each change requests a sync at once; the queue merges those that come while
  a sync runs into one more.

Both are supervised (:mod:`kaylee_sync.supervise`) when given a :class:`Loops`: every
poll tick beats the ``poll`` heartbeat (so a timer thread that died or hangs turns
/healthz red one interval plus the bound later), and the request thread and the
observer thread count as dead if they end before :meth:`Triggers.stop`. The request
loop survives any exception.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from datetime import UTC
from pathlib import Path
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from watchdog.events import (
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from kaylee_sync.supervise import FOREVER, Heartbeat, Loops

log = logging.getLogger(__name__)

#: There is no debounce. A ``git commit`` changes a watched ref once (the rename of its
#: ``.lock``), and the events of a longer burst (a rebase, a fetch of many branches) that
#: arrive while a sync runs are merged by the queue into one more sync. A sync that
#: finds nothing new is an incremental one (tens of ms at 10,000 units), about what a
#: fixed delay would cost every commit; the delay of 25 ms that was here (75 ms before)
#: was most of commit → etcd (bench/commit_latency, issue 14).
#: what changes a ref. Not opens and closes: every ``git status`` — and every sync, which
#: reads HEAD — opens these files, and a sync must not trigger the next one.
REF_CHANGES = (FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileDeletedEvent)


class SyncQueue:
    """A coalescing "sync now" request slot. Thread-safe; one consumer, many producers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        # dict as an ordered set: reasons in arrival order, each once
        self._reasons: dict[str, None] = {}
        self._closed = False

    def request(self, reason: str) -> None:
        """Ask for a sync. Any number of requests before the next :meth:`wait` are one."""
        with self._cond:
            if self._closed:
                return
            self._reasons[reason] = None
            self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> str | None:
        """Block until a request is pending; return its reasons (``"webhook, poll"``).

        Returns None on timeout or once the queue is closed.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._reasons or self._closed, timeout)
            if self._closed or not self._reasons:
                return None
            reasons = ", ".join(self._reasons)
            self._reasons.clear()
            return reasons

    def close(self) -> None:
        """Wake every waiter with None; later requests are ignored."""
        with self._cond:
            self._closed = True
            self._reasons.clear()
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class _RefEvents(FileSystemEventHandler):
    """Turns filesystem events on the watched ref files into sync requests."""

    def __init__(self, queue: SyncQueue, targets: set[str], heartbeat: Heartbeat) -> None:
        self.queue = queue
        self.targets = targets
        self.heartbeat = heartbeat  # idle forever: it waits for events that may never come
        self._cond = threading.Condition()
        self._armed = False  # a ref changed since the last request
        self._stopping = False
        self.thread = threading.Thread(target=self._run, name="kaylee-ref-requests", daemon=True)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if not isinstance(event, REF_CHANGES):
            return
        paths = [event.src_path, getattr(event, "dest_path", "")]
        if not any(p and os.path.abspath(os.fsdecode(p)) in self.targets for p in paths):
            return
        with self._cond:
            self._armed = True
            self._cond.notify_all()

    def _run(self) -> None:
        failures = self.heartbeat.failures
        while True:
            try:
                if not self._step():
                    self.heartbeat.stopped()
                    return
                failures.succeeded()
            except Exception as exc:
                time.sleep(failures.failed(exc))  # this thread has no stop event to wait on

    def _step(self) -> bool:
        """Wait for a ref change and request a sync; False once stopping."""
        with self._cond:
            self._cond.wait_for(lambda: self._stopping or self._armed)
            if self._stopping:
                return False
            self._armed = False
        # Outside the lock: the observer's events never wait for the queue.
        self.queue.request("commit")
        return True

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()


class Triggers:
    """The poll timer and the ref watcher, both feeding one :class:`SyncQueue`."""

    def __init__(
        self,
        queue: SyncQueue,
        *,
        interval: float = 30.0,
        jitter: float = 0.1,
        watch_paths: Sequence[Path] = (),
        loops: Loops | None = None,
        stuck_after: float = 300.0,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"poll interval must be positive, not {interval!r}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter is a fraction of the interval in [0, 1), not {jitter!r}")
        self.queue = queue
        self.interval = interval
        self.jitter = jitter
        self.watch_paths = tuple(Path(os.path.abspath(p)) for p in watch_paths)
        self._scheduler: Any = None
        self._observer: Any = None
        self._events: _RefEvents | None = None
        self._loops = loops or Loops()
        self._stuck_after = stuck_after
        self._poll_beat: Heartbeat | None = None
        self._observer_beat: Heartbeat | None = None

    def start(self) -> None:
        """Request a "startup" sync, then start polling and watching."""
        self.queue.request("startup")
        self._start_poll()
        if self.watch_paths:
            self._start_watch()

    def stop(self) -> None:
        """Stop both feeders and join their threads. Safe to call twice or before start."""
        for beat in (self._poll_beat, self._observer_beat):
            if beat is not None:
                beat.stopped()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        if self._observer is not None:
            self._observer.stop()
            self._observer.join()
            self._observer = None
        if self._events is not None:
            self._events.stop()
            self._events.thread.join()
            self._events = None

    def _start_poll(self) -> None:
        # UTC everywhere: an interval needs no calendar, and it keeps tzlocal (which may
        # warn about the host's time zone configuration) out of the picture.
        scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            timezone=UTC,
        )
        trigger = IntervalTrigger(
            seconds=self.interval,
            jitter=self.interval * self.jitter or None,
            timezone=UTC,
        )
        beat = self._loops.add("poll", self._stuck_after)
        longest = self.interval * (1 + self.jitter)  # the longest gap between two ticks
        beat.beat(idle=longest)
        self._poll_beat = beat

        def tick() -> None:
            beat.beat(idle=longest)
            self.queue.request("poll")

        scheduler.add_job(
            tick,
            trigger,
            id="poll",
            coalesce=True,
            max_instances=1,
            # a tick that fires late (a suspended laptop, a loaded host) still counts
            misfire_grace_time=None,
        )
        scheduler.start()
        self._scheduler = scheduler

    def _start_watch(self) -> None:
        watched: dict[str, bool] = {}  # directory -> recursive
        for path in self.watch_paths:
            directory = path.parent
            recursive = False
            # A ref in a directory that does not exist yet (refs/heads/team/x before its
            # first commit): watch the nearest existing ancestor recursively instead, but
            # never above refs/ (a recursive watch on a working tree or / would be costly).
            while not directory.is_dir() and "refs" in directory.parent.parts:
                directory = directory.parent
                recursive = True
            if not directory.is_dir():
                log.warning("cannot watch %s for new commits (polling only): no directory", path)
                continue
            key = str(directory)
            watched[key] = watched.get(key, False) or recursive
        targets = {str(p) for p in self.watch_paths} | {
            os.path.realpath(p) for p in self.watch_paths
        }
        beat = self._loops.add("ref-watch", self._stuck_after)
        beat.beat(idle=FOREVER)
        events = _RefEvents(self.queue, targets, beat)
        beat.attach(events.thread)
        events.thread.start()
        self._events = events
        # Started before scheduling, so that each directory's watch starts (and can fail)
        # on its own: one unwatchable directory must not cost the others.
        observer = Observer()
        observer.start()
        self._observer = observer
        self._observer_beat = self._loops.add("ref-observer", self._stuck_after)
        self._observer_beat.beat(idle=FOREVER)
        self._observer_beat.attach(observer)
        for folder, recursive in sorted(watched.items()):
            try:
                observer.schedule(
                    events, folder, recursive=recursive, event_filter=list(REF_CHANGES)
                )
            except OSError as exc:
                # Polling still works; a missing watch only makes commits show up later.
                log.warning("cannot watch %s for new commits (polling only): %s", folder, exc)
            else:
                log.debug("watching %s for new commits", folder)
