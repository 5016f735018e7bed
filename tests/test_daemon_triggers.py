"""The sync funnel: requests coalesce, the poll timer ticks, a real commit is noticed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaylee_sync.daemon.triggers import SyncQueue, Triggers
from tests.gitrepo import GitRepo

# --- SyncQueue ----------------------------------------------------------------------------


def test_wait_returns_the_reason_of_a_request() -> None:
    queue = SyncQueue()
    queue.request("webhook")
    assert queue.wait(0) == "webhook"
    assert queue.wait(0) is None


def test_requests_before_a_wait_are_one_run_with_their_reasons_joined_in_order() -> None:
    queue = SyncQueue()
    for reason in ("webhook", "poll", "webhook", "commit", "poll"):
        queue.request(reason)
    assert queue.wait(0) == "webhook, poll, commit"
    assert queue.wait(0) is None


def test_wait_times_out_with_none() -> None:
    queue = SyncQueue()
    started = time.monotonic()
    assert queue.wait(0.05) is None
    assert time.monotonic() - started >= 0.045


def test_a_blocked_wait_wakes_on_a_request_from_another_thread() -> None:
    queue = SyncQueue()
    timer = threading.Timer(0.05, queue.request, args=("poll",))
    timer.start()
    try:
        assert queue.wait(5) == "poll"
    finally:
        timer.join()


def test_close_wakes_a_waiter_with_none_and_drops_later_requests() -> None:
    queue = SyncQueue()
    queue.request("poll")
    got: list[str | None] = []
    waiter = threading.Thread(target=lambda: got.append(queue.wait(5) and queue.wait(5)))
    waiter.start()
    time.sleep(0.05)
    queue.close()
    waiter.join(2)
    assert not waiter.is_alive()
    assert got == [None]
    queue.request("webhook")
    assert queue.wait(0) is None
    assert queue.closed


def test_requests_during_a_sync_coalesce_into_one_more_run_and_none_are_lost() -> None:
    """Eight producers hammer the queue while a slow worker syncs.

    Every request is followed by a run that starts after it (none lost), and the
    thousands of requests cost only a handful of runs.
    """
    queue = SyncQueue()
    producers_done = threading.Event()
    runs: list[tuple[float, str]] = []  # (time the run took the request, reasons)
    last_request: dict[str, float] = {}
    lock = threading.Lock()

    def produce(name: str) -> None:
        for _ in range(500):
            with lock:
                last_request[name] = time.monotonic()
            queue.request(name)
            time.sleep(0.0001)

    def work() -> None:
        while True:
            reasons = queue.wait(0.2)
            if reasons is None:
                if producers_done.is_set():
                    return
                continue
            runs.append((time.monotonic(), reasons))
            time.sleep(0.02)  # the "sync"

    worker = threading.Thread(target=work)
    worker.start()
    producers = [threading.Thread(target=produce, args=(f"p{i}",)) for i in range(8)]
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    producers_done.set()
    worker.join(10)
    assert not worker.is_alive()

    total_requests = 8 * 500
    assert 1 <= len(runs) < total_requests / 20
    for name, requested_at in last_request.items():
        # the last request of each producer was taken by a run that began after it
        assert any(t >= requested_at and name in reasons.split(", ") for t, reasons in runs)


# --- Triggers -----------------------------------------------------------------------------


@pytest.fixture
def no_thread_leaks() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    leaked = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert leaked == []


def wait_for(queue: SyncQueue, word: str, timeout: float) -> tuple[str | None, float]:
    """Wait until a request mentioning ``word`` arrives; (reasons, seconds taken)."""
    started = time.monotonic()
    deadline = started + timeout
    while (left := deadline - time.monotonic()) > 0:
        reasons = queue.wait(left)
        if reasons is not None and word in reasons.split(", "):
            return reasons, time.monotonic() - started
    return None, time.monotonic() - started


def ref_paths(gitdir: Path, branch: str = "main") -> list[Path]:
    return [gitdir / "refs" / "heads" / branch, gitdir / "packed-refs", gitdir / "HEAD"]


def test_start_requests_a_startup_sync(no_thread_leaks: None) -> None:
    queue = SyncQueue()
    triggers = Triggers(queue, interval=60)
    triggers.start()
    try:
        assert queue.wait(1) == "startup"
    finally:
        triggers.stop()


def test_the_poll_timer_fires_every_interval(no_thread_leaks: None) -> None:
    queue = SyncQueue()
    triggers = Triggers(queue, interval=0.2, jitter=0.1)
    triggers.start()
    try:
        assert queue.wait(1) == "startup"
        ticks = []
        started = time.monotonic()
        for _ in range(3):
            assert queue.wait(1) == "poll"
            ticks.append(time.monotonic() - started)
    finally:
        triggers.stop()
    # three ticks of 0.2 s (+ up to 10 % jitter each): neither early nor very late
    assert 0.5 <= ticks[-1] <= 1.5


def test_missed_poll_ticks_coalesce_into_one_request(no_thread_leaks: None) -> None:
    queue = SyncQueue()
    triggers = Triggers(queue, interval=0.05, jitter=0)
    triggers.start()
    try:
        time.sleep(0.4)  # a long sync: about eight ticks pass unserved
        assert queue.wait(0) == "startup, poll"
    finally:
        triggers.stop()


def test_a_git_commit_is_requested_within_a_second(tmp_path: Path, no_thread_leaks: None) -> None:
    repo = GitRepo(tmp_path / "r")
    repo.commit("first")
    queue = SyncQueue()
    triggers = Triggers(queue, interval=60, watch_paths=ref_paths(repo.path / ".git"))
    triggers.start()
    try:
        assert queue.wait(1) == "startup"
        latencies = []
        for i in range(3):
            repo.write("a.yaml", f"n: {i}\n")
            started = time.monotonic()
            repo.commit(f"change {i}")
            reasons, _ = wait_for(queue, "commit", 1.0)
            latencies.append(time.monotonic() - started)
            assert reasons == "commit"
            # one commit (lock file, rename, reflog) is one request
            assert queue.wait(0.2) is None
    finally:
        triggers.stop()
    assert max(latencies) < 1.0
    print(f"commit-to-request latency: {', '.join(f'{x * 1000:.0f} ms' for x in latencies)}")


def test_packing_refs_and_moving_head_are_noticed(tmp_path: Path, no_thread_leaks: None) -> None:
    repo = GitRepo(tmp_path / "r")
    repo.commit("first")
    repo.git("branch", "other")
    queue = SyncQueue()
    triggers = Triggers(queue, interval=60, watch_paths=ref_paths(repo.path / ".git"))
    triggers.start()
    try:
        assert queue.wait(1) == "startup"
        repo.git("pack-refs", "--all")  # refs/heads/main moves into packed-refs
        assert wait_for(queue, "commit", 1.0)[0] == "commit"
        repo.git("symbolic-ref", "HEAD", "refs/heads/other")
        assert wait_for(queue, "commit", 1.0)[0] == "commit"
    finally:
        triggers.stop()


def test_reading_the_repository_or_touching_other_files_requests_nothing(
    tmp_path: Path, no_thread_leaks: None
) -> None:
    repo = GitRepo(tmp_path / "r")
    repo.commit("first")
    queue = SyncQueue()
    triggers = Triggers(queue, interval=60, watch_paths=ref_paths(repo.path / ".git"))
    triggers.start()
    try:
        assert queue.wait(1) == "startup"
        repo.git("log", "--oneline")  # opens HEAD and the ref: reads must not trigger
        repo.git("status")
        repo.git("config", "kaylee.test", "1")  # config.lock renamed over config
        repo.git("branch", "unwatched")  # another branch
        assert queue.wait(0.4) is None
    finally:
        triggers.stop()


def test_a_branch_whose_directory_does_not_exist_yet_is_still_watched(
    tmp_path: Path, no_thread_leaks: None
) -> None:
    repo = GitRepo(tmp_path / "r")
    repo.commit("first")
    queue = SyncQueue()
    gitdir = repo.path / ".git"
    triggers = Triggers(queue, interval=60, watch_paths=ref_paths(gitdir, "team/feature"))
    triggers.start()
    try:
        assert queue.wait(1) == "startup"
        repo.git("branch", "team/feature")  # creates refs/heads/team/ and the ref in it
        assert wait_for(queue, "commit", 1.0)[0] == "commit"
    finally:
        triggers.stop()


def test_stop_joins_every_thread_and_may_be_called_twice(tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "r")
    repo.commit("first")
    before = set(threading.enumerate())
    triggers = Triggers(SyncQueue(), interval=0.1, watch_paths=ref_paths(repo.path / ".git"))
    triggers.start()
    assert len(set(threading.enumerate()) - before) >= 3  # scheduler, observer, ref requests
    time.sleep(0.25)  # let a poll job run in the executor's worker thread
    triggers.stop()
    triggers.stop()
    assert set(threading.enumerate()) - before == set()


def test_stop_before_start_is_harmless() -> None:
    Triggers(SyncQueue()).stop()


@pytest.mark.parametrize(("interval", "jitter"), [(0, 0.1), (-1, 0.1), (30, 1.0), (30, -0.1)])
def test_nonsense_interval_or_jitter_is_refused(interval: float, jitter: float) -> None:
    with pytest.raises(ValueError, match=r"interval|jitter"):
        Triggers(SyncQueue(), interval=interval, jitter=jitter)


def test_an_unwatchable_path_is_a_warning_and_polling_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, no_thread_leaks: None
) -> None:
    queue = SyncQueue()
    missing = tmp_path / "no-repo" / ".git"
    with caplog.at_level(logging.WARNING, logger="kaylee_sync.daemon.triggers"):
        triggers = Triggers(queue, interval=0.1, jitter=0, watch_paths=ref_paths(missing))
        triggers.start()
    try:
        assert queue.wait(1) == "startup"
        assert queue.wait(1) == "poll"
    finally:
        triggers.stop()
    assert "polling only" in caplog.text
    assert not (tmp_path / "no-repo").exists()
