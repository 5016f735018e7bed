"""The daemon in-process: triggers → sync → etcd, probes, metrics and the webhook.

Each test runs a real :class:`Daemon` on a thread (election on the session etcd, a real
Git repository, the HTTP listener on port 0 when needed) and watches etcd for the
outcome. The latencies measured here are the promises of the issue: a local commit is in
etcd within a second (the ref watch), a pushed one within the poll interval.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kaylee_sync.daemon.daemon import Daemon, DaemonSettings
from kaylee_sync.election import ElectionSettings
from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.fleet.registry import RegistryDriver
from kaylee_sync.scheduler.runner import SchedulerSettings
from kaylee_sync.source import GitSource, SourceSettings
from kaylee_sync.store import Store
from kaylee_sync.sync.status import read_status
from tests.gitrepo import GitRepo, two_units, unit_yaml
from tests.gitrepo import unit_json as spec
from tests.polling import wait_for

T = TypeVar("T")
SECRET = "webhook-secret-7d2e"
# A 2 s lease (etcd's minimum) so that tests never wait long for an election.
ELECTION = ElectionSettings(lease_ttl=2, safety_margin=1.0)


def image_of(store: Store, name: str) -> str | None:
    stored = store.get_unit(name)
    return None if stored is None else stored.value.decode()


@contextmanager
def running(
    source: GitSource, store: Store, fleet: Any = None, **overrides: Any
) -> Iterator[Daemon]:
    """A Daemon running on a thread until the block ends (then stopped and joined)."""
    settings = DaemonSettings(
        **{"interval": 30.0, "listen": None, "election": ELECTION, **overrides}
    )
    daemon = Daemon(source, store, fleet, settings)
    thread = threading.Thread(target=daemon.run, name="test-daemon", daemon=True)
    thread.start()
    try:
        yield daemon
    finally:
        daemon.should_exit.set()
        daemon.queue.request("stop")
        thread.join(15)
        assert not thread.is_alive(), "the daemon did not stop"


def worker_rounds(daemon: Daemon, rounds: int) -> Callable[[], bool]:
    """True once the daemon's worker (sync as leader, fetch as standby) went round
    ``rounds`` more times from now: its heartbeat beats twice a round."""
    (beat,) = [b for b in daemon.loops.heartbeats() if b.name == "sync"]
    start = beat.count
    return lambda: beat.count >= start + 2 * rounds


def first_sync(daemon: Daemon, timeout: float = 10.0) -> None:
    wait_for(lambda: daemon.last_result is not None and daemon.last_result.ok, timeout)


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return two_units(tmp_path / "repo")


@pytest.fixture
def local(repo: GitRepo) -> Iterator[GitSource]:
    """The repository read in place (its ref files are watched)."""
    with GitSource(SourceSettings(repo=str(repo.path), path="units")) as source:
        yield source


@pytest.fixture
def remote(repo: GitRepo, tmp_path: Path) -> Iterator[GitSource]:
    """The same repository as a file:// remote: cloned, fetched, never watched."""
    settings = SourceSettings(
        repo=f"file://{repo.path}", path="units", cache_dir=tmp_path / "cache"
    )
    with GitSource(settings) as source:
        yield source


def test_a_local_commit_is_in_etcd_within_a_second(
    repo: GitRepo, local: GitSource, store: Store, record_property: Callable[[str, Any], None]
) -> None:
    # A 30 s poll: only the watch on the ref files can make it in time.
    with running(local, store) as daemon:
        first_sync(daemon)
        assert image_of(store, "web") == spec("web", "example.com/web:1")
        latencies = []
        for n in (2, 3, 4):
            repo.write("units/web.yaml", unit_yaml("web", f"example.com/web:{n}"))
            started = time.monotonic()
            repo.commit(f"web {n}")
            want = spec("web", f"example.com/web:{n}")
            wait_for(lambda want=want: image_of(store, "web") == want, timeout=3)  # type: ignore[misc]
            latencies.append(time.monotonic() - started)
    record_property("watch_latencies", latencies)
    print(f"\nwatch: commit → etcd in {', '.join(f'{x * 1000:.0f} ms' for x in latencies)}")
    assert max(latencies) < 1.0


def test_a_pushed_commit_is_in_etcd_within_the_poll_interval(
    repo: GitRepo, remote: GitSource, store: Store, record_property: Callable[[str, Any], None]
) -> None:
    interval = 0.5
    with running(remote, store, interval=interval) as daemon:
        first_sync(daemon)
        assert remote.watch_paths() == []  # a remote is only polled
        latencies = []
        for n in (2, 3, 4):
            repo.write("units/api.yaml", unit_yaml("api", f"example.com/api:{n}"))
            started = time.monotonic()
            repo.commit(f"api {n}")
            want = spec("api", f"example.com/api:{n}")
            wait_for(lambda want=want: image_of(store, "api") == want, timeout=5)  # type: ignore[misc]
            latencies.append(time.monotonic() - started)
    record_property("poll_latencies", latencies)
    print(f"\npoll 0.5 s: commit → etcd in {', '.join(f'{x * 1000:.0f} ms' for x in latencies)}")
    # the interval plus its 10 % jitter, plus one fetch and one sync
    assert max(latencies) < interval * 1.1 + 0.75


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(url + "/metrics", timeout=5)
    assert response.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}


def test_probes_metrics_and_a_signed_webhook_on_the_http_listener(
    repo: GitRepo, remote: GitSource, store: Store
) -> None:
    with running(
        remote, store, listen="127.0.0.1:0", webhook_secret=SECRET, interval=60.0
    ) as daemon:
        assert daemon.http is not None
        url = daemon.http.url
        assert httpx.get(url + "/healthz").status_code == 200
        first_sync(daemon)
        ready = httpx.get(url + "/readyz")
        assert ready.status_code == 200 and "leader; synced" in ready.text

        samples = scrape(url)
        commit = repo.head()
        assert samples[("kaylee_sync_leader", ())] == 1
        assert samples[("kaylee_sync_syncs_total", (("result", "ok"),))] >= 1
        assert samples[("kaylee_sync_last_synced_commit_info", (("commit", commit),))] == 1
        assert samples[("kaylee_sync_units", (("state", "create"),))] == 2
        assert samples[("kaylee_sync_last_success_timestamp_seconds", ())] > 0

        # A push the 60 s poll would not see for a long time; the webhook brings it now.
        repo.write("units/web.yaml", unit_yaml("web", "example.com/web:2"))
        pushed = repo.commit("web 2")
        body = b'{"ref": "refs/heads/main"}'
        bad = httpx.post(url + "/hooks/git", content=body, headers=signed(body, "wrong"))
        assert bad.status_code == 401
        wait_for(worker_rounds(daemon, 2), timeout=10)  # what it might have queued is served
        assert image_of(store, "web") == spec("web", "example.com/web:1")

        started = time.monotonic()
        good = httpx.post(url + "/hooks/git", content=body, headers=signed(body))
        assert good.status_code == 202
        # well before the next poll (60 s): the webhook brought it
        wait_for(lambda: image_of(store, "web") == spec("web", "example.com/web:2"), timeout=30)
        print(f"\nwebhook: accepted → etcd in {(time.monotonic() - started) * 1000:.0f} ms")
        samples = scrape(url)
        assert samples[("kaylee_sync_last_synced_commit_info", (("commit", pushed),))] == 1
        assert samples[("kaylee_sync_units", (("state", "update"),))] == 1


def test_a_leader_whose_sync_fails_is_alive_but_not_ready(tmp_path: Path, store: Store) -> None:
    upstream = GitRepo(tmp_path / "upstream")
    upstream.write("units/web.yaml", unit_yaml("web"))
    upstream.commit("one unit")
    settings = SourceSettings(
        repo=f"file://{tmp_path / 'gone'}", path="units", cache_dir=tmp_path / "cache"
    )
    with GitSource(settings) as source, running(source, store, listen="127.0.0.1:0") as daemon:
        assert daemon.http is not None
        wait_for(lambda: daemon.last_result is not None)
        assert httpx.get(daemon.http.url + "/healthz").status_code == 200
        ready = httpx.get(daemon.http.url + "/readyz")
        assert ready.status_code == 503 and "leader; " in ready.text
        samples = scrape(daemon.http.url)
        assert samples[("kaylee_sync_errors_total", (("stage", "git"),))] >= 1
        assert samples[("kaylee_sync_syncs_total", (("result", "error"),))] >= 1
        status = read_status(store)
        assert status is not None and not status.attempt.ok and status.last_success is None
        assert status.attempt.leader == daemon.identity


def test_a_sync_cut_short_by_a_lost_leadership_is_not_an_error(
    local: GitSource, store: Store
) -> None:
    # Not started: this daemon never leads, as one deposed between dequeue and apply.
    daemon = Daemon(local, store, None, DaemonSettings(listen=None, election=ELECTION))
    daemon._sync("poll")
    registry = daemon.metrics.registry
    assert registry.get_sample_value("kaylee_sync_syncs_total", {"result": "error"}) == 0
    for stage in ("git", "etcd", "other", "fleet"):
        assert registry.get_sample_value("kaylee_sync_errors_total", {"stage": stage}) == 0
    assert daemon.last_result is None and read_status(store) is None
    assert store.get_unit("web") is None


def test_a_conflict_is_retried_at_once_not_at_the_next_poll(
    local: GitSource, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kaylee_sync.sync import syncer as syncer_module
    from kaylee_sync.sync.apply import apply_plan

    raced: list[bool] = []

    def lose_one_race(*args: Any, **kwargs: Any) -> Any:
        if not raced:
            raced.append(True)
            store.put_unit("web", spec("web", "example.com/manual:1"))
        return apply_plan(*args, **kwargs)

    store.put_unit("web", spec("web", "example.com/before:1"))
    monkeypatch.setattr(syncer_module, "apply_plan", lose_one_race)
    with running(local, store) as daemon:  # a 30 s poll: only the retry can be in time
        first_sync(daemon, timeout=5)
        registry = daemon.metrics.registry
        assert image_of(store, "web") == spec("web", "example.com/web:1")
    assert raced
    assert registry.get_sample_value("kaylee_sync_errors_total", {"stage": "etcd"}) == 1
    assert registry.get_sample_value("kaylee_sync_syncs_total", {"result": "error"}) == 1
    assert registry.get_sample_value("kaylee_sync_syncs_total", {"result": "ok"}) == 1


def test_rollout_phases_from_the_scheduler_reach_the_metrics(
    local: GitSource, store: Store, etcd_endpoint: str, prefix: str
) -> None:
    # A fleet registry with no machines: units are created and wait to be scheduled.
    with Etcd2Client(etcd_endpoint) as client:
        fleet = RegistryDriver(client, prefix)
        fast = SchedulerSettings(active_interval=0.2, resync=1.0)
        with running(local, store, fleet, scheduler=fast) as daemon:
            first_sync(daemon)
            registry = daemon.metrics.registry

            def counted() -> float:
                return sum(
                    registry.get_sample_value("kaylee_sync_rollouts", {"phase": phase}) or 0
                    for phase in ("deploying", "waiting", "rolling", "steady", "scaling")
                )

            wait_for(lambda: counted() == 2, timeout=5)
            assert len(fleet.units()) == 4  # two units of two replicas each
        # Stopped: no longer leader, so it reports no rollouts any more.
        assert counted() == 0
        assert registry.get_sample_value("kaylee_sync_leader") == 0


def test_two_daemons_on_one_repository_exactly_one_syncs(
    repo: GitRepo, store: Store, etcd_settings: Any
) -> None:
    with (
        GitSource(SourceSettings(repo=str(repo.path), path="units")) as a_source,
        GitSource(SourceSettings(repo=str(repo.path), path="units")) as b_source,
        Store(etcd_settings) as b_store,
        running(a_source, store, interval=0.3) as a,
        running(b_source, b_store, interval=0.3) as b,
    ):
        leader = wait_for(lambda: store.leader())
        ours = {a.identity: a, b.identity: b}
        first_sync(ours[leader])
        for n in (2, 3):
            repo.write("units/web.yaml", unit_yaml("web", f"example.com/web:{n}"))
            repo.commit(f"web {n}")
            want = spec("web", f"example.com/web:{n}")
            wait_for(lambda want=want: image_of(store, "web") == want)  # type: ignore[misc]
        # a few more rounds of both workers (a poll every 0.3 s), then only the leader synced
        wait_for(worker_rounds(a, 3), timeout=10)
        wait_for(worker_rounds(b, 3), timeout=10)
        status = read_status(store)
        assert status is not None and status.attempt.leader == leader == store.leader()
        (standby,) = [d for d in (a, b) if d.identity != leader]
        registry = standby.metrics.registry
        for result in ("ok", "partial", "error"):
            assert registry.get_sample_value("kaylee_sync_syncs_total", {"result": result}) == 0
        assert standby.last_result is None and standby.syncer.last_commit == ""
        assert ours[leader].syncer.last_commit == repo.head()
        assert standby._fetched  # warm: it kept its clone fresh


def test_systemd_hears_the_watchdog_even_while_a_sync_takes_long(
    local: GitSource, store: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """WatchdogSec is much shorter than a first clone may take: pings must not wait for it."""
    import socket

    import kaylee_sync.sync.syncer as syncer_module
    from kaylee_sync.sync.apply import apply_plan

    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.settimeout(0.05)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # ping every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    in_sync = threading.Event()

    def slow_apply(*args: Any, **kwargs: Any) -> Any:
        in_sync.set()
        time.sleep(1.5)  # a long sync: the main loop is busy all along
        return apply_plan(*args, **kwargs)

    monkeypatch.setattr(syncer_module, "apply_plan", slow_apply)
    try:
        with running(local, store) as daemon:
            assert in_sync.wait(10)
            pings, deadline = 0, time.monotonic() + 1.0
            while time.monotonic() < deadline:
                try:
                    pings += listener.recv(4096).count(b"WATCHDOG=1")
                except TimeoutError:
                    continue
            assert daemon.last_result is None  # the sync was still running all along
            assert pings >= 5
            first_sync(daemon)
    finally:
        listener.close()
