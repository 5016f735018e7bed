"""``kaylee-sync --repo …``: election, Git sync and the scheduler in one process.

Every node runs one. The election picks a leader; only the leader syncs and schedules,
the others keep a warm clone (they fetch on every poll) so that a failover needs no
clone. Everything that wants a sync — the poll timer, a new local commit, a webhook,
startup, becoming leader — goes through one coalescing :class:`SyncQueue` served by the
main thread, so two syncs never run at once and a burst of triggers costs one sync.

Lifecycle (as uvicorn's): ``should_exit`` is set by SIGTERM/SIGINT; the main loop then
stops taking requests, the scheduler thread finishes its pass, leadership is resigned
(the lease revoked, so a standby takes over at once) and systemd hears STOPPING=1.
A transaction in flight when the signal arrives completes — each one is atomic — and
no new one starts.

What is and is not an error: a sync cut short because this process stopped leading is
expected during a handover and is neither counted nor logged as one; a sync that lost a
race with a concurrent change in etcd is counted, and re-planned at once (once) instead
of waiting for the next poll.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kaylee_sync.daemon.http import HttpServer
from kaylee_sync.daemon.metrics import Metrics
from kaylee_sync.daemon.notify import Notifier
from kaylee_sync.daemon.triggers import SyncQueue, Triggers
from kaylee_sync.election import Election, ElectionSettings, make_identity
from kaylee_sync.errors import KayleeError
from kaylee_sync.fleet.protocol import FleetClient
from kaylee_sync.probe import cluster_prober
from kaylee_sync.scheduler.decide import Decision
from kaylee_sync.scheduler.runner import Scheduler, SchedulerSettings
from kaylee_sync.source import GitSource, redact
from kaylee_sync.store import Store
from kaylee_sync.sync.syncer import Syncer, SyncResult, SyncSettings

log = logging.getLogger(__name__)

#: the reason given to the re-plan that follows a conflict (never retried in turn)
RETRY = "retry after a conflict"


@dataclass(frozen=True)
class DaemonSettings:
    interval: float = 30.0
    """Seconds between polls of the repository (with 10 % jitter)."""
    listen: str | None = "127.0.0.1:9420"
    """Address of the HTTP listener (/healthz, /readyz, /metrics, /hooks/git); None: off."""
    webhook_secret: str | None = field(default=None, repr=False)
    """Shared secret of POST /hooks/git (GitHub HMAC or GitLab token); None: endpoint off."""
    sync: SyncSettings = field(default_factory=SyncSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    election: ElectionSettings = field(default_factory=ElectionSettings)
    schedule: bool = True
    """Run the scheduler when leader (off: sync only; another process schedules)."""


class _MeasuredScheduler(Scheduler):
    """The scheduler, telling the metrics how many units are in each rollout phase.

    The phases come from the decisions of every complete pass as leader (the same facts
    the scheduler writes to ``scheduler/rollouts/<name>``), so the gauge costs no read.
    """

    def __init__(
        self,
        store: Store,
        fleet: FleetClient,
        settings: SchedulerSettings,
        *,
        is_leader: Callable[[], bool],
        metrics: Metrics,
        **fencing: Any,
    ) -> None:
        super().__init__(store, fleet, settings, is_leader=is_leader, **fencing)
        self.metrics = metrics

    def run_pass(self) -> list[Decision]:
        decisions = super().run_pass()
        if self.is_leader():  # an abandoned pass has not looked at every unit
            phases = Counter(d.phase.value for d in decisions if d.phase != "deleted")
            self.metrics.set_rollouts(phases)
        return decisions


class Daemon:
    def __init__(
        self,
        source: GitSource,
        store: Store,
        fleet: FleetClient | None,
        settings: DaemonSettings,
        identity: str | None = None,
    ) -> None:
        self.settings = settings
        self.identity = identity or make_identity()
        self.source = source
        self.store = store
        self.should_exit = threading.Event()
        self.queue = SyncQueue()
        self.metrics = Metrics()
        self.notifier = Notifier()
        self.election = Election(store, self.identity, settings.election, self._elected, self._lost)
        self.syncer = Syncer(
            source, store, settings.sync, identity=self.identity, is_leader=self.is_leader
        )
        self.prober = cluster_prober(store, store.settings)
        self.scheduler: Scheduler | None = (
            _MeasuredScheduler(
                store,
                fleet,
                settings.scheduler,
                is_leader=self.is_leader,
                metrics=self.metrics,
                should_stop=self.should_exit.is_set,
                identity=self.identity,
                prober=self.prober,
            )
            if fleet is not None and settings.schedule
            else None
        )
        self.triggers = Triggers(
            self.queue, interval=settings.interval, watch_paths=source.watch_paths()
        )
        self.http = (
            HttpServer(
                settings.listen,
                queue=self.queue,
                metrics=self.metrics,
                health=self._health,
                ready=self._ready,
                webhook_secret=settings.webhook_secret,
            )
            if settings.listen
            else None
        )
        self.last_result: SyncResult | None = None
        self._fetched = False
        self._heartbeat = time.monotonic()

    # -- leadership ----------------------------------------------------------------------

    def is_leader(self) -> bool:
        return self.election.is_leader

    def _elected(self) -> None:
        log.info("%s: became leader; syncing and reconciling everything", self.identity)
        self.last_result = None  # ready again only after this term's first sync
        self.metrics.set_leader(True)
        if self.scheduler is not None:
            self.scheduler.became_leader()
        self.queue.request("leader")

    def _lost(self) -> None:
        if self.should_exit.is_set():
            log.info("%s: resigned; sync and scheduling stop", self.identity)
        else:
            log.warning("%s: leadership lost; sync and scheduling stop", self.identity)
        self.metrics.set_leader(False)
        self.metrics.set_rollouts({})  # a standby reconciles nothing
        if self.scheduler is not None:
            self.scheduler.trigger()

    # -- health --------------------------------------------------------------------------

    def _health(self) -> tuple[bool, str]:
        """Alive unless the sync loop is stuck: one pass over the loop (a sync, a fetch)
        may take a clone's or fetch's whole timeout, twice, before that counts as stuck."""
        stalled = time.monotonic() - self._heartbeat
        limit = max(60.0, 3 * self.settings.interval, 2 * self.source.settings.timeout + 30)
        if stalled > limit:
            return False, f"the sync loop has not run for {stalled:.0f} s"
        return True, "ok"

    def _ping_watchdog(self, interval: float) -> None:
        """systemd's watchdog hears from a thread of its own, so that a long first clone
        or a slow sync does not get the daemon killed (WatchdogSec is far shorter than a
        git timeout); it stops pinging once the loop is really stuck, and systemd
        restarts the daemon."""
        while not self.should_exit.wait(interval):
            if self._health()[0]:
                self.notifier.watchdog()

    def _ready(self) -> tuple[bool, str]:
        if (problem := self.election.etcd_unreachable) is not None:
            return False, f"etcd unreachable: {problem}"
        if self.is_leader():
            result = self.last_result
            if result is None:
                return False, "leader; first sync not done yet"
            return (True, "leader; synced") if result.ok else (False, f"leader; {result.error}")
        return (True, "standby; clone ready") if self._fetched else (False, "standby; cloning")

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        """Run until ``should_exit`` is set, then shut down cleanly."""
        log.info(
            "%s: starting on %s (branch %s, path %r)",
            self.identity,
            self.source.display_repo,
            self.source.branch or "default",
            self.source.settings.path,
        )
        sched_thread = None
        if self.http is not None:
            self.http.start()
            log.info("HTTP listener on %s (/healthz /readyz /metrics)", self.http.url)
        self.election.start()
        if self.scheduler is not None:
            self.prober.start()
            sched_thread = threading.Thread(
                target=self.scheduler.run, args=(self.should_exit,), name="scheduler", daemon=True
            )
            sched_thread.start()
        self.triggers.start()
        interval = self.notifier.watchdog_interval
        if interval is not None:
            threading.Thread(
                target=self._ping_watchdog, args=(interval,), name="watchdog", daemon=True
            ).start()
        self.notifier.ready("waiting for leadership")
        try:
            self._loop()
        finally:
            self.notifier.stopping()
            self.triggers.stop()
            self.queue.close()
            if self.scheduler is not None:
                self.scheduler.trigger()
            if sched_thread is not None:
                sched_thread.join(30)
            self.prober.stop()
            self.election.resign()
            self.metrics.set_leader(False)
            if self.http is not None:
                self.http.stop()
            log.info("%s: stopped", self.identity)

    def _loop(self) -> None:
        while not self.should_exit.is_set():
            self._heartbeat = time.monotonic()
            reason = self.queue.wait(timeout=1.0)
            if reason is None or self.should_exit.is_set():
                continue
            if self.is_leader():
                self._sync(reason)
            else:
                self._warm(reason)

    def _sync(self, reason: str) -> None:
        log.debug("sync requested (%s)", reason)
        result = self.syncer.sync_once()
        self._fetched = self._fetched or bool(result.commit)
        if result.deposed:
            return  # a handover, not an error; the new leader syncs
        self.last_result = result
        if result.ok:
            plan = result.plan
            self.metrics.observe_sync(
                result.duration,
                result.commit,
                result.lag,
                result.counts,
                len(plan.problems) if plan else 0,
                bool(plan and plan.prune_refused),
            )
            self.notifier.status(f"leader; synced {result.commit[:12]}")
        else:
            self.metrics.sync_failed(result.duration, result.stage or "other")
            self.notifier.status(f"leader; last sync failed: {result.error}")
            if result.conflict and RETRY not in reason:
                self.queue.request(RETRY)

    def _warm(self, reason: str) -> None:
        """A standby keeps its clone fresh so that taking over needs no clone."""
        if reason.strip() == "leader":
            return
        try:
            commit = self.source.fetch()
            self._fetched = True
            self.notifier.status(f"standby; clone at {commit[:12]}")
        except KayleeError as exc:
            self.metrics.error("git")
            log.warning("standby fetch failed: %s", redact(str(exc)))
