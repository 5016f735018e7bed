"""Leader election on an etcd v3 lease: at most one daemon does leader work at a time.

Every node runs a daemon, but only one may sync Git and drive the scheduler. The leader
holds the ``master`` key, bound to a lease that it keeps alive; if the leader dies, etcd
deletes the key when the lease expires and a standby takes over. The rest of the daemon
only sees two callbacks, ``on_elected`` and ``on_lost``.

The rules that make this safe (see design.md, "Leader election" and "Fenced writes"):

* Campaign: only when ``master`` is absent, grant a lease and write ``master`` = our id in
  a transaction that requires the key to be absent (create revision 0). Two candidates
  may both try; etcd lets exactly one transaction win.
* Standby: a watch on ``master`` wakes us as soon as it is deleted (a resign or an expired
  lease); a poll every ``lease_ttl/3`` covers a watch that broke.
* Leading: renew the lease every ``lease_ttl/3`` ± jitter and check that ``master`` still
  holds our id. A failed renewal, a lost key, or no successful renewal within
  ``lease_ttl - safety_margin`` of the last one's start means ``on_lost`` at once, so
  leader work stops *before* etcd can let the lease expire and elect someone else.
  Renewals run on a helper thread so that a hung etcd cannot hold us past that deadline.
  (Fenced writes protect the data even if leader work is slow to stop.)
* Resign (SIGTERM): ``on_lost``, then revoke the lease: the key disappears at once and a
  standby takes over without waiting for the TTL.
* Back after an outage: a leader that stepped down because etcd was unreachable leads
  again at once if ``master`` still holds its id *at the create revision it won* and its
  lease can still be renewed: the key never went away, so nobody else led meanwhile
  (etcd keeps leases across a restart). Otherwise it revokes the lease, and ``master``
  is free for the next campaign without waiting for the TTL.

Callbacks run on the election thread (``on_lost`` from :meth:`Election.resign` may run on
the caller's thread instead) and must be quick: set an event, never do the work there.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from kaylee_sync.errors import StoreError, StoreUnavailable
from kaylee_sync.store import MASTER, Compare, Op, Store
from kaylee_sync.supervise import FOREVER, Heartbeat

log = logging.getLogger(__name__)
T = TypeVar("T")

# How often a helper-thread call checks the leader deadline: bounds how late on_lost can
# be when etcd hangs (well below any sensible safety margin).
_DEADLINE_STEP = 0.05
# Longest wait between two attempts while etcd is unreachable: an etcd that comes back
# is noticed (and a leader elected) within about this long.
_RETRY_CAP = 1.0
# resign() waits this long for the election thread; it is a daemon thread, so a thread
# stuck in a store call cannot keep the process alive anyway.
_JOIN_TIMEOUT = 5.0
# the bound of an election round nobody watches (no heartbeat given)
_UNWATCHED = 300.0


def make_identity() -> str:
    """``host:pid:random``: unique per process start, readable in ``etcdctl get`` output."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def current_leader(store: Store) -> str | None:
    """The id held in ``master``, None when no daemon leads right now."""
    return store.leader()


@contextmanager
def lead_once(store: Store, identity: str, ttl: int) -> Iterator[None]:
    """Lead for one short job (``kaylee-sync --once``, ``apply``) if nobody leads.

    ``master`` is taken on a lease of ``ttl`` seconds (long enough for the job: it is not
    renewed) and revoked afterwards; StoreError names the leader if one is running, so
    a one-off job never writes beside a daemon.
    """
    lease = store.lease(ttl)
    try:
        if not store.txn([Compare.missing(MASTER)], [Op.put(MASTER, identity, lease=lease)]):
            raise StoreError(
                f"{store.leader() or 'another process'} is leading; a daemon already syncs "
                "this cluster (stop it, or let it do the work)"
            )
        yield
    finally:
        store.revoke(lease)


@dataclass(frozen=True)
class ElectionSettings:
    """Timing of the election. Defaults follow design.md."""

    lease_ttl: int = 10
    """Seconds the ``master`` lease lives without renewal (etcd leases are whole seconds,
    etcd's minimum is 2). Default 10 s: a dead leader is replaced within ~10 s, and a
    leader survives a few seconds of etcd trouble before it must step down."""

    keepalive_fraction: float = 1 / 3
    """The lease is renewed every ``lease_ttl`` times this; the standby poll uses it too.
    A third leaves room for two failed renewals before the deadline (as etcd's own
    clients do)."""

    jitter: float = 0.1
    """Each renewal interval is spread by ±this fraction, so daemons started together
    do not renew in lock-step forever."""

    safety_margin: float = 2.0
    """Seconds before the lease's expiry at which a leader that could not renew considers
    itself deposed. Covers the time leader work needs to notice ``on_lost`` and a clock
    running slightly faster on the etcd server. Default 2 s of the 10 s TTL."""

    def __post_init__(self) -> None:
        if self.lease_ttl < 2:
            raise ValueError(
                f"lease_ttl must be at least 2 s (etcd's minimum), not {self.lease_ttl}"
            )
        if not 0 < self.keepalive_fraction < 1 or not 0 <= self.jitter < 1:
            raise ValueError("keepalive_fraction must be in (0, 1) and jitter in [0, 1)")
        longest = self.keepalive_interval * (1 + self.jitter)
        if not 0 < self.safety_margin < self.lease_ttl - longest:
            # Otherwise even a leader whose renewals all succeed would miss its deadline.
            raise ValueError(
                f"safety_margin must be positive and below {self.lease_ttl - longest:.2f} s "
                f"(the TTL minus the longest renewal interval), not {self.safety_margin}"
            )

    @classmethod
    def for_ttl(cls, lease_ttl: int) -> ElectionSettings:
        """Settings for a ``--lease-ttl``: the margin shrinks with short TTLs (a fifth of
        the TTL, at least 1 s, at most the default 2 s) so every TTL etcd allows works."""
        return cls(lease_ttl=lease_ttl, safety_margin=min(2.0, max(1.0, lease_ttl / 5)))

    @property
    def keepalive_interval(self) -> float:
        return self.lease_ttl * self.keepalive_fraction

    @property
    def renew_within(self) -> float:
        """Seconds after a renewal's start by which the next one must have succeeded."""
        return self.lease_ttl - self.safety_margin


class _DeadlinePassed(Exception):
    """A leader's store call did not finish before the leader deadline."""


class Election:
    """Campaign for ``master`` on a daemon thread; report leadership through callbacks."""

    def __init__(
        self,
        store: Store,
        identity: str,
        settings: ElectionSettings,
        on_elected: Callable[[], None],
        on_lost: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._store = store
        self.identity = identity
        self.settings = settings
        self._on_elected = on_elected
        self._on_lost = on_lost
        self._clock = clock
        self._rand = rand
        self._lock = threading.Lock()
        self._leader = False
        self._deadline: float | None = None
        # The lease we granted and have not revoked yet (leading, or left over).
        self._lease: int | None = None
        self._won_revision = 0  # master's create revision while we hold it (0: unknown)
        self._etcd_problem: str | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()  # master deleted (or stopping): campaign now
        self._crashed = False  # test hook: exit like a killed process would
        self._thread: threading.Thread | None = None
        self._watch_cancel: Callable[[], None] | None = None
        self._watch_thread: threading.Thread | None = None

    # -- public ------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        # Also false past the deadline, even if the election thread has not caught up yet.
        with self._lock:
            return self._leader and self._deadline is not None and self._clock() < self._deadline

    @property
    def etcd_unreachable(self) -> str | None:
        """Why the last election round trip to etcd failed; None once etcd answered again
        (for ``/readyz``: a process that cannot reach etcd can neither lead nor stand by)."""
        return self._etcd_problem

    @property
    def leader_deadline(self) -> float | None:
        """Clock time at which leadership is lost unless a renewal succeeds; None if standby."""
        with self._lock:
            return self._deadline if self._leader else None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("an Election can only be started once")
        self._thread = threading.Thread(target=self._run, name="kaylee-election", daemon=True)
        self._thread.start()

    def resign(self) -> None:
        """Step down for good: ``on_lost`` if leading, revoke the lease, end the thread.

        Idempotent. Revoking deletes ``master`` at once, so a standby takes over without
        waiting for the TTL.
        """
        self._stop.set()
        self._wake.set()
        self._abdicate()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(_JOIN_TIMEOUT)

    close = resign

    def _crash(self) -> None:
        """Test hook: stop renewing without revoking or calling back, like ``kill -9``."""
        self._crashed = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(_JOIN_TIMEOUT)

    # -- the election thread -------------------------------------------------------------

    #: the election loop's sign of life (kaylee_sync.supervise), set by the process that
    #: runs it; None: nobody watches. A class attribute, so that it needs no constructor
    #: argument.
    heartbeat: Heartbeat | None = None

    def _run(self) -> None:
        """Campaign, lead, stand by, until resigned. No exception ends it: a StoreError is
        retried with backoff, anything else (a bug) is logged once with its traceback,
        leadership is dropped and the loop goes on. While leading, the renewal deadline
        is the heartbeat (a stuck renewal loses leadership by the clock), so the loop's
        heartbeat is suspended for that time."""
        beat = self.heartbeat or Heartbeat("election", _UNWATCHED)
        failures = beat.failures
        errors = 0
        try:
            while not self._stop.is_set():
                beat.beat()
                try:
                    self._watch_master()
                    self._wake.clear()  # before reading master: a later delete wakes us
                    if self._campaign():
                        self._close_watch()  # nothing to wait for while leading
                        beat.beat(idle=FOREVER)
                        self._lead()
                    else:
                        beat.beat(idle=self.settings.keepalive_interval)
                        self._wake.wait(self.settings.keepalive_interval)
                    errors = 0
                    failures.succeeded()
                except StoreError as exc:
                    errors += 1
                    # Capped at the poll interval so a recovered etcd is noticed quickly.
                    delay = min(
                        0.5 * 2 ** (errors - 1), self.settings.keepalive_interval, _RETRY_CAP
                    )
                    log.warning("leader election: %s; retrying in %.1fs", exc, delay)
                    beat.beat(idle=delay)
                    self._stop.wait(delay)
                except Exception as exc:
                    # A bug: never keep leading on an unknown state, but keep campaigning.
                    self._lose("unexpected error")
                    delay = min(failures.failed(exc), self.settings.keepalive_interval)
                    beat.beat(idle=delay)
                    self._stop.wait(delay)
        except BaseException as exc:  # not re-raised: threading would print it again
            log.critical("leader election: the loop died", exc_info=exc)
            beat.died(f"{type(exc).__name__}: {exc}")
        finally:
            self._close_watch()
            if not self._crashed:
                self._abdicate()
            if self._stop.is_set():
                beat.stopped()

    def _campaign(self) -> bool:
        """Try to take ``master``; True when we now hold it."""
        try:
            won = self._try_campaign()
        except StoreUnavailable as exc:
            self._etcd_problem = str(exc)
            raise
        self._etcd_problem = None
        return won

    def _try_campaign(self) -> bool:
        with self._lock:
            stale, self._lease = self._lease, None
        if stale is not None and self._etcd_problem is not None:
            try:
                if self._resume(stale):
                    return True
            except StoreUnavailable:
                with self._lock:
                    self._lease = stale  # try again next round
                raise
            # Left over from lost leadership: revoke it so our old key (if any) goes now.
            try:
                self._store.revoke(stale)
            except StoreUnavailable:
                with self._lock:
                    self._lease = stale  # try again next round
                raise
        if self._store.get(MASTER) is not None:
            return False  # granting a lease per poll would only churn leases
        started = self._clock()  # the server's TTL starts after this: a safe lower bound
        lease = self._store.lease(self.settings.lease_ttl)
        with self._lock:
            self._lease = lease
        won = self._store.txn([Compare.missing(MASTER)], [Op.put(MASTER, self.identity, lease)])
        if not won:
            return False  # the next round revokes the unused lease
        return self._become_leader(started, "elected leader as %s")

    def _become_leader(self, started: float, message: str) -> bool:
        """Lead from a lease confirmed at ``started``; False if resigned meanwhile."""
        with self._lock:
            if self._stop.is_set():
                return False  # resigned meanwhile: _run's exit revokes the lease
            self._leader = True
            self._deadline = started + self.settings.renew_within
        log.info(message, self.identity)
        self._notify(self._on_elected, "on_elected")
        return True

    def _resume(self, lease: int) -> bool:
        """Lead again on ``lease`` if ``master`` has been ours all along (see the module doc)."""
        holder = self._store.get(MASTER)
        if (
            not self._won_revision
            or holder is None
            or holder.value != self.identity.encode()
            or holder.create_revision != self._won_revision
        ):
            return False
        started = self._clock()
        if self._store.refresh_lease(lease) <= 0:
            return False
        with self._lock:
            self._lease = lease
        return self._become_leader(
            started, "leading again as %s: master and its lease outlived the outage"
        )

    def _lead(self) -> None:
        """Renew until leadership is lost or we stop."""
        while True:
            with self._lock:
                deadline, lease = self._deadline, self._lease
            if deadline is None or lease is None:
                return  # resign() abdicated from another thread
            # Fixed rate, counted from the last renewal's *start* (which is what the server's
            # TTL counts from too): a slow renewal shortens the next wait, never the margin.
            since = self._clock() - (deadline - self.settings.renew_within)
            if self._wait(max(0.0, self._keepalive_interval() - since)):
                return
            started = self._clock()
            problem: str | None = "no renewal before the deadline (was the process paused?)"
            try:
                if started < deadline:
                    problem = self._call_until(functools.partial(self._renew, lease), deadline)
            except _DeadlinePassed:
                problem = f"etcd did not answer within {self.settings.renew_within:g}s"
                self._etcd_problem = problem
            except StoreError as exc:
                problem = str(exc)
                if isinstance(exc, StoreUnavailable):
                    self._etcd_problem = problem
            if problem is None:
                self._etcd_problem = None
            else:
                self._lose(problem)
                return
            with self._lock:
                if not self._leader:
                    return
                self._deadline = started + self.settings.renew_within

    def _renew(self, lease: int) -> str | None:
        """One renewal; returns why leadership is lost, None when all is well."""
        if self._store.refresh_lease(lease) <= 0:
            return "the lease expired"
        holder = self._store.get(MASTER)
        if holder is None:
            return "the master key was deleted"
        if holder.value != self.identity.encode():
            return f"the master key is held by {holder.value.decode(errors='replace')}"
        self._won_revision = holder.create_revision
        return None

    def _keepalive_interval(self) -> float:
        spread = self.settings.jitter * (2 * self._rand() - 1)
        return self.settings.keepalive_interval * (1 + spread)

    def _wait(self, seconds: float) -> bool:
        """Sleep unless stopping; True when stopping. Tests patch this to see the schedule."""
        return self._stop.wait(seconds)

    def _call_until(self, fn: Callable[[], T], deadline: float) -> T:
        """``fn()`` on a helper thread; _DeadlinePassed if the clock reaches ``deadline``.

        A call still running then is abandoned: it ends on its own with the store's
        timeout, and its result is dropped.
        """
        done = threading.Event()
        outcome: list[T] = []
        failure: list[BaseException] = []

        def call() -> None:
            try:
                outcome.append(fn())
            except BaseException as exc:  # handed to the election thread, never lost
                failure.append(exc)
            finally:
                done.set()

        threading.Thread(target=call, name="kaylee-election-call", daemon=True).start()
        while not done.wait(max(0.0, min(deadline - self._clock(), _DEADLINE_STEP))):
            if self._clock() >= deadline:
                raise _DeadlinePassed
        if failure:
            raise failure[0]
        return outcome[0]

    def _lose(self, reason: str) -> None:
        with self._lock:
            was_leader, self._leader, self._deadline = self._leader, False, None
        if was_leader:
            log.warning("lost leadership: %s", reason)
            self._notify(self._on_lost, "on_lost")

    def _abdicate(self) -> None:
        """on_lost (if leading), then revoke our lease; safe to call from both threads."""
        with self._lock:
            was_leader, self._leader, self._deadline = self._leader, False, None
            lease, self._lease = self._lease, None
        if was_leader:
            log.info("resigning leadership")
            self._notify(self._on_lost, "on_lost")  # leader work stops before a successor starts
        if lease is not None:
            try:
                self._store.revoke(lease)
            except StoreError as exc:
                log.warning("could not revoke the leader lease (%s); it expires by itself", exc)

    def _notify(self, callback: Callable[[], None], name: str) -> None:
        try:
            callback()
        except Exception:
            log.exception("leader election: %s callback failed", name)

    # -- standby: wake when master is deleted ----------------------------------------------

    def _watch_master(self) -> None:
        if self._watch_thread is not None and self._watch_thread.is_alive():
            return
        events, self._watch_cancel = self._store.watch_prefix(MASTER)

        def pump() -> None:
            try:
                for event in events:
                    if event.type == "delete" and event.key == MASTER:
                        self._wake.set()
            except StoreError as exc:
                log.info("leader election: watch on master ended (%s); polling", exc)
            except Exception:
                log.exception("leader election: watch on master failed; polling")
            finally:
                self._wake.set()  # re-check now; the next round opens a new watch

        self._watch_thread = threading.Thread(
            target=pump, name="kaylee-election-watch", daemon=True
        )
        self._watch_thread.start()

    def _close_watch(self) -> None:
        cancel, self._watch_cancel = self._watch_cancel, None
        if cancel is not None:
            cancel()
        self._watch_thread = None
