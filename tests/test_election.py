"""Leader election against a real etcd: one leader, fast handover, safe step-down."""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import etcd3
import pytest

from kaylee_sync.election import Election, ElectionSettings, current_leader, make_identity
from kaylee_sync.embedded_etcd import EmbeddedEtcd
from kaylee_sync.errors import StoreUnavailable
from kaylee_sync.settings import EtcdSettings
from kaylee_sync.store import MASTER, Store
from kaylee_sync.supervise import Heartbeat

# etcd's smallest TTL keeps the suite fast; the margin must stay below TTL - 1.1 * TTL/3.
FAST = ElectionSettings(lease_ttl=2, safety_margin=0.5)
SLOWER = ElectionSettings(lease_ttl=3, safety_margin=1.0)
# A TTL and a poll interval (10 s) no handover through the watch comes near on any machine
PATIENT = ElectionSettings(lease_ttl=30, safety_margin=2.0)


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


class Callbacks:
    """Records when on_elected / on_lost ran (time.monotonic())."""

    def __init__(self) -> None:
        self.elected_at: list[float] = []
        self.lost_at: list[float] = []
        self.elected = threading.Event()
        self.lost = threading.Event()

    def on_elected(self) -> None:
        self.elected_at.append(time.monotonic())
        self.elected.set()

    def on_lost(self) -> None:
        self.lost_at.append(time.monotonic())
        self.lost.set()


class Candidate:
    def __init__(self, election: Election, calls: Callbacks) -> None:
        self.election = election
        self.calls = calls
        # the election loop's heartbeat: beats twice a round (at its start, and with the
        # wait before the next round), so a test can wait for rounds instead of sleeping
        self.beats = election.heartbeat = Heartbeat("election", stuck_after=60)

    def standing_by(self) -> bool:
        """Lost a campaign and waits, watching ``master`` (set before the campaign)."""
        return self.beats.count >= 2 and not self.election.is_leader

    def rounds_from(self, count: int, rounds: int) -> Callable[[], bool]:
        """True once ``rounds`` more rounds have begun since the heartbeat showed ``count``."""
        return lambda: self.beats.count >= count + 2 * rounds


@pytest.fixture
def open_store(etcd_endpoint: str, etcd_prefix: str) -> Iterator[Callable[..., Store]]:
    stores: list[Store] = []

    def make(endpoint: str = etcd_endpoint, timeout: float = 5.0) -> Store:
        settings = EtcdSettings(endpoints=(endpoint,), prefix=etcd_prefix, timeout=timeout)
        stores.append(Store(settings))
        return stores[-1]

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def candidate(open_store: Callable[..., Store]) -> Iterator[Callable[..., Candidate]]:
    """Builds started Elections (each with its own store, as separate daemons have)."""
    made: list[Election] = []

    def make(
        settings: ElectionSettings = FAST,
        store: Store | None = None,
        start: bool = True,
        **kwargs: Callable[[], float],
    ) -> Candidate:
        calls = Callbacks()
        election = Election(
            store or open_store(), make_identity(), settings, calls.on_elected, calls.on_lost,
            **kwargs,
        )  # fmt: skip
        made.append(election)
        made_candidate = Candidate(election, calls)  # its heartbeat before the loop starts
        if start:
            election.start()
        return made_candidate

    yield make
    for election in made:
        election.resign()


def master_lease(endpoint: str, prefix: str) -> int:
    """The lease id the ``master`` key is bound to, read with a plain etcd3 client."""
    url = urlsplit(endpoint)
    client = etcd3.client(url.hostname, url.port)
    try:
        value, meta = client.get(f"{prefix}/{MASTER}")
        assert value is not None
        return int(meta.lease_id)
    finally:
        client.close()


def record_renewals(store: Store) -> list[tuple[float, bool]]:
    """Wrap store.refresh_lease: (start time, succeeded) of every renewal."""
    renewals: list[tuple[float, bool]] = []
    original = store.refresh_lease

    def refresh_lease(lease_id: int) -> int:
        started = time.monotonic()
        try:
            ttl = original(lease_id)
        except Exception:
            renewals.append((started, False))
            raise
        renewals.append((started, ttl > 0))
        return ttl

    store.refresh_lease = refresh_lease  # type: ignore[method-assign]
    return renewals


def test_two_candidates_elect_exactly_one_leader_holding_master_on_a_lease(
    candidate: Callable[..., Candidate], open_store: Callable[..., Store],
    etcd_endpoint: str, etcd_prefix: str,
) -> None:  # fmt: skip
    a, b = candidate(), candidate()
    assert wait_until(lambda: a.election.is_leader or b.election.is_leader, 5)
    # Sample across several renewals: never two leaders, never none.
    for _ in range(30):
        assert [a.election.is_leader, b.election.is_leader].count(True) == 1
        time.sleep(0.05)
    leader, standby = (a, b) if a.election.is_leader else (b, a)
    assert current_leader(open_store()) == leader.election.identity
    assert master_lease(etcd_endpoint, etcd_prefix) != 0
    assert len(leader.calls.elected_at) == 1 and not leader.calls.lost_at
    assert not standby.calls.elected_at
    deadline = leader.election.leader_deadline
    assert deadline is not None and 0 < deadline - time.monotonic() <= FAST.renew_within
    assert standby.election.leader_deadline is None


def test_resigning_leader_hands_over_to_the_standby_at_once(
    candidate: Callable[..., Candidate], open_store: Callable[..., Store]
) -> None:
    a = candidate(PATIENT)
    assert a.calls.elected.wait(5)
    b = candidate(PATIENT)
    assert wait_until(b.standing_by, 10)  # b is standing by, watching master
    a.election.resign()
    a.election.resign()  # idempotent
    assert b.calls.elected.wait(PATIENT.keepalive_interval / 2)
    # no TTL wait, no poll wait (both ten seconds or more here): the watch woke b
    assert a.calls.lost_at and a.calls.lost_at[0] <= b.calls.elected_at[0]
    assert len(a.calls.lost_at) == 1 and not a.election.is_leader
    assert current_leader(open_store()) == b.election.identity


def test_crashed_leader_is_replaced_when_its_lease_expires(
    candidate: Callable[..., Candidate],
) -> None:
    a = candidate()
    assert a.calls.elected.wait(5)
    b = candidate()
    assert wait_until(b.standing_by, 10)
    crashed = time.monotonic()
    a.election._crash()  # stops renewing; revokes nothing, like kill -9
    assert b.calls.elected.wait(FAST.lease_ttl + 1)
    took = b.calls.elected_at[0] - crashed
    # Not a revoke (that would be instant), but the lease running out.
    assert 0.8 < took <= FAST.lease_ttl + 1
    assert not a.calls.lost_at


CHILD = textwrap.dedent(
    """
    import sys, threading, time
    from kaylee_sync.election import Election, ElectionSettings
    from kaylee_sync.settings import EtcdSettings
    from kaylee_sync.store import Store

    store = Store(EtcdSettings(endpoints=(sys.argv[1],), prefix=sys.argv[2]))
    elected = threading.Event()
    election = Election(store, sys.argv[3], ElectionSettings(lease_ttl=2, safety_margin=0.5),
                        elected.set, lambda: None)
    election.start()
    if elected.wait(30):
        print("LEADER", flush=True)
    time.sleep(120)
    """
)


def test_killed_leader_process_is_replaced_within_the_ttl(
    candidate: Callable[..., Candidate], open_store: Callable[..., Store],
    etcd_endpoint: str, etcd_prefix: str,
) -> None:  # fmt: skip
    child_id = "child:" + make_identity()
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, etcd_endpoint, etcd_prefix, child_id],
        stdout=subprocess.PIPE, text=True,
    ) as child:  # fmt: skip
        try:
            assert child.stdout is not None
            ready, _, _ = select.select([child.stdout], [], [], 30)
            assert ready and child.stdout.readline().strip() == "LEADER"
            parent = candidate()
            assert wait_until(parent.standing_by, 10)
            assert current_leader(open_store()) == child_id
            killed = time.monotonic()
            os.kill(child.pid, signal.SIGKILL)
            assert parent.calls.elected.wait(FAST.lease_ttl + 1)
            assert parent.calls.elected_at[0] - killed <= FAST.lease_ttl + 1
            assert current_leader(open_store()) == parent.election.identity
        finally:
            child.kill()
            child.wait()


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EmbeddedEtcd]:
    """An etcd of this test's own, which it may stop or freeze."""
    server = EmbeddedEtcd(data_dir=tmp_path / "etcd").start()
    try:
        yield server
    finally:
        if server._proc is not None:
            os.kill(server._proc.pid, signal.SIGCONT)
        server.stop()


def test_leader_steps_down_before_its_lease_expires_when_etcd_goes_away(
    candidate: Callable[..., Candidate], open_store: Callable[..., Store],
    own_etcd: EmbeddedEtcd, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    store = open_store(own_etcd.endpoint)
    renewals = record_renewals(store)
    a = candidate(SLOWER, store=store)
    assert a.calls.elected.wait(5)
    assert wait_until(lambda: any(ok for _, ok in renewals), 5)
    with caplog.at_level(logging.INFO, logger="kaylee_sync.election"):
        own_etcd.stop()
        assert a.calls.lost.wait(SLOWER.lease_ttl)
        last_ok = max(start for start, ok in renewals if ok)
        assert a.calls.lost_at[0] - last_ok < SLOWER.lease_ttl - 0.5
        assert not a.election.is_leader
        # a few failed campaigns: logged, retried, thread alive
        assert wait_until(a.rounds_from(a.beats.count, 3), 10)
    assert a.election._thread is not None and a.election._thread.is_alive()
    records = [r for r in caplog.records if r.name == "kaylee_sync.election"]
    assert any("lost leadership" in r.getMessage() for r in records)
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in records)


def test_leader_steps_down_at_its_deadline_when_etcd_hangs(
    candidate: Callable[..., Candidate], open_store: Callable[..., Store],
    own_etcd: EmbeddedEtcd,
) -> None:  # fmt: skip
    # Requests wait up to 5 s for a frozen etcd, longer than the whole 3 s TTL: only the
    # leader deadline can make the leader step down in time.
    store = open_store(own_etcd.endpoint, timeout=5.0)
    renewals = record_renewals(store)
    a = candidate(SLOWER, store=store)
    assert a.calls.elected.wait(5)
    assert wait_until(lambda: any(ok for _, ok in renewals), 5)
    assert own_etcd._proc is not None
    os.kill(own_etcd._proc.pid, signal.SIGSTOP)
    assert a.calls.lost.wait(SLOWER.lease_ttl)
    last_ok = max(start for start, ok in renewals if ok)
    since = a.calls.lost_at[0] - last_ok
    assert since <= SLOWER.renew_within + 0.2 < SLOWER.lease_ttl
    assert not a.election.is_leader


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_keepalive_runs_every_third_of_the_ttl_with_jitter(
    candidate: Callable[..., Candidate], open_store: Callable[..., Store],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    clock = FakeClock()
    draws = iter([0.0, 1.0, 0.5, 0.25])
    store = open_store()
    renewals = record_renewals(store)
    c = candidate(SLOWER, store=store, start=False, clock=clock, rand=lambda: next(draws, 0.5))
    waits: list[float] = []
    renewals_seen: list[int] = []
    enough = threading.Event()
    real_wait = c.election._wait

    def fake_wait(seconds: float) -> bool:
        waits.append(seconds)
        renewals_seen.append(len(renewals))
        clock.now += seconds
        if len(waits) < 4:
            return False
        enough.set()
        return real_wait(30)  # until resign()

    monkeypatch.setattr(c.election, "_wait", fake_wait)
    c.election.start()
    assert enough.wait(5)
    # TTL 3 s → 1 s ± 10 %: rand 0 → 0.9, rand 1 → 1.1, rand 0.5 → 1.0, rand 0.25 → 0.95.
    assert waits == pytest.approx([0.9, 1.1, 1.0, 0.95])
    assert renewals_seen == [0, 1, 2, 3]  # one renewal after each wait
    # The deadline counts from the last renewal's start (at fake time 3.0).
    assert c.election.leader_deadline == pytest.approx(3.0 + SLOWER.renew_within)
    assert c.election.is_leader and not c.calls.lost_at


def test_leader_paused_past_its_deadline_steps_down_without_renewing(
    candidate: Callable[..., Candidate], open_store: Callable[..., Store],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    clock = FakeClock()
    store = open_store()
    renewals = record_renewals(store)
    c = candidate(SLOWER, store=store, start=False, clock=clock, rand=lambda: 0.5)
    waits: list[float] = []
    real_wait = c.election._wait

    def fake_wait(seconds: float) -> bool:
        waits.append(seconds)
        if len(waits) == 2:
            clock.now += seconds + SLOWER.lease_ttl  # the process was frozen meanwhile
        elif len(waits) > 2:
            return real_wait(30)
        clock.now += seconds
        return False

    monkeypatch.setattr(c.election, "_wait", fake_wait)
    c.election.start()
    assert c.calls.lost.wait(5)
    assert len(renewals) == 1  # the first wait renewed; the overlong one did not try
    # It campaigns again (its stale lease revoked, the key freed) and wins.
    assert wait_until(lambda: len(c.calls.elected_at) == 2, 5)
    assert len(renewals) == 1


def test_deleting_master_by_hand_deposes_the_leader_and_one_leader_remains(
    candidate: Callable[..., Candidate],
    open_store: Callable[..., Store],
) -> None:
    a = candidate()
    assert a.calls.elected.wait(5)
    b = candidate()
    assert wait_until(b.standing_by, 10)
    store = open_store()
    assert store.delete(MASTER)
    assert a.calls.lost.wait(FAST.keepalive_interval * 1.1 + 0.5)

    def one_leader() -> bool:
        leaders = [c for c in (a, b) if c.election.is_leader]
        return len(leaders) == 1 and current_leader(store) == leaders[0].election.identity

    assert wait_until(one_leader, FAST.lease_ttl + 1)
    time.sleep(FAST.keepalive_interval * 2)  # and it stays that way over renewals
    assert one_leader()
    assert len(a.calls.lost_at) == 1


def test_settings_refuse_a_margin_the_renewals_cannot_meet() -> None:
    assert ElectionSettings().keepalive_interval == pytest.approx(10 / 3)
    with pytest.raises(ValueError, match="safety_margin"):
        ElectionSettings(lease_ttl=3, safety_margin=2.0)
    with pytest.raises(ValueError, match="lease_ttl"):
        ElectionSettings(lease_ttl=1)


def test_identity_is_host_pid_random() -> None:
    host, pid, rand = make_identity().rsplit(":", 2)
    assert host and pid == str(os.getpid())
    assert len(rand) == 8 and int(rand, 16) >= 0
    assert make_identity() != make_identity()


def test_a_leader_cut_off_from_etcd_leads_again_as_soon_as_etcd_answers(
    candidate: Callable[..., Candidate], open_store: Callable[..., Store],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    settings = ElectionSettings(lease_ttl=6, safety_margin=3.0)
    store = open_store()
    c = candidate(settings, store=store)
    assert c.calls.elected.wait(5)
    renewals = record_renewals(store)
    assert wait_until(lambda: bool(renewals), 5)  # a renewal confirmed the key is ours
    held = store.get(MASTER)
    assert held is not None
    outage = threading.Event()
    outage.set()
    for name in ("get", "refresh_lease", "lease", "txn", "revoke"):
        real = getattr(store, name)

        def cut(*args: object, _real: Callable[..., object] = real) -> object:
            if outage.is_set():
                raise StoreUnavailable("cannot reach etcd at test: connection refused")
            return _real(*args)

        monkeypatch.setattr(store, name, cut)
    assert c.calls.lost.wait(10)
    assert c.election.etcd_unreachable is not None and not c.election.is_leader
    assert wait_until(lambda: c.election.etcd_unreachable is not None, 5)
    outage.clear()  # etcd is back before the lease ran out on the server
    assert wait_until(lambda: len(c.calls.elected_at) == 2, 5)
    assert c.election.etcd_unreachable is None and c.election.is_leader
    again = store.get(MASTER)
    assert again is not None and again.create_revision == held.create_revision
