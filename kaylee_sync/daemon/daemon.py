"""``kaylee-sync --repo …``: the process of ``kaylee server`` plus a Git source.

Every node runs one. The election picks a leader; only the leader syncs and schedules,
the others keep a warm clone (they fetch on every poll) so that a failover needs no
clone. Everything that wants a sync — the poll timer, a new local commit, a webhook,
startup, becoming leader — goes through one coalescing :class:`SyncQueue` served by one
supervised worker thread, so two syncs never run at once and a burst of triggers costs
one sync.

The election, the scheduler, the listener, systemd notify, signals and the order of
startup and shutdown are :class:`~kaylee_sync.daemon.service.Service`'s, the same as
``kaylee server``'s; this module adds the source, the worker and the triggers. The
worker survives any exception (logged once with its traceback, then a backoff and a
retry) and has a heartbeat; it counts as leader work, so a worker that is dead or stuck
makes the process resign (see :mod:`.service`).

What is and is not an error: a sync cut short because this process stopped leading is
expected during a handover and is neither counted nor logged as one; a sync that lost a
race with a concurrent change in etcd is counted, and re-planned at once (once) instead
of waiting for the next poll.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from kaylee_sync.daemon.requests import SyncRequests
from kaylee_sync.daemon.service import Service, ServiceSettings
from kaylee_sync.daemon.triggers import Triggers
from kaylee_sync.errors import KayleeError
from kaylee_sync.feedback import Feedback, FeedbackSettings
from kaylee_sync.fleet.protocol import FleetClient
from kaylee_sync.source import GitSource, redact
from kaylee_sync.store import Store
from kaylee_sync.supervise import Heartbeat
from kaylee_sync.sync.syncer import Syncer, SyncResult, SyncSettings

log = logging.getLogger(__name__)

#: the reason given to the re-plan that follows a conflict (never retried in turn)
RETRY = "retry after a conflict"


#: the reason given to a sync retried after an unexpected error
RECOVER = "retry after an unexpected error"
#: seconds the worker waits for a request before it beats its heartbeat again
IDLE = 1.0


@dataclass(frozen=True)
class DaemonSettings(ServiceSettings):
    listen: str | None = "127.0.0.1:9420"
    """Address of the HTTP listener (/healthz, /readyz, /metrics, /hooks/git); None: off."""
    interval: float = 30.0
    """Seconds between polls of the repository (with 10 % jitter)."""
    webhook_secret: str | None = field(default=None, repr=False)
    """Shared secret of POST /hooks/git (GitHub HMAC or GitLab token); None: endpoint off."""
    sync: SyncSettings = field(default_factory=SyncSettings)
    feedback: FeedbackSettings = field(default_factory=FeedbackSettings)
    """Commit statuses and notifications (issue 15); by default none."""


class Daemon(Service):
    program = "kaylee-sync"

    def __init__(
        self,
        source: GitSource,
        store: Store,
        fleet: FleetClient | None,
        settings: DaemonSettings,
        identity: str | None = None,
    ) -> None:
        super().__init__(store, fleet, settings, identity, webhook_secret=settings.webhook_secret)
        try:
            self._init_daemon(source, store, settings)
        except BaseException:
            self.close_listener()  # bound by Service; nothing will ever stop it otherwise
            raise

    def _init_daemon(self, source: GitSource, store: Store, settings: DaemonSettings) -> None:
        self.settings: DaemonSettings = settings
        self.source = source
        self.feedback = Feedback(settings.feedback)  # commit statuses, notifications
        if self.scheduler is not None:
            self.scheduler.feedback = self.feedback  # rollout states
        self.syncer = Syncer(
            source, store, settings.sync, identity=self.identity, is_leader=self.is_leader
        )
        self.triggers = Triggers(
            self.queue,
            interval=settings.interval,
            watch_paths=source.watch_paths(),
            loops=self.loops,
            stuck_after=settings.stuck_after,
        )
        self.requests = SyncRequests(store, self.queue, self.is_leader, self.identity)
        self.last_result: SyncResult | None = None
        self._fetched = False
        #: the unexpected error the last sync or fetch ended with (None: it did not)
        self._crashed: str | None = None

    # -- the parts of the lifecycle the daemon adds -------------------------------------

    def describe(self) -> str:
        return (
            f"starting on {self.source.display_repo} (branch {self.source.branch or 'default'}, "
            f"path {self.source.settings.path!r})"
        )

    def start_work(self) -> None:
        self.start_loop("sync", self._work, self.settings.stuck_after, leader_only=True)
        self.triggers.start()
        self.requests.start()

    def stop_work(self) -> None:
        self.triggers.stop()
        self.requests.stop()
        self.queue.close()

    def wake(self) -> None:
        super().wake()
        self.queue.close()  # the worker's wait returns at once; later requests are dropped
        if self.should_exit.is_set():
            # A fetch hung in the worker is killed (its process group), so that SIGTERM
            # does not wait for git's timeout (the unit's TimeoutStopSec is 30 s).
            self.source.cancel()

    def elected(self) -> None:
        self.last_result = None  # ready again only after this term's first sync
        self.feedback.became_leader()
        self.queue.request("leader")

    def lost(self) -> None:
        pass  # the worker sees is_leader() turn false; the status follows the next sync

    def _shutdown(self) -> None:
        super()._shutdown()
        self.feedback.close()  # after resigning: a few seconds to deliver what is queued

    def ready(self) -> tuple[bool, str]:
        if (problem := self.etcd_problem()) is not None:
            return False, problem
        if self._crashed is not None:
            return False, f"the last sync failed unexpectedly ({self._crashed}); retrying"
        if self.is_leader():
            result = self.last_result
            if result is None:
                return False, "leader; first sync not done yet"
            return (True, "leader; synced") if result.ok else (False, f"leader; {result.error}")
        return (True, "standby; clone ready") if self._fetched else (False, "standby; cloning")

    # -- the worker ------------------------------------------------------------------------

    def _work(self, beat: Heartbeat) -> None:
        """Serve the queue until shutdown: a sync as leader, a fetch as standby."""
        while not self.should_exit.is_set():
            beat.beat(idle=IDLE)
            reason = self.queue.wait(timeout=IDLE)
            if reason is None or self.should_exit.is_set():
                continue
            beat.beat()
            try:
                if self.is_leader():
                    self._sync(reason)
                else:
                    self._warm(reason)
            except Exception as exc:
                self.metrics.error("other")
                self._crashed = f"{type(exc).__name__}: {exc}"
                delay = beat.failures.failed(exc)
                beat.beat(idle=delay)
                if not self.should_exit.wait(delay):
                    self.queue.request(RECOVER)
            else:
                self._crashed = None
                beat.failures.succeeded()

    def _sync(self, reason: str) -> None:
        log.debug("sync requested (%s)", reason)
        # A new term reads and plans everything: another leader wrote in between.
        result = self.syncer.sync_once(full="leader" in (r.strip() for r in reason.split(",")))
        self._fetched = self._fetched or bool(result.commit)
        if result.deposed:
            return  # a handover, not an error; the new leader syncs
        self.last_result = result
        self.feedback.sync_result(  # feedback (issue 15): commit status and notifications
            result.commit, ok=result.ok, error=result.error, stage=result.stage, plan=result.plan
        )
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
        self.syncer.forget()  # nothing of a past term is kept (its watch would only grow)
        if reason.strip() == "leader":
            return
        try:
            commit = self.source.fetch()
            self._fetched = True
            self.notifier.status(f"standby; clone at {commit[:12]}")
        except KayleeError as exc:
            self.metrics.error("git")
            log.warning("standby fetch failed: %s", redact(str(exc)))
