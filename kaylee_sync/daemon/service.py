"""One process wiring for ``kaylee-sync`` and ``kaylee server``.

Both programs are the same long-running process: a leader election, the scheduler
(leader only), the HTTP listener (``/healthz``, ``/readyz``, ``/metrics``), systemd's
notify protocol with its watchdog, and signal handling — :class:`Service` here.
``kaylee server`` is exactly this; the GitOps daemon
(:class:`~kaylee_sync.daemon.daemon.Daemon`) is this plus a Git source, its sync worker
and its triggers. Neither owns a second election or scheduler.

Startup, in order: the listener (probes answer from the first moment, "not ready"), the
election, the scheduler loop, the program's own work, READY=1, then the monitor (which
feeds the watchdog).
Shutdown, when ``should_exit`` is set (SIGTERM/SIGINT, see :mod:`.lifecycle`):
STOPPING=1, the program's work stops taking requests, the loops are woken and joined
(a transaction in flight completes — each is atomic — and no new one starts; the joins
are bounded well inside systemd's TimeoutStopSec), leadership is resigned (the lease
revoked, so a standby takes over at once), and the listener closes last.

Every long-running loop is supervised (:mod:`kaylee_sync.supervise`): it survives any
exception, and has a heartbeat. ``/healthz`` fails — and the systemd watchdog stops
being fed, so systemd restarts the process — when a loop is dead or stuck past its
bound. When the dead or stuck loop is one that only works while leading (the scheduler,
the sync worker), the process also **resigns leadership for good**: a leader whose
scheduler is dead would otherwise keep the lease forever while nothing rolls out, and
a standby in that state must not win the next election either. It then stays unhealthy
until it is restarted, even if the stuck loop comes back, so that it is restarted.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kaylee_sync.daemon.fleetmeter import MeteredFleet
from kaylee_sync.daemon.http import HttpServer
from kaylee_sync.daemon.lifecycle import Lifecycle
from kaylee_sync.daemon.metrics import Metrics
from kaylee_sync.daemon.notify import Notifier
from kaylee_sync.daemon.triggers import SyncQueue
from kaylee_sync.election import Election, ElectionSettings, make_identity
from kaylee_sync.feedback import Feedback
from kaylee_sync.fleet.protocol import FleetClient
from kaylee_sync.probe import cluster_prober
from kaylee_sync.scheduler.decide import Decision
from kaylee_sync.scheduler.runner import Scheduler, SchedulerSettings
from kaylee_sync.store import Store
from kaylee_sync.supervise import Heartbeat, Loops

log = logging.getLogger(__name__)

#: the listener of ``kaylee server``: beside ``kaylee-sync``'s 9420, so both can run on
#: one node (each for its own cluster, or during a migration) without a clash
SERVER_LISTEN = "127.0.0.1:9421"
#: seconds shutdown waits for the loops in all before resigning anyway: well inside the
#: units' TimeoutStopSec=30s, which must also cover the resign and the listener's close
SHUTDOWN_GRACE = 15.0


@dataclass(frozen=True)
class ServiceSettings:
    listen: str | None = SERVER_LISTEN
    """Address of the HTTP listener (/healthz, /readyz, /metrics); None: off."""
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    election: ElectionSettings = field(default_factory=ElectionSettings)
    schedule: bool = True
    """Run the scheduler when leader (off: another process schedules)."""
    stuck_after: float = 300.0
    """Seconds one step of a loop (a scheduler pass, a sync, an election round) may take
    before the loop counts as stuck and /healthz fails. Default 5 min: far beyond any
    healthy pass, and beyond a sync that pays the git timeout (120 s) twice;
    ``kaylee-sync`` raises it to twice its ``--git-timeout`` plus 30 s if that is more."""
    check_interval: float = 1.0
    """Seconds between the monitor's health checks (which feed the watchdog)."""

    def __post_init__(self) -> None:
        if not (self.stuck_after > 0 and math.isfinite(self.stuck_after)):
            raise ValueError(f"stuck_after must be a positive number, not {self.stuck_after!r}")
        if not (self.check_interval > 0 and math.isfinite(self.check_interval)):
            raise ValueError(f"check_interval must be positive, not {self.check_interval!r}")


class MeasuredScheduler(Scheduler):
    """The scheduler, telling the metrics how many units are in each rollout phase.

    The phases come from the decisions of every complete pass as leader (the same facts
    the scheduler writes to ``scheduler/rollouts/<name>``), so the gauge costs no read.
    It also counts this term's complete passes, for readiness.
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
        #: told of every complete pass's decisions (commit statuses, notifications)
        self.feedback: Feedback | None = None
        self.term_passes = 0

    def became_leader(self) -> None:
        self.term_passes = 0
        super().became_leader()

    def run_pass(self) -> list[Decision]:
        decisions = super().run_pass()
        if self.is_leader():  # an abandoned pass has not looked at every unit
            phases = Counter(d.phase.value for d in decisions if d.phase != "deleted")
            self.metrics.set_rollouts(phases)
            self.metrics.set_unit_phases(
                {d.unit: d.phase.value for d in decisions if d.phase != "deleted"}
            )
            if self.feedback is not None:
                self.feedback.rollout(decisions)
            self.term_passes += 1
        return decisions


class Service:
    """Election, scheduler, listener, systemd: the process ``kaylee server`` runs."""

    program = "kaylee server"

    def __init__(
        self,
        store: Store,
        fleet: FleetClient | None,
        settings: ServiceSettings,
        identity: str | None = None,
        *,
        webhook_secret: str | None = None,
    ) -> None:
        self.settings = settings
        self.identity = identity or make_identity()
        self.store = store
        self.lifecycle = Lifecycle()
        self.should_exit = self.lifecycle.should_exit
        #: the "sync now" funnel: the daemon's worker serves it; the server has no reader
        #: (its listener has no webhook, so nothing is ever put in)
        self.queue = SyncQueue()
        self.loops = Loops()
        self.metrics = Metrics(loops=self.loops)
        self.notifier = Notifier()
        self.election = Election(store, self.identity, settings.election, self._elected, self._lost)
        self.election.heartbeat = self.loops.add("election", settings.stuck_after)
        # The leader's health checker (units with a health: section), on its own loop.
        schedules = fleet is not None and settings.schedule
        self.prober = cluster_prober(store, store.settings) if schedules else None
        self.scheduler: MeasuredScheduler | None = (
            MeasuredScheduler(
                store,
                MeteredFleet(fleet, self.metrics),
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
        # Bound now, not at start: a bad or busy --listen is a one-line error up front.
        self.http = (
            HttpServer(
                settings.listen,
                queue=self.queue,
                metrics=self.metrics,
                health=self.health,
                ready=self.ready,
                webhook_secret=webhook_secret,
            )
            if settings.listen
            else None
        )
        self._threads: list[threading.Thread] = []
        self._gave_up: str | None = None
        self.lifecycle.on_exit(self.wake)

    # -- what a program adds (the daemon overrides these) ------------------------------

    def describe(self) -> str:
        return "starting; waiting to become leader"

    def start_work(self) -> None:
        """Start the program's own loops (after the election and the scheduler)."""

    def stop_work(self) -> None:
        """Stop taking requests: the first step of shutdown."""

    def wake(self) -> None:
        """Exit was requested (maybe from a signal handler): wake every waiting loop."""
        if self.scheduler is not None:
            self.scheduler.trigger()

    def elected(self) -> None:
        self.notifier.status("leader; scheduling")

    def lost(self) -> None:
        self.notifier.status("standby")

    def etcd_problem(self) -> str | None:
        """Why etcd cannot be reached now (None when it can): no process is ready then."""
        problem = self.election.etcd_unreachable
        return None if problem is None else f"etcd unreachable: {problem}"

    def ready(self) -> tuple[bool, str]:
        if (problem := self.etcd_problem()) is not None:
            return False, problem
        if not self.is_leader():
            return True, "standby"
        if self.scheduler is not None and self.scheduler.term_passes == 0:
            return False, "leader; first scheduler pass not done yet"
        return True, "leader; scheduling"

    # -- leadership ----------------------------------------------------------------------

    def is_leader(self) -> bool:
        return self.election.is_leader

    def _elected(self) -> None:
        log.info("%s: became leader; reconciling everything", self.identity)
        self.metrics.set_leader(True)
        if self.scheduler is not None:
            self.scheduler.became_leader()
        self.elected()

    def _lost(self) -> None:
        if self.should_exit.is_set() or self._gave_up is not None:
            log.info("%s: resigned; leader work stops", self.identity)
        else:
            log.warning("%s: leadership lost; leader work stops", self.identity)
        self.metrics.set_leader(False)
        self.metrics.set_rollouts({})  # a standby reconciles nothing
        self.metrics.set_unit_phases({})
        if self.scheduler is not None:
            self.scheduler.trigger()
        self.lost()

    # -- health --------------------------------------------------------------------------

    def health(self) -> tuple[bool, str]:
        """Alive unless a loop is dead or stuck (or leadership was given up for that)."""
        if self._gave_up is not None:
            return False, f"{self._gave_up}; restart the process"
        problems = self.loops.problems()
        if problems:
            return False, "; ".join(p.reason for p in problems)
        return True, "ok"

    def _monitor(self, beat: Heartbeat) -> None:
        """Check the loops every second: resign when a leader-only one failed, and feed
        systemd's watchdog (every half WatchdogSec) only while all are healthy."""
        interval = self.notifier.watchdog_interval
        check = min(self.settings.check_interval, interval or math.inf)
        last_ping = -math.inf
        while not self.should_exit.is_set():
            beat.beat()
            self._give_up_on_failed_loops()
            now = time.monotonic()
            if interval is not None and now - last_ping >= interval and self.health()[0]:
                self.notifier.watchdog()
                last_ping = now
            beat.beat(idle=check)
            self.should_exit.wait(check)

    def _give_up_on_failed_loops(self) -> None:
        if self._gave_up is not None or self.should_exit.is_set():
            return
        failed = [p for p in self.loops.problems() if p.leader_only]
        if not failed:
            return
        reason = failed[0].reason
        self._gave_up = f"gave up leadership because {reason}"
        log.error(
            "%s: %s; resigning so that a standby takes over. This process stays "
            "unhealthy (/healthz 503, no watchdog keep-alive) until it is restarted",
            self.identity,
            reason,
        )
        self.notifier.status(f"unhealthy: {reason}")
        self.election.resign()

    # -- the lifecycle ---------------------------------------------------------------------

    def run(self) -> None:
        """Run until ``should_exit`` is set (SIGTERM/SIGINT on the main thread), then
        shut down in order."""
        try:
            with self.lifecycle.signals():
                log.info("%s: %s", self.identity, self.describe())
                try:
                    self._start()
                    while not self.should_exit.wait(1.0):
                        pass
                finally:
                    self._shutdown()
        finally:
            self.close_listener()  # also when the signals could not even be set up

    def close_listener(self) -> None:
        """Release the listening socket (idempotent; also for a service never started)."""
        if self.http is not None:
            self.http.stop()

    def start_loop(
        self, name: str, target: Callable[[Heartbeat], None], stuck_after: float, leader_only: bool
    ) -> None:
        thread = self.loops.start(
            name, target, self.should_exit, stuck_after=stuck_after, leader_only=leader_only
        )
        self._threads.append(thread)

    def _start(self) -> None:
        if self.http is not None:
            self.http.start()
            log.info("HTTP listener on %s (/healthz /readyz /metrics)", self.http.url)
        self.election.start()
        scheduler = self.scheduler
        if scheduler is not None and self.prober is not None:
            self.prober.start()
            watch = self.loops.add("scheduler-watch", self.settings.stuck_after)
            self.start_loop(
                "scheduler",
                lambda beat: scheduler.run(self.should_exit, beat, watch),
                self.settings.stuck_after,
                leader_only=True,
            )
        self.start_work()
        self.notifier.ready("waiting for leadership")
        self.start_loop("watchdog", self._monitor, self.settings.stuck_after, leader_only=False)

    def _shutdown(self) -> None:
        self.should_exit.set()  # also when _start failed half-way
        self.notifier.stopping()
        self.stop_work()
        self.wake()
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("%s did not stop in time; resigning anyway", thread.name)
        if self.prober is not None:
            self.prober.stop()
        self.election.resign()
        self.metrics.set_leader(False)
        if self.http is not None:
            self.http.stop()
        log.info("%s: stopped", self.identity)
