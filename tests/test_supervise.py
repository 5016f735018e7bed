"""The supervision primitives on their own: backoff, logging once, stuck and dead loops.

Time is a fake clock here: a heartbeat's verdict depends only on the clock it is given.
"""

from __future__ import annotations

import logging
import math
import threading

import pytest

from kaylee_sync.supervise import FOREVER, Failures, Heartbeat, Loops
from tests.polling import wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def raised(exc: Exception) -> Exception:
    """``exc`` as a loop catches it: raised, with a traceback."""
    try:
        raise exc
    except Exception as caught:
        return caught


class Killed(BaseException):
    """What a test raises to end a loop's thread for good (nothing else can)."""


def test_a_failure_is_logged_once_with_its_traceback_and_repeats_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures = Failures("the test loop", first=0.5, cap=4.0)
    caplog.set_level(logging.INFO)
    delays = [failures.failed(raised(ValueError("bad record"))) for _ in range(5)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0]  # doubling, capped
    with_traceback = [r for r in caplog.records if r.exc_info]
    assert len(with_traceback) == 1 and with_traceback[0].levelno == logging.ERROR
    assert "bad record" in caplog.text and "5 in a row" in caplog.text
    assert caplog.text.count("Traceback") == 1

    # Another failure gets its own traceback; a success resets the backoff.
    failures.failed(raised(KeyError("other")))
    assert caplog.text.count("Traceback") == 2
    failures.succeeded()
    assert failures.failed(raised(ValueError("bad record"))) == 0.5
    assert failures.total == 7


def test_a_heartbeat_is_stuck_only_past_its_idle_time_plus_its_bound() -> None:
    clock = Clock()
    beat = Heartbeat("sync", stuck_after=10, clock=clock)
    beat.beat(idle=30)  # about to wait 30 s
    clock.now += 39
    assert beat.problem() is None
    clock.now += 2
    problem = beat.problem()
    assert problem is not None and "sync loop is stuck" in problem and "41 s" in problem
    beat.beat()
    assert beat.problem() is None
    beat.beat(idle=FOREVER)
    clock.now += 1e9
    assert beat.problem() is None
    beat.stopped()
    assert beat.problem() is None


def test_a_heartbeat_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="stuck_after"):
        Heartbeat("x", stuck_after=0)
    with pytest.raises(ValueError, match="already registered"):
        loops = Loops()
        loops.add("x", 1)
        loops.add("x", 1)


def test_a_supervised_loop_survives_exceptions_and_an_early_return() -> None:
    loops = Loops()
    stop = threading.Event()
    calls: list[int] = []

    def target(beat: Heartbeat) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        if len(calls) == 2:
            return  # ended although nobody asked it to
        stop.wait()

    thread = loops.start("work", target, stop, stuck_after=60)
    beat = loops.heartbeats()[0]
    beat.failures.first = 0.01  # no need to wait half a second twice
    wait_for(lambda: len(calls) == 3, timeout=10, what="the third start")
    assert thread.is_alive() and loops.problems() == []
    assert beat.failures.total == 2
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    assert loops.problems() == []  # stopped on purpose: not dead


def test_a_loop_whose_thread_ends_is_dead_and_says_why() -> None:
    loops = Loops()
    stop = threading.Event()

    def target(beat: Heartbeat) -> None:
        raise Killed("injected")

    thread = loops.start("scheduler", target, stop, stuck_after=60, leader_only=True)
    thread.join(5)
    [problem] = loops.problems()
    assert problem.loop == "scheduler" and problem.leader_only
    assert problem.reason == "the scheduler loop is dead (Killed: injected)"


def test_an_attached_thread_that_ends_makes_its_loop_dead() -> None:
    loops = Loops()
    beat = loops.add("ref-observer", 60)
    beat.beat(idle=math.inf)
    thread = threading.Thread(target=lambda: None)
    beat.attach(thread)
    thread.start()
    thread.join()
    assert [p.reason for p in loops.problems()] == [
        "the ref-observer loop is dead (its thread ended)"
    ]
