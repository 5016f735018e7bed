"""``kaylee server``: leader election and the scheduler in one process.

Every node may run it; the election lets exactly one schedule. The scheduler checks
``Election.is_leader`` — which turns false *before* the lease could expire on the
server — ahead of every write, so a deposed leader stops acting in time. SIGTERM or
SIGINT resigns (revoking the lease, so a standby takes over at once); a second SIGINT
exits immediately.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from types import FrameType

from kaylee_sync.election import Election, ElectionSettings, make_identity
from kaylee_sync.fleet.protocol import FleetClient
from kaylee_sync.probe import cluster_prober
from kaylee_sync.scheduler.runner import Scheduler, SchedulerSettings
from kaylee_sync.store import Store

log = logging.getLogger(__name__)


class SchedulerServer:
    def __init__(
        self,
        store: Store,
        fleet: FleetClient,
        scheduler: SchedulerSettings,
        election: ElectionSettings,
        identity: str | None = None,
    ) -> None:
        self.identity = identity or make_identity()
        self.should_exit = threading.Event()
        self.prober = cluster_prober(store, store.settings)
        self.scheduler = Scheduler(
            store,
            fleet,
            scheduler,
            is_leader=lambda: self.is_leader,
            should_stop=self.should_exit.is_set,
            identity=self.identity,
            prober=self.prober,
        )
        self.election = Election(
            store,
            self.identity,
            election,
            on_elected=self._elected,
            on_lost=self._lost,
        )

    @property
    def is_leader(self) -> bool:
        return self.election.is_leader

    def _elected(self) -> None:
        log.info("%s: became leader; reconciling everything", self.identity)
        self.scheduler.became_leader()

    def _lost(self) -> None:
        log.warning("%s: leadership lost; scheduler work stops", self.identity)
        self.scheduler.trigger()

    def run(self) -> None:
        """Run until ``should_exit`` is set (or a signal arrives), then resign."""
        log.info("%s: starting; waiting to become leader", self.identity)
        self.election.start()
        self.prober.start()
        try:
            self.scheduler.run(self.should_exit)
        finally:
            self.prober.stop()
            self.election.resign()
            log.info("%s: stopped", self.identity)

    def signals(self) -> AbstractContextManager[None]:
        """Handle SIGTERM/SIGINT while running; restore the previous handlers afterwards."""
        return exit_on_signals(self.should_exit, self.scheduler.trigger)


@contextmanager
def exit_on_signals(should_exit: threading.Event, wake: Callable[[], None]) -> Iterator[None]:
    """SIGTERM/SIGINT set ``should_exit`` (and call ``wake``); a second SIGINT exits at once.

    The previous handlers are restored on the way out, so tests can run servers in-process.
    """

    def handle(signum: int, frame: FrameType | None) -> None:
        if should_exit.is_set() and signum == signal.SIGINT:
            os._exit(130)  # a second Ctrl-C: the user means it
        log.info("received %s: resigning and stopping", signal.Signals(signum).name)
        should_exit.set()
        wake()

    previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
