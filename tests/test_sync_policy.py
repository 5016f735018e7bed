"""The rollout policy through sync: stored beside the spec (policy/<name>), written with
it, planned as a policy change when only it changes, and never part of units/<name>."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaylee_sync.plan import compute
from kaylee_sync.plan.model import Action
from kaylee_sync.source import GitSource, SourceSettings
from kaylee_sync.spec import parse_stored_policy
from kaylee_sync.store import Store, keys
from kaylee_sync.sync.actual import read_actual
from kaylee_sync.sync.syncer import Syncer
from tests.gitrepo import GitRepo, unit_yaml

POLICY = "rollout:\n  canary: 1\n  autoPromote: true\nhealth:\n  etcdKey: /s/${KAYLEE_ID}\n"


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    r = GitRepo(tmp_path / "repo")
    r.write("units/web.yaml", unit_yaml("web") + POLICY)
    r.write("units/api.yaml", unit_yaml("api"))
    r.commit("two units, one with a policy")
    return r


@pytest.fixture
def source(repo: GitRepo) -> Iterator[GitSource]:
    with GitSource(SourceSettings(repo=str(repo.path), path="units")) as opened:
        yield opened


def test_the_policy_is_stored_beside_the_unchanged_spec(
    repo: GitRepo, source: GitSource, store: Store
) -> None:
    assert Syncer(source, store).sync_once().ok
    web, api = store.get(keys.unit_key("web")), store.get(keys.unit_key("api"))
    assert web is not None and api is not None
    assert b"rollout" not in web.value and b"health" not in web.value
    policy = store.get(keys.policy_key("web"))
    assert policy is not None
    assert parse_stored_policy(policy.value, "policy/web").rollout.canary == 1
    # the spec and its policy were written by the same transaction
    assert policy.mod_revision == web.mod_revision
    assert store.get(keys.policy_key("api")) is None  # no section: no key


def test_changing_only_the_policy_is_a_policy_change_not_a_restart(
    repo: GitRepo, source: GitSource, store: Store
) -> None:
    assert Syncer(source, store).sync_once().ok
    before = store.get(keys.unit_key("web"))
    repo.write("units/web.yaml", unit_yaml("web") + POLICY.replace("canary: 1", "canary: 2"))
    repo.commit("two canaries")
    source.fetch()
    desired = source.desired(source.resolve())
    plan = compute.make_plan(desired, read_actual(store), now=time.time())
    entry = next(e for e in plan.entries if e.name == "web")
    assert entry.action == Action.POLICY
    assert "nothing restarts" in entry.reason and "canary" in entry.diff
    assert entry.effect is not None and "no instance restarts" in entry.effect.summary
    assert Syncer(source, store).sync_once().ok
    after = store.get(keys.unit_key("web"))
    assert after == before  # units/web untouched: same bytes, same revision
    policy = store.get(keys.policy_key("web"))
    assert policy is not None and b'"canary":2' in policy.value
    # removing the sections removes the key, still without touching the spec
    repo.write("units/web.yaml", unit_yaml("web"))
    repo.commit("no policy")
    assert Syncer(source, store).sync_once().ok
    assert store.get(keys.policy_key("web")) is None
    assert store.get(keys.unit_key("web")) == before


def test_deleting_a_unit_deletes_its_policy(repo: GitRepo, source: GitSource, store: Store) -> None:
    assert Syncer(source, store).sync_once().ok
    repo.remove("units/web.yaml")
    repo.commit("web is gone")
    assert Syncer(source, store).sync_once().ok
    assert store.get(keys.unit_key("web")) is None
    assert store.get(keys.policy_key("web")) is None


def test_a_spec_change_is_planned_as_its_policy_will_roll_it(
    repo: GitRepo, source: GitSource, store: Store
) -> None:
    assert Syncer(source, store).sync_once().ok
    repo.write("units/web.yaml", unit_yaml("web", image="example.com/web:2") + POLICY)
    repo.write("units/api.yaml", unit_yaml("api", image="example.com/api:2"))
    repo.commit("new images")
    source.fetch()
    plan = compute.make_plan(source.desired(source.resolve()), read_actual(store), now=time.time())
    effects = {e.name: e.effect.summary for e in plan.entries if e.effect is not None}
    assert effects["web"].endswith("after 1 canary, one at a time, health-gated")
    assert effects["api"].endswith(", one at a time")  # no policy: as before
