"""The loop every simulated fleetd component runs in: tick, then wait to be woken.

fleet's engine and agents are periodic reconcilers that also react to registry events
(``pkg.NewPeriodicReconciler``). Here a thread calls ``tick()``, then waits on an event
until the interval passes, someone calls ``wake()`` (the registry watcher does), or
``stop()`` is called; nothing ever sleeps uninterruptibly, so stopping is prompt.
A failing tick is logged and the loop goes on, as fleetd does when etcd hiccups.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class Worker:
    """Subclasses implement ``tick()``, returning seconds until they need to run again
    (None = just the regular interval), and may override ``on_stop()``."""

    def __init__(self, name: str, interval: float) -> None:
        self.name = name
        self.interval = interval
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.ticks = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the loop to end and wait for it (``on_stop`` runs in the thread)."""
        self.signal_stop()
        self.join(timeout)

    def signal_stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def join(self, timeout: float = 5.0) -> None:
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def tick(self) -> float | None:
        raise NotImplementedError

    def on_stop(self) -> None:
        """Runs in the worker thread after the last tick."""

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            soon: float | None = None
            try:
                soon = self.tick()
            except Exception:
                log.exception("%s: reconcile failed; retrying next interval", self.name)
            self.ticks += 1
            wait = self.interval if soon is None else min(self.interval, max(soon, 0.0))
            # A transition due "now" still yields briefly rather than spinning.
            wait = max(wait, 0.005)
            self._wake.wait(wait)
        try:
            self.on_stop()
        except Exception:
            log.exception("%s: clean shutdown failed", self.name)
