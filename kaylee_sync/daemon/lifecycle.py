"""When a process stops: ``should_exit``, the signals that set it, and who to wake.

Both long-running programs (``kaylee-sync`` and ``kaylee server``) stop the same way,
as uvicorn's server does: SIGTERM or SIGINT sets one ``should_exit`` event and calls
the wakers (a queue to close, a scheduler to wake, a hung git child to kill), the main
thread — waiting on that event — then runs the shutdown in order. A second SIGINT
means the user has lost patience: the process exits at once (130), skipping the
graceful part. The handlers are installed only while the process runs and the previous
ones are restored afterwards, so tests can run servers in-process and on threads (where
no handler is installed at all: Python allows them only on the main thread).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)

HANDLED = (signal.SIGTERM, signal.SIGINT)
#: the exit status of a forced exit, as a shell reports a process ended by SIGINT
FORCED_EXIT = 130


class Lifecycle:
    """``should_exit`` and the signal handlers that set it."""

    def __init__(self) -> None:
        self.should_exit = threading.Event()
        self._wakers: list[Callable[[], None]] = []

    def on_exit(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` when exit is requested (from the signal handler: keep it quick)."""
        self._wakers.append(wake)

    def exit(self, why: str = "") -> None:
        """Request a graceful stop: set ``should_exit``, then call every waker."""
        if why:
            log.info("%s: stopping", why)
        self.should_exit.set()
        for wake in self._wakers:
            try:
                wake()
            except Exception:  # one waker's bug must not keep the others from running
                log.exception("waking a loop for shutdown failed")

    @contextmanager
    def signals(self) -> Iterator[None]:
        """Handle SIGTERM/SIGINT while inside; restore the previous handlers after.

        Does nothing off the main thread (an in-process test's server thread).
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._handle) for s in HANDLED}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.should_exit.is_set() and signum == signal.SIGINT:
            os._exit(FORCED_EXIT)  # a second Ctrl-C: the user means it
        self.exit(f"received {signal.Signals(signum).name}")
