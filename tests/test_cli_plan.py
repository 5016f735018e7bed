"""``kaylee-sync plan`` and ``kaylee-sync apply`` through the real CLI.

Real Git repositories and the session etcd; CliRunner in-process. ``plan`` must show a
change before it is synced, with the exit codes CI relies on (0 no changes, 2 changes,
1 invalid files or an error); ``apply`` must apply exactly a saved plan, or nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kaylee_sync.cli.sync import cli
from kaylee_sync.embedded_etcd import free_port
from kaylee_sync.source import GitSource, SourceSettings
from kaylee_sync.store import Store, keys
from kaylee_sync.sync.actual import read_actual
from kaylee_sync.sync.syncer import Syncer
from tests.gitrepo import GitRepo, two_units, unit_yaml
from tests.gitrepo import unit_json as spec

BROKEN = "name: web\nreplicas: many\napps:\n  - image: example.com/web:2\n"


@pytest.fixture
def unreachable() -> list[str]:
    """etcd flags that lead nowhere: a command given them must not need etcd."""
    return ["--etcd-endpoints", f"http://127.0.0.1:{free_port()}", "--etcd-timeout", "0.5"]


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return two_units(tmp_path / "repo")


@pytest.fixture
def synced(repo: GitRepo, store: Store) -> Iterator[GitRepo]:
    """The repository, with its head already synced into etcd."""
    with GitSource(SourceSettings(repo=str(repo.path), path="units")) as source:
        assert Syncer(source, store).sync_once().ok
    yield repo


def run(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def plan(repo: GitRepo, *args: str) -> Result:
    return run("plan", "--repo", str(repo.path), "--path", "units", *args)


def apply(repo: GitRepo, saved: Path, *args: str) -> Result:
    return run("apply", str(saved), "--repo", str(repo.path), "--path", "units", *args)


def test_plan_exit_codes_no_changes_0_changes_2_invalid_1(
    synced: GitRepo, store: Store, etcd_args: list[str]
) -> None:
    repo = synced
    unchanged = plan(repo, *etcd_args)
    assert unchanged.exit_code == 0, unchanged.stderr
    assert "0 to create, 0 to update, 0 to delete, 2 unchanged" in unchanged.stdout

    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:2"))
    repo.commit("web 2")
    changed = plan(repo, *etcd_args)
    assert changed.exit_code == 2
    assert "~ web" in changed.stdout
    assert '-      "image": "example.com/web:1"' in changed.stdout
    assert '+      "image": "example.com/web:2"' in changed.stdout
    assert "rolling replacement of 2 replicas" in changed.stdout
    stored = store.get_unit("web")  # plan never writes
    assert stored is not None and stored.value.decode() == spec("web", "example.com/web:1")

    repo.write("units/api.yaml", BROKEN.replace("web", "api"))
    repo.commit("break api")
    invalid = plan(repo, *etcd_args)
    assert invalid.exit_code == 1
    assert "units/api.yaml:2" in invalid.stdout and "replicas" in invalid.stdout


def test_plan_fails_with_exit_1_and_one_line_when_etcd_is_unreachable(
    repo: GitRepo, unreachable: list[str]
) -> None:
    result = plan(repo, *unreachable)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_plan_against_a_ref_needs_no_etcd_markdown(repo: GitRepo, unreachable: list[str]) -> None:
    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:2"))
    repo.write("units/new.yaml", unit_yaml("new"))
    repo.commit("web 2 and a new unit")
    result = plan(repo, "--against", "HEAD~1", "--format", "markdown", *unreachable)
    assert result.exit_code == 2, result.stderr
    assert result.stdout.startswith("## kaylee-sync plan for ")
    assert "Against HEAD\\~1 (" in result.stdout  # markdown escapes the tilde
    assert "**1 to create, 1 to update, 0 to delete, 1 unchanged**" in result.stdout
    assert "| <code>web</code> |" in result.stdout and "```diff" in result.stdout


def test_plan_against_a_ref_needs_no_etcd_json(repo: GitRepo, unreachable: list[str]) -> None:
    base = repo.head()
    repo.remove("units/api.yaml")
    head = repo.commit("remove api")
    result = plan(repo, "--against", base, "--format", "json", *unreachable)
    assert result.exit_code == 2, result.stderr
    document = json.loads(result.stdout)
    assert document["commit"] == head and document["against"].startswith(base)
    assert document["summary"]["delete"] == 1 and document["summary"]["unchanged"] == 1
    (entry,) = [e for e in document["entries"] if e["action"] != "unchanged"]
    assert (entry["name"], entry["action"]) == ("api", "delete")


def test_plan_worktree_includes_an_uncommitted_edit(synced: GitRepo, etcd_args: list[str]) -> None:
    repo = synced
    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:wip"))
    repo.write("units/draft.yaml", unit_yaml("draft"))  # untracked, not ignored
    committed = plan(repo, *etcd_args)
    assert committed.exit_code == 0  # commits are truth: the edit is not there
    worktree = plan(repo, "--worktree", "--format", "json", *etcd_args)
    assert worktree.exit_code == 2
    actions = {e["name"]: e["action"] for e in json.loads(worktree.stdout)["entries"]}
    assert actions == {"api": "unchanged", "draft": "create", "web": "update"}


def test_plan_out_then_apply_applies_exactly_that_plan(
    synced: GitRepo, store: Store, etcd_args: list[str], tmp_path: Path
) -> None:
    repo = synced
    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:2"))
    repo.remove("units/api.yaml")
    repo.write("units/new.yaml", unit_yaml("new"))
    head = repo.commit("change, remove, add")
    saved = tmp_path / "plan.json"
    made = plan(repo, "--out", str(saved), *etcd_args)
    assert made.exit_code == 2 and saved.exists()

    applied = apply(repo, saved, *etcd_args)
    assert applied.exit_code == 0, applied.stderr
    assert applied.stdout == f"applied {head[:7]}: 1 created, 1 updated, 1 deleted\n"
    assert sorted(store.unit_names()) == ["new", "web"]
    stored = store.get_unit("web")
    assert stored is not None and stored.value.decode() == spec("web", "example.com/web:2")
    inventory = read_actual(store).inventory
    assert inventory is not None and inventory.commit == head
    assert plan(repo, *etcd_args).exit_code == 0  # nothing left to do


def test_apply_refuses_when_the_branch_moved_since_the_plan(
    synced: GitRepo, store: Store, etcd_args: list[str], tmp_path: Path
) -> None:
    repo = synced
    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:2"))
    planned = repo.commit("web 2")
    saved = tmp_path / "plan.json"
    assert plan(repo, "--out", str(saved), *etcd_args).exit_code == 2
    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:3"))
    moved = repo.commit("web 3, after the review")
    before = [(s.key, s.value, s.mod_revision) for s in store.get_prefix("")]

    result = apply(repo, saved, *etcd_args)
    assert result.exit_code == 1
    assert f"moved from {planned[:7]} to {moved[:7]}" in result.stderr
    assert [(s.key, s.value, s.mod_revision) for s in store.get_prefix("")] == before


def test_apply_refuses_when_etcd_changed_since_the_plan(
    synced: GitRepo, store: Store, etcd_args: list[str], tmp_path: Path
) -> None:
    repo = synced
    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:2"))
    repo.commit("web 2")
    saved = tmp_path / "plan.json"
    assert plan(repo, "--out", str(saved), *etcd_args).exit_code == 2
    store.put_unit("adhoc", spec("adhoc", "example.com/adhoc:1"))  # `kaylee run` meanwhile
    before = [(s.key, s.value, s.mod_revision) for s in store.get_prefix("")]

    result = apply(repo, saved, *etcd_args)
    assert result.exit_code == 1 and "etcd changed since the plan was made" in result.stderr
    assert [(s.key, s.value, s.mod_revision) for s in store.get_prefix("")] == before


def test_apply_refuses_plans_that_do_not_describe_a_commit_against_etcd(
    synced: GitRepo, store: Store, etcd_args: list[str], tmp_path: Path
) -> None:
    repo = synced
    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:wip"))
    worktree = tmp_path / "worktree.json"
    assert plan(repo, "--worktree", "--out", str(worktree), *etcd_args).exit_code == 2
    refused = apply(repo, worktree, *etcd_args)
    assert refused.exit_code == 1 and "commit them first" in refused.stderr

    repo.commit("web wip")
    against = tmp_path / "against.json"
    assert plan(repo, "--against", "HEAD~1", "--out", str(against), *etcd_args).exit_code == 2
    refused = apply(repo, against, *etcd_args)
    assert refused.exit_code == 1 and "cannot be applied" in refused.stderr
    stored = store.get(keys.unit_key("web"))
    assert stored is not None and b"web:1" in stored.value


def test_apply_refuses_while_a_daemon_leads_and_writes_nothing(
    synced: GitRepo, store: Store, etcd_args: list[str], tmp_path: Path
) -> None:
    synced.write("units/web.yaml", unit_yaml("web", "example.com/web:3"))
    synced.commit("change")
    saved = tmp_path / "plan.json"
    assert plan(synced, "--out", str(saved), *etcd_args).exit_code == 2
    before = store.get_unit("web")
    lease = store.lease(30)
    store.put("master", "node-7:123:abc", lease=lease)
    try:
        refused = apply(synced, saved, *etcd_args)
    finally:
        store.revoke(lease)
    assert refused.exit_code == 1
    assert "node-7:123:abc is leading" in refused.stderr
    assert store.get_unit("web") == before
    assert store.leader() is None  # the refused apply left no leadership of its own behind
    assert apply(synced, saved, *etcd_args).exit_code == 0
