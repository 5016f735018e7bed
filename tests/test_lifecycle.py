"""The lifecycle both programs share: signals set should_exit, wake the loops, and are
restored; a second Ctrl-C exits at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from kaylee_sync.daemon.lifecycle import FORCED_EXIT, Lifecycle

SLOW_SHUTDOWN = """
import sys, threading
from kaylee_sync.daemon.lifecycle import Lifecycle
life = Lifecycle()
with life.signals():
    print("running", flush=True)
    life.should_exit.wait()
    print("shutting down", flush=True)
    threading.Event().wait()  # a shutdown that never ends
"""


@pytest.fixture
def restored() -> Iterator[None]:
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    assert {s: signal.getsignal(s) for s in before} == before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_sets_should_exit_wakes_the_loops_and_the_handlers_are_restored(
    signum: signal.Signals, restored: None
) -> None:
    life = Lifecycle()
    woken: list[str] = []
    life.on_exit(lambda: woken.append("scheduler"))
    life.on_exit(lambda: 1 / 0)  # a broken waker does not stop the others
    life.on_exit(lambda: woken.append("queue"))
    with life.signals():
        os.kill(os.getpid(), signum)  # handled on this (the main) thread before kill returns
        assert life.should_exit.is_set()
    assert woken == ["scheduler", "queue"]


def test_off_the_main_thread_no_handler_is_installed(restored: None) -> None:
    life = Lifecycle()
    seen: list[object] = []

    def run() -> None:
        with life.signals():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [signal.getsignal(signal.SIGTERM)]


def test_a_second_ctrl_c_exits_at_once_while_shutdown_is_slow() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", SLOW_SHUTDOWN], stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == "running\n"
            child.send_signal(signal.SIGINT)
            assert child.stdout.readline() == "shutting down\n"
            child.send_signal(signal.SIGINT)
            assert child.wait(timeout=30) == FORCED_EXIT
        finally:
            child.kill()
