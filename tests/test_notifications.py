"""Webhook notifications to a local HTTP receiver: payload, HMAC, once per occurrence,
at-least-once delivery, and a slow or dead receiver that never holds up sync.

Sync results come from real syncs (a Git repository into the session etcd); rollout
events from the scheduler's real ``Decision`` records; the daemon test at the end wires
it all together with the real daemon.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaylee_sync.feedback import Feedback, FeedbackSettings, OutboxSettings, WebhookSettings
from kaylee_sync.scheduler.decide import Decision
from kaylee_sync.source import GitSource, SourceSettings
from kaylee_sync.store import Store
from kaylee_sync.sync.suspend import suspend
from kaylee_sync.sync.syncer import Syncer, SyncResult, SyncSettings
from tests.gitrepo import GitRepo, unit_yaml
from tests.httprecorder import Recorded, Recorder, recording
from tests.polling import wait_for
from tests.test_gitops_daemon import running

SECRET = "notify-hmac-key-0b4e"
BROKEN = "name: web\nreplicas: many\napps:\n  - image: example.com/web:2\n"


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    with recording() as r:
        yield r


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    r = GitRepo(tmp_path / "repo")
    r.write("units/web.yaml", unit_yaml("web"))
    r.write("units/api.yaml", unit_yaml("api"))
    r.commit("two units")
    return r


@pytest.fixture
def source(repo: GitRepo) -> Iterator[GitSource]:
    with GitSource(SourceSettings(repo=str(repo.path), path="units")) as opened:
        yield opened


def notifier(
    url: str, capacity: int = 1000, secret: str | None = SECRET, attempts: int = 12
) -> Feedback:
    outbox = OutboxSettings(
        capacity=capacity, backoff=0.01, max_backoff=0.05, max_attempts=attempts
    )
    webhook = WebhookSettings(url=url + "/hook", cluster="prod-eu", secret=secret)
    return Feedback(FeedbackSettings(webhook=webhook, webhook_outbox=outbox))


def report(feedback: Feedback, result: SyncResult) -> None:
    feedback.sync_result(
        result.commit, ok=result.ok, error=result.error, stage=result.stage, plan=result.plan
    )


def delivered(feedback: Feedback, count: int) -> None:
    assert feedback.webhook is not None
    outbox = feedback.webhook.outbox
    wait_for(lambda: outbox.sent >= count and outbox.pending() == 0, 10, f"{count} events")


def phases(posts: list[Recorded]) -> list[tuple[str, str]]:
    return [(p.json()["phase"], p.json()["unit"]) for p in posts]


def test_a_sync_failure_is_posted_once_as_json_with_an_hmac_signature(
    repo: GitRepo, source: GitSource, store: Store, recorder: Recorder
) -> None:
    feedback = notifier(recorder.url)
    syncer = Syncer(source, store, SyncSettings(max_prune=0))
    try:
        report(feedback, syncer.sync_once())
        repo.remove("units/api.yaml")
        moved = repo.commit("drop api")
        for _ in range(3):  # every poll refuses the prune again; one notification
            report(feedback, syncer.sync_once())
        delivered(feedback, 1)
    finally:
        feedback.close()
    [post] = recorder.answered()
    doc = post.json()
    assert post.path == "/hook"
    assert doc["cluster"] == "prod-eu" and doc["phase"] == "prune-refused"
    assert doc["commit"] == moved == doc["to"] and doc["from"] != moved and doc["from"]
    assert "max-prune" in doc["reason"] or "prune" in doc["reason"]
    expected = "sha256=" + hmac.new(SECRET.encode(), post.body, hashlib.sha256).hexdigest()
    assert post.headers["x-kaylee-signature-256"] == expected
    assert post.headers["x-kaylee-delivery"] == doc["delivery"]
    assert post.headers["x-kaylee-event"] == "prune-refused"


def test_invalid_files_refused_commits_and_expired_suspensions_are_each_reported_once(
    repo: GitRepo, source: GitSource, store: Store, recorder: Recorder
) -> None:
    feedback = notifier(recorder.url, secret=None)
    syncer = Syncer(source, store)
    try:
        report(feedback, syncer.sync_once())
        repo.write("units/web.yaml", BROKEN)
        repo.commit("broken web")
        report(feedback, syncer.sync_once())
        report(feedback, syncer.sync_once())
        feedback.sync_result("f" * 40, ok=False, error="refused: no signature", stage="signature")
        feedback.sync_result("f" * 40, ok=False, error="refused: no signature", stage="signature")
        suspend(store, "api", who="ops", reason="hotfix", until=1.0, now=0.0)
        report(feedback, syncer.sync_once())
        report(feedback, syncer.sync_once())
        delivered(feedback, 3)
    finally:
        feedback.close()
    posts = recorder.answered()
    assert phases(posts) == [
        ("invalid-file", "web"),
        ("commit-refused", ""),
        ("suspension-expired", "api"),
    ]
    assert "replicas" in posts[0].json()["reason"]
    assert "x-kaylee-signature-256" not in posts[0].headers


def test_rollout_events_follow_each_units_phase_changes(recorder: Recorder) -> None:
    feedback = notifier(recorder.url)
    passes = [
        [Decision("web", (), "steady", "aaaaaa")],  # the baseline: nothing to say yet
        [Decision("web", (), "rolling", "bbbbbb")],
        [Decision("web", (), "rolling", "bbbbbb")],
        [Decision("web", (), "steady", "bbbbbb")],
        [Decision("web", (), "rolling", "cccccc")],
        [Decision("web", (), "failed", "cccccc")],
        [Decision("web", (), "steady", "bbbbbb")],  # back to the spec that ran before
        [Decision("web", (), "steady", "bbbbbb"), Decision("db", (), "deploying", "dddddd")],
    ]
    try:
        for decisions in passes:
            feedback.rollout(decisions)
        delivered(feedback, 6)
    finally:
        feedback.close()
    assert phases(recorder.answered()) == [
        ("rollout-started", "web"),
        ("rollout-done", "web"),
        ("rollout-started", "web"),
        ("rollout-failed", "web"),
        ("rollout-reverted", "web"),
        ("rollout-started", "db"),
    ]


def test_a_slow_receiver_never_delays_sync_and_the_queue_stays_bounded(
    repo: GitRepo, source: GitSource, store: Store, recorder: Recorder
) -> None:
    recorder.hold()  # answers nobody until released
    feedback = notifier(recorder.url, capacity=3)
    assert feedback.webhook is not None
    outbox = feedback.webhook.outbox
    syncer = Syncer(source, store)
    try:
        for i in range(10):
            feedback.sync_result(f"{i:040x}", ok=False, error=f"failure {i}", stage="etcd")
        wait_for(lambda: recorder.arrived == 1, 10, "the first request, held by the receiver")
        repo.write("units/db.yaml", unit_yaml("db"))
        head = repo.commit("more")
        result = syncer.sync_once()  # runs to the end while the receiver holds a request
        report(feedback, result)
        assert result.ok and store.get_unit("db") is not None and result.commit == head
        assert outbox.pending() == 3 and outbox.dropped == 7
        recorder.release()
        delivered(feedback, 3)
    finally:
        feedback.close()
    reasons = [p.json()["reason"] for p in recorder.answered()]
    # the request in flight when it was dropped still lands; the newest three are kept
    assert reasons[-2:] == ["failure 8", "failure 9"]
    assert "failure 7" in reasons


def test_a_dead_receiver_is_retried_until_it_comes_back(recorder: Recorder) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    dead = notifier(f"http://127.0.0.1:{dead_port}")
    assert dead.webhook is not None
    try:
        dead.sync_result("a" * 40, ok=False, error="etcd down", stage="etcd")
        wait_for(lambda: dead.webhook and dead.webhook.outbox.given_up, 30, "given up")
    finally:
        dead.close()
    recorder.answers.extend([502, 503])
    alive = notifier(recorder.url)
    try:
        alive.sync_result("b" * 40, ok=False, error="etcd down", stage="etcd")
        delivered(alive, 1)
    finally:
        alive.close()
    posts = recorder.answered()
    assert [p.answered for p in posts] == [502, 503, 201]
    assert len({p.json()["delivery"] for p in posts}) == 1  # at-least-once: the same delivery


def test_the_daemon_notifies_an_invalid_file_without_waiting_for_the_receiver(
    repo: GitRepo, source: GitSource, store: Store, recorder: Recorder
) -> None:
    recorder.hold()
    outbox = OutboxSettings(backoff=0.01, max_backoff=0.05)
    webhook = WebhookSettings(url=recorder.url, cluster="lab")
    feedback = FeedbackSettings(webhook=webhook, webhook_outbox=outbox)
    repo.write("units/web.yaml", BROKEN)
    repo.commit("broken web")
    with running(source, store, feedback=feedback) as daemon:
        wait_for(lambda: recorder.arrived == 1, 20, "the notification, held by the receiver")
        repo.write("units/db.yaml", unit_yaml("db"))
        repo.commit("add db")
        daemon.queue.request("test")
        wait_for(lambda: store.get_unit("db"), 20, "db synced while the receiver holds")
        recorder.release()
        [post] = recorder.wait_for(1)
    assert phases([post]) == [("invalid-file", "web")]
    assert post.json()["cluster"] == "lab"


NOTIFY_TRIALS = int(os.environ.get("NOTIFY_TRIALS", "5"))


@pytest.mark.parametrize("seed", range(NOTIFY_TRIALS))
def test_a_flaky_receiver_gets_every_notification_once_and_in_order(
    seed: int, recorder: Recorder
) -> None:
    """Trial: random 5xx/429 answers; every event lands (2xx) exactly once, in order."""
    rng = random.Random(seed)
    recorder.answers.extend(rng.choice([201, 201, 500, 502, 503, 429]) for _ in range(60))
    feedback = notifier(recorder.url, attempts=100)  # 60 failures at most: never given up
    events = 20
    try:
        for i in range(events):
            feedback.sync_result(f"{i:040x}", ok=False, error=f"failure {i}", stage="etcd")
        delivered(feedback, events)
    finally:
        feedback.close()
    landed = [p.json() for p in recorder.answered() if p.answered < 300]
    assert [d["reason"] for d in landed] == [f"failure {i}" for i in range(events)]
    assert len({d["delivery"] for d in landed}) == events
