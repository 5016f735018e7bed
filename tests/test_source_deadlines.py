"""Git with deadlines: a remote that accepts and never answers, SIGTERM during a fetch,
and a fetch that cannot even start git.

The hung remote is a real TCP server on 127.0.0.1 that accepts connections and never
says a word; git talks to it over ``http://``. It counts the connections it accepted:
each is one fetch attempt, which is what the tests assert on (never on wall-clock time).
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from kaylee_sync.election import lead_once
from kaylee_sync.source import GitSource, SourceSettings, SourceUnavailable
from kaylee_sync.store import Store
from kaylee_sync.sync.status import read_status
from tests.gitrepo import two_units, unit_yaml
from tests.gitrepo import unit_json as spec
from tests.polling import wait_for
from tests.test_gitops_daemon import image_of, running


class SilentRemote:
    """Accepts every connection, reads nothing, answers nothing; counts and holds them."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self._server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/team/units.git"
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def accepted(self) -> int:
        return len(self.connections)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return  # closed
            self.connections.append(conn)

    def hung_up(self, index: int) -> bool:
        """True once the client of connection ``index`` closed it (git was killed)."""
        conn = self.connections[index]
        conn.setblocking(False)
        try:
            return conn.recv(65536) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def close(self) -> None:
        self._server.close()
        for conn in self.connections:
            conn.close()


@pytest.fixture
def silent() -> Iterator[SilentRemote]:
    remote = SilentRemote()
    yield remote
    remote.close()


class Clock:
    """The monotonic clock, plus whatever the test skips forward."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skipped


def hung_source(silent: SilentRemote, tmp_path: Path, timeout: float, **kw: object) -> GitSource:
    settings = SourceSettings(silent.url, cache_dir=tmp_path / "cache", timeout=timeout)
    return GitSource(settings, **kw)  # type: ignore[arg-type]


# --- the source alone ---------------------------------------------------------------------


def test_a_failed_fetch_is_not_tried_again_for_as_long_as_it_took(
    silent: SilentRemote, tmp_path: Path
) -> None:
    clock = Clock()
    with hung_source(silent, tmp_path, 0.5, clock=clock) as source:
        with pytest.raises(SourceUnavailable, match=r"no answer within 0\.5 s$"):
            source.fetch()
        assert silent.accepted == 1
        # At once again (a new leader's first sync after the standby's fetch): the same
        # reason, and no second attempt on the remote.
        with pytest.raises(SourceUnavailable, match=r"no answer within 0\.5 s \(next attempt"):
            source.fetch()
        assert silent.accepted == 1
        clock.skipped = 60.0  # as long as the failure took, and more: tried again
        with pytest.raises(SourceUnavailable, match=r"no answer within 0\.5 s$"):
            source.fetch()
        assert silent.accepted == 2


def test_cancel_kills_a_hung_fetch_with_its_helpers_and_refuses_later_ones(
    silent: SilentRemote, tmp_path: Path
) -> None:
    failures: list[BaseException] = []
    with hung_source(silent, tmp_path, 600) as source:

        def fetch() -> None:
            try:
                source.fetch()
            except SourceUnavailable as exc:
                failures.append(exc)

        thread = threading.Thread(target=fetch, daemon=True)
        thread.start()
        wait_for(lambda: silent.accepted == 1, timeout=30, what="git connected")
        source.cancel()
        thread.join(60)
        assert not thread.is_alive(), "the fetch went on after cancel()"
        assert len(failures) == 1
        assert "shutting down" in str(failures[0])
        # git-remote-http held the connection: it is closed, so the helper is gone too
        wait_for(lambda: silent.hung_up(0), timeout=30, what="the git helper hung up")
        with pytest.raises(SourceUnavailable, match="shutting down"):
            source.fetch()
    assert silent.accepted == 1


class FewFileDescriptors:
    """Lowers this process's open-file limit to what is open now, then restores it."""

    def __enter__(self) -> FewFileDescriptors:
        self.limits = resource.getrlimit(resource.RLIMIT_NOFILE)
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, self.limits[1]))
        self.held = []
        try:  # fill the holes below the limit too
            while True:
                self.held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self.held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, self.limits)


def test_a_fetch_that_cannot_start_git_is_an_unavailable_remote(tmp_path: Path) -> None:
    repo = two_units(tmp_path / "repo")
    settings = SourceSettings(f"file://{repo.path}", cache_dir=tmp_path / "cache")
    skew = [0.0]  # a failed fetch is retried after as long as it took: skip that wait
    with GitSource(settings, clock=lambda: time.monotonic() + skew[0]) as source:
        source.fetch()
        with FewFileDescriptors(), pytest.raises(SourceUnavailable) as failed:
            source.fetch()
        assert "Too many open files" in str(failed.value)
        skew[0] += 3600
        assert source.fetch() == repo.head()  # and all is well once descriptors are back


# --- in the daemon ------------------------------------------------------------------------


def test_a_hung_remote_costs_one_timeout_before_the_first_status(
    silent: SilentRemote, tmp_path: Path, store: Store
) -> None:
    """The standby's fetch hangs, it becomes leader meanwhile, and the leader's first sync
    records that failure without trying the remote a second time."""
    with hung_source(silent, tmp_path, 8.0) as source, ExitStack() as other:
        other.enter_context(lead_once(store, "another-daemon", ttl=60))
        with running(source, store) as daemon:
            wait_for(lambda: silent.accepted == 1, timeout=30, what="the standby's fetch")
            assert not daemon.is_leader()
            other.close()  # the other leader resigns while the fetch hangs
            status = wait_for(lambda: read_status(store), timeout=60, what="the first status")
            assert not status.attempt.ok
            assert "no answer within 8 s" in status.attempt.error
            assert silent.accepted == 1  # one attempt, one timeout
            assert daemon.is_leader()


def test_the_daemon_records_a_fetch_that_cannot_start_git_and_goes_on(
    tmp_path: Path, store: Store
) -> None:
    repo = two_units(tmp_path / "repo")
    settings = SourceSettings(f"file://{repo.path}", path="units", cache_dir=tmp_path / "cache")
    with GitSource(settings) as source, running(source, store) as daemon:
        wait_for(lambda: image_of(store, "web") is not None, timeout=30, what="the first sync")
        with FewFileDescriptors():
            daemon.queue.request("test")
            wait_for(
                lambda: daemon.last_result is not None and not daemon.last_result.ok,
                timeout=30,
                what="the failed sync",
            )
        status = read_status(store)
        assert status is not None and not status.attempt.ok
        assert "Too many open files" in status.attempt.error
        # still running, and syncing again now that descriptors are back
        repo.write("units/web.yaml", unit_yaml("web", "example.com/web:2"))
        repo.commit("web 2")
        daemon.queue.request("test")
        want = spec("web", "example.com/web:2")
        wait_for(lambda: image_of(store, "web") == want, timeout=30, what="the next sync")


# --- a daemon process ---------------------------------------------------------------------


def test_sigterm_stops_a_daemon_stuck_in_a_fetch(
    silent: SilentRemote, tmp_path: Path, etcd_args: list[str]
) -> None:
    """The fetch would hang for the default 120 s; SIGTERM ends the process long before."""
    script = Path(sys.executable).parent / "kaylee-sync"
    args = [
        str(script) if script.exists() else "kaylee-sync",
        *etcd_args,
        "--repo", silent.url,
        "--cache-dir", str(tmp_path / "cache"),
        "--listen", "127.0.0.1:0",
        "--no-scheduler",
    ]  # fmt: skip
    with open(tmp_path / "daemon.log", "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: silent.accepted == 1, timeout=60, what="the daemon's fetch")
        proc.send_signal(signal.SIGTERM)
        # generous: a loaded machine; the point is "not after the fetch's 120 s"
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = (tmp_path / "daemon.log").read_text()
    assert code == 0, output
    assert "Traceback" not in output
    wait_for(lambda: silent.hung_up(0), timeout=30, what="git's helper to hang up")
