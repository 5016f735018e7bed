"""Loops that cannot die: faults injected into the real loops of both programs.

``kaylee-sync`` (:class:`Daemon`, with a real Git repository) and ``kaylee server``
(:class:`SchedulerServer`) run on a thread against the session etcd and the fleet
simulator, with their HTTP listener on a free port. A :class:`Fault` sits in front of
the first call of one loop's step (the syncer's ``sync_once``, the fleet driver's
``snapshot``, the election's campaign, the systemd watchdog ping) and, once armed,
raises an unexpected exception, hangs until released, or kills the thread with a
``BaseException``. The promises:

- after an exception the loop goes on (the next step succeeds), /healthz stays 200 and
  ``kaylee_sync_loop_failures{loop=…}`` counts it;
- a hang turns /healthz red and the process resigns leadership (a leader-only loop);
- a dead loop turns /healthz red, the process resigns, and systemd's watchdog is no
  longer fed.

Every wait is on an observable event (tests.polling.wait_for); nothing asserts timing.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kaylee_sync.daemon.daemon import Daemon, DaemonSettings
from kaylee_sync.daemon.notify import Notifier
from kaylee_sync.daemon.service import Service
from kaylee_sync.election import ElectionSettings
from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.fleet.registry import RegistryDriver
from kaylee_sync.fleetsim import SimulatedCluster
from kaylee_sync.scheduler.runner import SchedulerSettings
from kaylee_sync.server import SchedulerServer
from kaylee_sync.source import GitSource, SourceSettings
from kaylee_sync.store import Store
from tests.gitrepo import GitRepo, two_units, unit_yaml
from tests.gitrepo import unit_json as spec
from tests.polling import wait_for

# A lease long enough that a loaded machine does not lose it between renewals (a lost
# term would restart the scheduler's pass count); a first election is immediate anyway.
ELECTION = ElectionSettings(lease_ttl=6, safety_margin=2.0)
FAST = SchedulerSettings(stable=0.2, active_interval=0.1, resync=1.0)
PROGRAMS = ("kaylee-sync", "kaylee server")
#: the leader-only loops of each program (kaylee server has no sync loop)
LEADER_LOOPS = pytest.mark.parametrize(
    ("program", "loop"),
    [("kaylee-sync", "sync"), ("kaylee-sync", "scheduler"), ("kaylee server", "scheduler")],
)


class Killed(BaseException):
    """Ends a loop's thread for good: no loop catches a BaseException."""


class Fault:
    """Armed with "raise", "hang" or "kill" (or several: one per call, in order), it
    strikes at the next call."""

    def __init__(self) -> None:
        self.armed: list[str] = []
        self.hits = 0
        self.hanging = threading.Event()
        self.release = threading.Event()

    def arm(self, *kinds: str) -> None:
        self.armed = list(kinds)

    def strike(self) -> None:
        if not self.armed:
            return
        kind = self.armed.pop(0)
        self.hits += 1
        if kind == "raise":
            raise RuntimeError("injected: a record nobody foresaw")
        if kind == "hang":
            self.hanging.set()
            self.release.wait()
        elif kind == "kill":
            raise Killed("injected")

    def wrap(self, obj: Any, method: str) -> None:
        """Strike in front of ``obj.method`` (an instance attribute shadowing the method)."""
        original = getattr(obj, method)

        def faulty(*args: Any, **kwargs: Any) -> Any:
            self.strike()
            return original(*args, **kwargs)

        setattr(obj, method, faulty)


# -- the processes ------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return two_units(tmp_path / "repo")


@pytest.fixture
def source(repo: GitRepo) -> Iterator[GitSource]:
    with GitSource(SourceSettings(repo=str(repo.path), path="units")) as opened:
        yield opened


@pytest.fixture
def sim(etcd_endpoint: str, prefix: str) -> Iterator[SimulatedCluster]:
    with SimulatedCluster(
        etcd_endpoint, prefix, machines=[{}, {}], engine_interval=0.1, agent_interval=0.1,
        default_start_delay=0.1,
    ) as cluster:  # fmt: skip
        yield cluster


@pytest.fixture
def fleet(etcd_endpoint: str, prefix: str) -> Iterator[RegistryDriver]:
    driver = RegistryDriver(Etcd2Client(etcd_endpoint), prefix)
    yield driver
    driver.client.close()


def stacks() -> str:
    """Where every thread is, for a process that does not stop."""
    names = {t.ident: t.name for t in threading.enumerate()}
    return "\n".join(
        f"--- {names.get(ident, ident)}\n" + "".join(traceback.format_stack(frame))
        for ident, frame in sys._current_frames().items()
    )


@contextmanager
def running(service: Service) -> Iterator[Service]:
    thread = threading.Thread(target=service.run, name="test-service", daemon=True)
    thread.start()
    try:
        yield service
    finally:
        service.lifecycle.exit()
        thread.join(30)
        assert not thread.is_alive(), f"the process did not stop:\n{stacks()}"


def make(
    program: str, store: Store, fleet: Any, source: GitSource | None, **overrides: Any
) -> Service:
    if program == "kaylee-sync":
        assert source is not None
        settings = DaemonSettings(
            **{"listen": "127.0.0.1:0", "election": ELECTION, "scheduler": FAST, **overrides}
        )
        return Daemon(source, store, fleet, settings)
    return SchedulerServer(store, fleet, FAST, ELECTION, listen="127.0.0.1:0", **overrides)


def probe(service: Service, path: str) -> httpx.Response:
    assert service.http is not None
    return httpx.get(service.http.url + path, timeout=10)


def failures(service: Service, loop: str) -> float:
    text = probe(service, "/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "kaylee_sync_loop_failures_total" and sample.labels == {"loop": loop}:
                return sample.value
    raise AssertionError(f"no kaylee_sync_loop_failures series for {loop}")


def leading(service: Service, store: Store) -> bool:
    return service.is_leader() and store.leader() == service.identity


def scheduled(service: Service) -> bool:
    """A complete scheduler pass as leader in this term."""
    return service.scheduler is not None and service.scheduler.term_passes > 0


def wait_red(service: Service, words: str, timeout: float = 30) -> None:
    """Wait for /healthz to answer 503 with ``words`` in its reason."""
    seen: list[str] = []

    def check() -> bool:
        answer = probe(service, "/healthz")
        seen[:] = [f"{answer.status_code} {answer.text.strip()}"]
        return answer.status_code == 503 and words in answer.text

    try:
        wait_for(check, timeout, f"/healthz red with {words!r}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last answer: {seen}") from None


def inject(service: Service, fleet: RegistryDriver, loop: str) -> Fault:
    """A fault in front of the first call of one pass of ``loop``."""
    fault = Fault()
    if loop == "scheduler":
        fault.wrap(fleet, "snapshot")
    else:
        assert isinstance(service, Daemon)
        fault.wrap(service.syncer, "sync_once")
    return fault


def poke(service: Service, loop: str) -> None:
    """Make ``loop`` run a pass now."""
    if loop == "scheduler":
        assert service.scheduler is not None
        service.scheduler.trigger()
    else:
        service.queue.request("test")


def image(store: Store, name: str) -> str | None:
    stored = store.get_unit(name)
    return None if stored is None else stored.value.decode()


def beat_of(service: Service, loop: str) -> Any:
    return next(b for b in service.loops.heartbeats() if b.name == loop)


# -- an unexpected exception: the loop goes on ------------------------------------------


def test_the_sync_loop_goes_on_after_an_unexpected_exception(
    repo: GitRepo, source: GitSource, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = make("kaylee-sync", store, None, source)
    assert isinstance(daemon, Daemon)
    fault = Fault()
    fault.wrap(daemon.syncer, "sync_once")
    with running(daemon):
        wait_for(lambda: daemon.last_result is not None and daemon.last_result.ok, 20)
        fault.arm("raise", "hang")  # the retry waits until the test has seen /readyz
        repo.write("units/web.yaml", unit_yaml("web", "example.com/web:2"))
        repo.commit("web 2")
        # Not ready once a sync failed unexpectedly...
        wait_for(fault.hanging.is_set, 20, "the retry")
        assert "failed unexpectedly (RuntimeError: injected" in probe(daemon, "/readyz").text
        fault.release.set()
        # ...and the failed sync is retried after its backoff, without waiting for a poll.
        want = spec("web", "example.com/web:2")
        wait_for(lambda: image(store, "web") == want, 20, "web:2 in etcd")
        assert fault.hits == 2
        assert probe(daemon, "/healthz").status_code == 200
        wait_for(lambda: probe(daemon, "/readyz").status_code == 200, 20, "ready again")
        assert failures(daemon, "sync") == 1
        wait_for(lambda: leading(daemon, store), 20, "still leading")
    assert caplog.text.count("RuntimeError: injected") == 1  # logged once, with traceback


@pytest.mark.parametrize("program", PROGRAMS)
def test_the_scheduler_loop_goes_on_after_an_unexpected_exception(
    program: str,
    source: GitSource,
    store: Store,
    sim: SimulatedCluster,
    fleet: RegistryDriver,
) -> None:
    service = make(program, store, fleet, source)
    fault = Fault()
    fault.wrap(fleet, "snapshot")
    with running(service):
        wait_for(lambda: scheduled(service), 20, "a first scheduler pass")
        assert service.scheduler is not None
        passes = service.scheduler.term_passes
        fault.arm("raise")
        service.scheduler.trigger()
        wait_for(lambda: fault.hits == 1, 20, "the injected exception")
        wait_for(lambda: service.scheduler.term_passes > passes, 20, "a pass after it")  # type: ignore[union-attr]
        assert probe(service, "/healthz").status_code == 200
        assert failures(service, "scheduler") == 1
        wait_for(lambda: leading(service, store), 20, "still leading")


def test_the_election_loop_goes_on_after_an_unexpected_exception(
    store: Store, fleet: RegistryDriver
) -> None:
    service = make("kaylee server", store, fleet, None)
    fault = Fault()
    fault.wrap(service.election, "_campaign")
    fault.arm("raise")
    with running(service):
        wait_for(lambda: leading(service, store), 20, "leadership after the error")
        assert fault.hits == 1
        assert probe(service, "/healthz").status_code == 200
        assert failures(service, "election") == 1


def test_the_ref_watch_loop_goes_on_after_an_unexpected_exception(
    repo: GitRepo, source: GitSource, store: Store
) -> None:
    daemon = make("kaylee-sync", store, None, source)
    assert isinstance(daemon, Daemon)
    with running(daemon):
        wait_for(lambda: daemon.last_result is not None and daemon.last_result.ok, 20)
        fault = Fault()
        fault.wrap(daemon.queue, "request")  # the ref request thread's one call
        fault.arm("raise")
        repo.write("units/web.yaml", unit_yaml("web", "example.com/web:2"))
        repo.commit("web 2")  # the ref request thread's request raises
        wait_for(lambda: fault.hits == 1, 20, "the injected exception")
        beat = beat_of(daemon, "ref-watch")
        wait_for(lambda: beat.failures.total == 1, 20, "the failure counted")
        repo.write("units/web.yaml", unit_yaml("web", "example.com/web:3"))
        repo.commit("web 3")  # seen by the same thread, after its backoff
        want = spec("web", "example.com/web:3")
        wait_for(lambda: image(store, "web") == want, 20, "web:3 in etcd")
        assert probe(daemon, "/healthz").status_code == 200


# -- a hang: /healthz turns red and the leader resigns ------------------------------------


@LEADER_LOOPS
def test_a_hung_loop_turns_healthz_red_and_the_leader_resigns(
    program: str,
    loop: str,
    source: GitSource,
    store: Store,
    sim: SimulatedCluster,
    fleet: RegistryDriver,
) -> None:
    service = make(program, store, fleet, source)
    fault = inject(service, fleet, loop)
    with running(service):
        wait_for(lambda: scheduled(service), 20, "a first scheduler pass")
        # The default bound is minutes; a few seconds is enough once everything runs.
        beat_of(service, loop).stuck_after = 3.0
        fault.arm("hang")
        poke(service, loop)
        try:
            wait_for(fault.hanging.is_set, 20, "the hang")
            wait_red(service, f"the {loop} loop is stuck")
            wait_for(lambda: store.leader() is None, 20, "the lease revoked")
            assert not service.is_leader()
        finally:
            fault.release.set()
        # The loop comes back, but the process stays red until it is restarted.
        beat = beat_of(service, loop)
        count = beat.count
        wait_for(lambda: beat.count > count + 2, 20, "the loop going round again")
        answer = probe(service, "/healthz")
        assert answer.status_code == 503 and "restart the process" in answer.text
        assert store.leader() is None  # it does not campaign again


# -- a dead loop: red in both programs, resigned, no watchdog keep-alive -------------------


@pytest.fixture
def systemd() -> Iterator[tuple[dict[str, str], socket.socket]]:
    """The environment systemd gives a Type=notify service with WatchdogSec, and the
    socket it reads (a watchdog ping every 0.1 s)."""
    with tempfile.TemporaryDirectory(prefix="ks-") as directory:
        path = str(Path(directory) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.setblocking(False)
            yield {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}, sock


def drain(sock: socket.socket) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(sock.recv(4096))
        except BlockingIOError:
            return got


@LEADER_LOOPS
def test_a_dead_loop_turns_healthz_red_stops_the_watchdog_and_resigns(
    program: str,
    loop: str,
    source: GitSource,
    store: Store,
    sim: SimulatedCluster,
    fleet: RegistryDriver,
    systemd: tuple[dict[str, str], socket.socket],
) -> None:
    env, sock = systemd
    service = make(program, store, fleet, source)
    service.notifier = Notifier(env)
    fault = inject(service, fleet, loop)
    with running(service):
        wait_for(lambda: scheduled(service), 20, "a first scheduler pass")
        wait_for(lambda: b"WATCHDOG=1" in drain(sock), 20, "a watchdog ping while healthy")
        fault.arm("kill")
        poke(service, loop)
        wait_red(service, f"the {loop} loop is dead (Killed: injected)")
        wait_for(lambda: store.leader() is None, 20, "the lease revoked")
        # No keep-alive once unhealthy: the monitor goes round several times in silence.
        drain(sock)
        monitor = beat_of(service, "watchdog")
        count = monitor.count
        wait_for(lambda: monitor.count > count + 10, 20, "the monitor going round")
        assert b"WATCHDOG=1" not in drain(sock)
        assert probe(service, "/readyz").status_code in (200, 503)  # still answering


def test_the_watchdog_loop_goes_on_after_an_unexpected_exception(
    store: Store, fleet: RegistryDriver, systemd: tuple[dict[str, str], socket.socket]
) -> None:
    env, sock = systemd
    service = make("kaylee server", store, fleet, None)
    service.notifier = Notifier(env)
    fault = Fault()
    fault.wrap(service.notifier, "watchdog")
    fault.arm("raise")
    with running(service):
        wait_for(lambda: fault.hits == 1, 20, "the injected exception")
        wait_for(lambda: b"WATCHDOG=1" in drain(sock), 20, "a ping after it")
        assert probe(service, "/healthz").status_code == 200
        assert failures(service, "watchdog") == 1


#: exceptions injected in a row by the test below; docs/reliability.md records a run
#: with FAULT_TRIALS=200
TRIALS = int(os.environ.get("FAULT_TRIALS", "5"))


@pytest.mark.parametrize("program", PROGRAMS)
def test_exception_after_exception_the_loops_go_on_and_stay_healthy(
    program: str,
    repo: GitRepo,
    source: GitSource,
    store: Store,
    sim: SimulatedCluster,
    fleet: RegistryDriver,
) -> None:
    service = make(program, store, fleet, source)
    loops = ["scheduler", "sync"] if program == "kaylee-sync" else ["scheduler"]
    faults = {loop: inject(service, fleet, loop) for loop in loops}
    with running(service):
        wait_for(lambda: scheduled(service), 20, "a first scheduler pass")
        for trial in range(TRIALS):
            for loop, fault in faults.items():
                beat = beat_of(service, loop)
                count = beat.count
                fault.arm("raise")
                poke(service, loop)
                wait_for(lambda f=fault, n=trial: f.hits == n + 1, 20, f"{loop} fault {trial}")  # type: ignore[misc]
                # Gone round again: beaten past the failure's backoff and the next step.
                wait_for(lambda b=beat, c=count: b.count > c + 3, 20, f"{loop} going on")  # type: ignore[misc]
        assert probe(service, "/healthz").status_code == 200
        for loop in loops:
            assert failures(service, loop) == TRIALS
        wait_for(lambda: leading(service, store), 20, "still leading")
        if program == "kaylee-sync":  # and the work is still done
            repo.write("units/web.yaml", unit_yaml("web", "example.com/web:9"))
            repo.commit("web 9")
            want = spec("web", "example.com/web:9")
            wait_for(lambda: image(store, "web") == want, 20, "web:9 in etcd")
        assert service.scheduler is not None
        passes = service.scheduler.term_passes
        service.scheduler.trigger()
        wait_for(lambda: service.scheduler.term_passes > passes, 20, "a clean pass")  # type: ignore[union-attr]
