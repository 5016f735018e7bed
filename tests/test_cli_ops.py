"""``kaylee-sync suspend``, ``resume``, ``status`` and ``--once``, through the real CLI.

Commands run in-process with click's CliRunner against the session etcd (each test under
its own prefix) and real Git repositories; a daemon, where one is needed, runs on a
thread. ``--once`` sets up the daemon's logging on the runner's stderr, so its log lines
can be read from the result.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kaylee_sync.cli.sync import cli
from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.fleet.registry import RegistryDriver
from kaylee_sync.source import GitSource, SourceSettings
from kaylee_sync.store import Store, keys
from kaylee_sync.sync.syncer import Syncer
from tests.gitrepo import GitRepo, two_units, unit_yaml
from tests.gitrepo import unit_json as spec
from tests.polling import wait_for
from tests.test_gitops_daemon import first_sync, running

BROKEN = "name: web\nreplicas: many\napps:\n  - image: example.com/web:2\n"


@pytest.fixture(autouse=True)
def daemon_logging_removed() -> Iterator[None]:
    """``--once`` installs the daemon's log handler on the runner's (then closed) stderr."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in [h for h in root.handlers if h.get_name() == "kaylee-sync"]:
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return two_units(tmp_path / "repo")


@pytest.fixture
def source(repo: GitRepo) -> Iterator[GitSource]:
    with GitSource(SourceSettings(repo=str(repo.path), path="units")) as opened:
        yield opened


def run(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def status_json(etcd_args: list[str]) -> dict[str, object]:
    result = run("status", "--format", "json", *etcd_args)
    assert result.exit_code == 0, result.stderr
    document: dict[str, object] = json.loads(result.stdout)
    return document


# -- suspend / resume / status ------------------------------------------------------------


def test_suspend_shows_in_status_as_text_and_json_and_resume_ends_it(
    etcd_args: list[str],
) -> None:
    done = run("suspend", "web", "--reason", "hotfix INC-42", "--who", "alice", *etcd_args)
    assert done.exit_code == 0, done.stderr
    assert done.stdout == "Git sync of web suspended (alice: hotfix INC-42)\n"

    text = run("status", *etcd_args)
    assert text.exit_code == 0
    assert "leader:        none" in text.stdout
    assert "last attempt:  never synced" in text.stdout
    assert "suspended:     web by alice: hotfix INC-42" in text.stdout
    document = status_json(etcd_args)
    held = document["suspended"]
    assert isinstance(held, dict) and held["web"]["who"] == "alice"
    assert held["web"]["reason"] == "hotfix INC-42" and held["web"]["until"] is None

    resumed = run("resume", "web", *etcd_args)
    assert resumed.exit_code == 0
    assert resumed.stdout == "Git sync of web resumed (it was suspended by alice)\n"
    assert status_json(etcd_args)["suspended"] == {}
    again = run("resume", "web", *etcd_args)
    assert again.exit_code == 1 and again.stderr == "error: web is not suspended\n"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--for", "soon"], "expected a duration such as 30m"),
        (["--for", "0s"], "must be positive"),
        (["--reason", " "], "a reason is required"),
    ],
)
def test_suspend_refuses_a_bad_duration_or_an_empty_reason(
    etcd_args: list[str], store: Store, extra: list[str], message: str
) -> None:
    args = ["suspend", "web", "--reason", "why", *extra, *etcd_args]
    result = run(*args)
    # A bad --for is a usage error of click's (exit 2 until usage errors exit 1).
    assert result.exit_code in (1, 2) and message in result.stderr
    assert store.get(keys.suspended_key("web")) is None


def test_a_suspension_for_one_second_ends_by_itself_at_the_next_sync(
    source: GitSource, store: Store, etcd_args: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    later = [0.0]  # seconds the syncer's clock runs ahead of the suspension's
    syncer = Syncer(source, store, clock=lambda: time.time() + later[0])
    syncer.sync_once()
    hotfix = spec("web", "example.com/hotfix:1")
    store.put_unit("web", hotfix)
    done = run("suspend", "web", "--reason", "load test", "--for", "1s", *etcd_args)
    assert done.exit_code == 0 and " until " in done.stdout

    assert syncer.sync_once().counts["suspended"] == 1
    stored = store.get_unit("web")
    assert stored is not None and stored.value.decode() == hotfix
    later[0] = 2.0  # past the end of the one-second suspension, without waiting for it
    with caplog.at_level(logging.INFO):
        result = syncer.sync_once()
    assert result.ok and result.applied is not None and result.applied.resumed == ("web",)
    stored = store.get_unit("web")
    assert stored is not None and stored.value.decode() == spec("web", "example.com/web:1")
    assert "suspension of web expired; Git sync resumes" in caplog.text
    assert status_json(etcd_args)["suspended"] == {}


def test_status_names_the_leader_the_last_attempt_and_each_invalid_file(
    repo: GitRepo, source: GitSource, store: Store, etcd_args: list[str]
) -> None:
    with running(source, store) as daemon:
        first_sync(daemon)
        good = repo.head()
        repo.write("units/web.yaml", BROKEN)
        broken = repo.commit("break web")
        daemon.queue.request("test")

        def attempted() -> bool:  # the status record, not the syncer: it is written last
            attempt = status_json(etcd_args).get("attempt")
            return isinstance(attempt, dict) and attempt.get("commit") == broken

        wait_for(attempted, timeout=30, what="the status of the broken commit")
        text = run("status", *etcd_args).stdout
        document = status_json(etcd_args)
    assert f"leader:        {daemon.identity}" in text
    assert "last attempt:  " in text and f" {broken[:7]} ok" in text
    assert "invalid:       units/web.yaml:2: replicas: " in text
    assert "units:         1 invalid, 1 unchanged" in text
    assert document["leader"] == daemon.identity
    attempt, success = document["attempt"], document["last_success"]
    assert isinstance(attempt, dict) and isinstance(success, dict)
    assert attempt["commit"] == broken and attempt["leader"] == daemon.identity
    assert attempt["problems"][0]["file"] == "units/web.yaml"
    # a sync that applied everything it could is a success, invalid file or not
    assert success["commit"] == broken != good


def test_status_shows_a_failed_attempt_next_to_the_last_success(
    tmp_path: Path, store: Store, etcd_args: list[str]
) -> None:
    upstream = GitRepo(tmp_path / "upstream")
    upstream.write("units/web.yaml", unit_yaml("web"))
    first = upstream.commit("one unit")
    settings = SourceSettings(
        repo=f"file://{upstream.path}", path="units", cache_dir=tmp_path / "cache"
    )
    with GitSource(settings) as source:
        syncer = Syncer(source, store)
        assert syncer.sync_once().ok
        shutil.rmtree(upstream.path)
        assert not syncer.sync_once().ok
    text = run("status", *etcd_args).stdout
    assert "FAILED: " in text
    assert "last success:  " in text and f" {first[:7]}\n" in text
    document = status_json(etcd_args)
    attempt, success = document["attempt"], document["last_success"]
    assert isinstance(attempt, dict) and isinstance(success, dict)
    assert attempt["ok"] is False and attempt["error"]
    assert success["commit"] == first


# -- --once -------------------------------------------------------------------------------


def once(repo: GitRepo, etcd_args: list[str], *extra: str) -> Result:
    args = ["--repo", str(repo.path), "--path", "units", "--once", *etcd_args, *extra]
    return run(*args)


def test_once_exits_0_after_a_good_sync_and_holds_no_leadership_afterwards(
    repo: GitRepo, store: Store, etcd_args: list[str]
) -> None:
    result = once(repo, etcd_args, "--no-scheduler")
    assert result.exit_code == 0, result.stderr
    assert sorted(store.unit_names()) == ["api", "web"]
    assert "synced " in result.stderr  # the daemon's log, on stderr
    assert store.leader() is None


def test_once_exits_1_when_a_file_is_invalid_but_syncs_the_rest(
    repo: GitRepo, store: Store, etcd_args: list[str]
) -> None:
    repo.write("units/web.yaml", BROKEN)
    repo.commit("broken web")
    result = once(repo, etcd_args, "--no-scheduler")
    assert result.exit_code == 1
    assert "invalid unit file: units/web.yaml:2: replicas" in result.stderr
    assert store.unit_names() == ["api"]


def test_once_exits_1_when_the_prune_guard_refuses(
    repo: GitRepo, store: Store, etcd_args: list[str]
) -> None:
    assert once(repo, etcd_args, "--no-scheduler").exit_code == 0
    repo.remove("units")
    repo.commit("remove everything")
    refused = once(repo, etcd_args, "--no-scheduler")
    assert refused.exit_code == 1 and "refusing to delete every managed unit" in refused.stderr
    assert sorted(store.unit_names()) == ["api", "web"]
    allowed = once(repo, etcd_args, "--no-scheduler", "--allow-prune-all")
    assert allowed.exit_code == 0 and store.unit_names() == []


def test_once_refuses_while_a_daemon_leads_and_names_it(
    repo: GitRepo, source: GitSource, store: Store, etcd_args: list[str]
) -> None:
    with running(source, store) as daemon:
        first_sync(daemon)
        result = once(repo, etcd_args, "--no-scheduler")
    assert result.exit_code == 1
    assert daemon.identity in result.stderr and "is leading" in result.stderr


def test_once_also_runs_one_scheduler_pass(
    repo: GitRepo, store: Store, etcd_args: list[str], etcd_endpoint: str, prefix: str
) -> None:
    result = once(repo, etcd_args, "--fleet-prefix", prefix)
    assert result.exit_code == 0, result.stderr
    with Etcd2Client(etcd_endpoint) as client:
        names = sorted(u.name for u in RegistryDriver(client, prefix).units())
    assert len(names) == 4 and names[0].startswith("k2:api:") and names[-1].startswith("k2:web:")
