"""Commit statuses posted to a local HTTP server that plays GitHub, Gitea and GitLab.

The sync results are real (a Git repository synced into the session etcd); the
scheduler's decisions are its real ``Decision`` records — built here for the judgement
tests, produced by the scheduler and the fleet simulator in the daemon test at the end.
The promise under test: exactly one status per state change per commit, under the
cluster's own context, with the token in a header and nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from kaylee_sync.cli.sync import cli
from kaylee_sync.cli.trustopts import feedback_settings_from
from kaylee_sync.feedback import Feedback, FeedbackSettings, OutboxSettings, StatusSettings
from kaylee_sync.feedback.outbox import TokenBucket
from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.fleet.registry import RegistryDriver
from kaylee_sync.fleetsim import SimulatedCluster
from kaylee_sync.scheduler.decide import Decision
from kaylee_sync.scheduler.runner import SchedulerSettings
from kaylee_sync.source import GitSource, SourceSettings
from kaylee_sync.spec import App, UnitSpec, spec_hash6
from kaylee_sync.store import Store
from kaylee_sync.sync.syncer import Syncer, SyncResult
from tests.gitrepo import GitRepo, unit_yaml
from tests.httprecorder import Recorder, recording
from tests.polling import wait_for
from tests.test_gitops_daemon import running

TOKEN = "ghp_status-token-5f1c9a"
FAST_OUTBOX = OutboxSettings(backoff=0.01, max_backoff=0.05, rate=None)


def hash6(image: str, replicas: int = 2) -> str:
    return spec_hash6(UnitSpec(name="web", replicas=replicas, apps=(App(image=image),)), 0)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    with recording() as r:
        yield r


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    r = GitRepo(tmp_path / "repo")
    r.write("units/web.yaml", unit_yaml("web", "example.com/web:1"))
    r.commit("web 1")
    return r


@pytest.fixture
def source(repo: GitRepo) -> Iterator[GitSource]:
    with GitSource(SourceSettings(repo=str(repo.path), path="units")) as opened:
        yield opened


def feedback_for(
    recorder: Recorder, provider: str = "github", cluster: str = "prod-eu"
) -> Feedback:
    status = StatusSettings(
        provider=provider, repo="org/units", cluster=cluster, token=TOKEN, api_url=recorder.url
    )
    return Feedback(FeedbackSettings(status=status, status_outbox=FAST_OUTBOX))


def report(feedback: Feedback, result: SyncResult) -> None:
    feedback.sync_result(
        result.commit, ok=result.ok, error=result.error, stage=result.stage, plan=result.plan
    )


def settled(feedback: Feedback, count: int) -> None:
    """Wait until the outbox has delivered ``count`` statuses and holds nothing more."""
    assert feedback.statuses is not None
    outbox = feedback.statuses.outbox
    wait_for(lambda: outbox.sent >= count and outbox.pending() == 0, 10, f"{count} statuses")


def test_exactly_one_status_per_state_change_per_commit_under_the_cluster_context(
    repo: GitRepo, source: GitSource, store: Store, recorder: Recorder
) -> None:
    feedback = feedback_for(recorder)
    syncer = Syncer(source, store)
    first = syncer.sync_once()
    old, new = hash6("example.com/web:1"), hash6("example.com/web:2")
    try:
        for _ in range(3):  # a poll that finds the same commit again posts nothing
            report(feedback, first)
        feedback.rollout([Decision("web", (), "deploying", old)])
        feedback.rollout([Decision("web", (), "steady", old)])
        feedback.rollout([Decision("web", (), "steady", old)])
        repo.write("units/web.yaml", unit_yaml("web", "example.com/web:2"))
        repo.commit("web 2")
        second = syncer.sync_once()
        report(feedback, second)
        feedback.rollout([Decision("web", (), "steady", old)])  # the new spec not seen yet
        feedback.rollout([Decision("web", (), "rolling", new)])
        feedback.rollout([Decision("web", (), "steady", new)])
        feedback.rollout([Decision("web", (), "steady", new)])
        report(feedback, syncer.sync_once())
        settled(feedback, 4)
    finally:
        feedback.close()

    posted = [(r.path, r.json()["state"], r.json()["context"]) for r in recorder.answered()]
    assert posted == [
        (f"/repos/org/units/statuses/{first.commit}", "pending", "kaylee/prod-eu"),
        (f"/repos/org/units/statuses/{first.commit}", "success", "kaylee/prod-eu"),
        (f"/repos/org/units/statuses/{second.commit}", "pending", "kaylee/prod-eu"),
        (f"/repos/org/units/statuses/{second.commit}", "success", "kaylee/prod-eu"),
    ]
    first_post = recorder.answered()[0]
    assert first_post.headers["authorization"] == f"Bearer {TOKEN}"
    assert "rolling out" in first_post.json()["description"]


def test_two_clusters_post_side_by_side_instead_of_overwriting(
    source: GitSource, store: Store, recorder: Recorder
) -> None:
    result = Syncer(source, store).sync_once()
    clusters = [feedback_for(recorder, cluster=name) for name in ("eu", "us")]
    try:
        for feedback in clusters:
            report(feedback, result)
            settled(feedback, 1)
    finally:
        for feedback in clusters:
            feedback.close()
    assert sorted(r.json()["context"] for r in recorder.answered()) == ["kaylee/eu", "kaylee/us"]


@pytest.mark.parametrize(
    ("provider", "path", "auth", "states", "context_field"),
    [
        ("gitea", "/api/v1/repos/org/units/statuses/", ("authorization", f"token {TOKEN}"),
         ["pending", "failure"], "context"),
        ("gitlab", "/api/v4/projects/org%2Funits/statuses/", ("private-token", TOKEN),
         ["running", "failed"], "name"),
    ],
)  # fmt: skip
def test_gitea_and_gitlab_get_their_own_urls_headers_and_state_names(
    provider: str,
    path: str,
    auth: tuple[str, str],
    states: list[str],
    context_field: str,
    source: GitSource,
    store: Store,
    recorder: Recorder,
) -> None:
    result = Syncer(source, store).sync_once()
    feedback = feedback_for(recorder, provider)
    try:
        report(feedback, result)
        feedback.rollout([Decision("web", (), "failed", hash6("example.com/web:1"))])
        settled(feedback, 2)
    finally:
        feedback.close()
    posts = recorder.answered()
    assert [p.path for p in posts] == [path + result.commit] * 2
    assert all(p.headers[auth[0]] == auth[1] for p in posts)
    assert [p.json()["state"] for p in posts] == states
    assert posts[0].json()[context_field] == "kaylee/prod-eu"
    assert "rollout failed: web" in posts[1].json()["description"]


def test_a_refused_commit_is_a_failure_and_a_transient_error_leaves_it_pending(
    recorder: Recorder,
) -> None:
    feedback = feedback_for(recorder)
    refused, held = "a" * 40, "b" * 40
    why = f"signature check refused commit {refused[:12]}: no signature (key: none)"
    try:
        for _ in range(2):
            feedback.sync_result(refused, ok=False, error=why, stage="signature")
            feedback.sync_result(held, ok=False, error="etcd is unreachable", stage="etcd")
        settled(feedback, 2)
    finally:
        feedback.close()
    posts = [(r.path.rsplit("/", 1)[1], r.json()) for r in recorder.answered()]
    assert [(sha, doc["state"]) for sha, doc in posts] == [(refused, "failure"), (held, "pending")]
    assert "no signature (key: none)" in posts[0][1]["description"]


def test_a_server_error_is_retried_until_delivered_and_a_bad_token_is_not(
    recorder: Recorder,
) -> None:
    recorder.answers.extend([500, 503, 201, 401])
    feedback = feedback_for(recorder)
    assert feedback.statuses is not None
    outbox = feedback.statuses.outbox
    try:
        feedback.sync_result("c" * 40, ok=False, error="etcd down", stage="etcd")
        wait_for(lambda: outbox.sent == 1, 10, "the status, after two server errors")
        feedback.sync_result("d" * 40, ok=False, error="etcd down", stage="etcd")
        wait_for(lambda: outbox.given_up == 1, 10, "the 401 given up")
    finally:
        feedback.close()
    assert [r.answered for r in recorder.answered()] == [500, 503, 201, 401]
    assert len({r.body for r in recorder.answered()[:3]}) == 1  # the same status, again


def test_the_token_is_never_logged(recorder: Recorder, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    recorder.answers.extend([503, 403])
    feedback = feedback_for(recorder)
    assert feedback.statuses is not None
    try:
        feedback.sync_result("e" * 40, ok=False, error="x", stage="etcd")
        wait_for(lambda: feedback.statuses and feedback.statuses.outbox.given_up, 10, "403")
    finally:
        feedback.close()
    assert "HTTP 403" in caplog.text
    assert TOKEN not in caplog.text
    assert TOKEN not in repr(feedback.settings)


def test_the_token_bucket_spaces_posts_at_the_rate() -> None:
    now = [100.0]
    bucket = TokenBucket(rate=0.5, burst=2, clock=lambda: now[0])
    waits = []
    for _ in range(3):
        waits.append(bucket.wait_time())
        if waits[-1] == 0:
            bucket.take()
    assert waits == [0.0, 0.0, 2.0]  # a burst of two, then one every 2 s
    now[0] += 1.0
    assert bucket.wait_time() == 1.0
    now[0] += 1.0
    assert bucket.wait_time() == 0.0


def test_bad_settings_are_one_line_usage_errors() -> None:
    from kaylee_sync.errors import UsageError

    with pytest.raises(UsageError, match="--commit-status gitea needs --commit-status-url"):
        StatusSettings(provider="gitea", repo="o/r", cluster="c", token="t")
    with pytest.raises(UsageError, match="--cluster-name"):
        StatusSettings(provider="github", repo="o/r", cluster="", token="t")


# -- the daemon, the scheduler and the fleet simulator -----------------------------------------

FAST = SchedulerSettings(
    stable=0.3, rollout_timeout=3.0, destroy_timeout=3.0, active_interval=0.1, resync=1.0
)


def test_the_daemon_posts_synced_then_rolled_out_then_failed_for_a_unit_that_never_starts(
    repo: GitRepo,
    source: GitSource,
    store: Store,
    recorder: Recorder,
    etcd_endpoint: str,
    etcd_prefix: str,
) -> None:
    fleet_prefix = etcd_prefix + "/fleet/"
    status = StatusSettings(
        provider="github", repo="org/units", cluster="lab", token=TOKEN, api_url=recorder.url
    )
    feedback = FeedbackSettings(status=status, status_outbox=FAST_OUTBOX)
    with SimulatedCluster(
        etcd_endpoint, fleet_prefix, machines=[{}, {}], engine_interval=0.1, agent_interval=0.1,
        behaviours={"*broken*": "never_start"}, default_start_delay=0.1,
    ) as cluster:  # fmt: skip
        assert cluster is not None
        fleet = RegistryDriver(Etcd2Client(etcd_endpoint), fleet_prefix)
        try:
            with running(source, store, fleet, scheduler=FAST, feedback=feedback) as daemon:
                recorder.wait_for(2, "synced and rolled out", timeout=30)
                repo.write("units/web.yaml", unit_yaml("web", "example.com/broken:2"))
                bad = repo.commit("an image that never starts")
                daemon.queue.request("test")
                posts = recorder.wait_for(4, "synced and failed", timeout=30)
        finally:
            fleet.client.close()
    first = posts[0].path.rsplit("/", 1)[1]
    assert [(p.path.rsplit("/", 1)[1], p.json()["state"]) for p in posts] == [
        (first, "pending"),
        (first, "success"),
        (bad, "pending"),
        (bad, "failure"),
    ]
    assert {p.json()["context"] for p in posts} == {"kaylee/lab"}
    assert len(recorder.answered()) == 4


# -- the command line ------------------------------------------------------------------------


def test_once_posts_the_commit_status_from_the_command_line(
    repo: GitRepo, recorder: Recorder, etcd_args: list[str], tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    result = CliRunner().invoke(
        cli,
        ["--repo", str(repo.path), "--path", "units", *etcd_args, "--once", "--no-scheduler",
         "--listen", "", "--cluster-name", "ci", "--commit-status", "github",
         "--commit-status-url", recorder.url, "--commit-status-repo", "org/units",
         "--commit-status-token-file", str(token_file)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [post] = recorder.answered()  # --once waits for its statuses before it exits
    assert post.path == f"/repos/org/units/statuses/{repo.head()}"
    assert post.json()["context"] == "kaylee/ci"
    assert post.headers["authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--commit-status", "github"], "--commit-status needs --cluster-name"),
        (["--notify-url", "http://127.0.0.1:9/x"], "--notify-url needs --cluster-name"),
        (["--cluster-name", "c", "--commit-status", "github"],
         "--commit-status needs --commit-status-token-file"),
        (["--cluster-name", "c", "--notify-url", "ftp://x"], "expected an http(s) URL"),
    ],
)  # fmt: skip
def test_feedback_flags_are_checked_with_one_line_errors(
    repo: GitRepo, etcd_args: list[str], args: list[str], message: str
) -> None:
    result = CliRunner().invoke(
        cli, ["--repo", str(repo.path), *etcd_args, "--once", "--listen", "", *args]
    )
    assert result.exit_code == 1 and message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("https://github.com/org/units.git", "org/units"),
        ("https://user:secret@gitlab.example.com/group/sub/units", "group/sub/units"),
        ("git@github.com:org/units.git", "org/units"),
        ("ssh://git@gitea.example.com:2222/org/units.git", "org/units"),
    ],
)
def test_the_host_repository_is_taken_from_the_repo_url(
    url: str, path: str, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    settings = feedback_settings_from(
        {"repo": url, "cluster_name": "c", "commit_status": "github",
         "commit_status_token_file": token}
    )  # fmt: skip
    assert settings.status is not None and settings.status.repo == path
