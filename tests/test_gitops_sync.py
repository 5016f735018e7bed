"""One sync attempt (``Syncer.sync_once``) against a real Git repository and a real etcd.

These are the rules of design.md ("Semantics the team has decided") as seen from the
outside: what lands in etcd, what is left alone, what ``sync/status`` says afterwards.
The daemon and ``--once`` call exactly this; their own tests check the wiring around it.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kaylee_sync.errors import StoreError
from kaylee_sync.settings import EtcdSettings
from kaylee_sync.source import GitSource, SourceSettings
from kaylee_sync.spec import App, UnitSpec, to_json
from kaylee_sync.store import Store, keys
from kaylee_sync.sync import syncer as syncer_module
from kaylee_sync.sync.actual import read_actual
from kaylee_sync.sync.apply import apply_plan
from kaylee_sync.sync.status import read_status
from kaylee_sync.sync.suspend import resume, suspend
from kaylee_sync.sync.syncer import Syncer, SyncSettings
from tests.gitrepo import GitRepo, unit_yaml

BROKEN = "name: web\nreplicas: many\napps:\n  - image: example.com/web:2\n"


def spec(name: str, image: str = "example.com/app:1", replicas: int | None = 2) -> str:
    """What etcd holds for ``unit_yaml(name, image, replicas)``."""
    return to_json(UnitSpec(name=name, replicas=replicas or 0, apps=(App(image=image),)))


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    r = GitRepo(tmp_path / "repo")
    r.write("units/web.yaml", unit_yaml("web"))
    r.write("units/api.yaml", unit_yaml("api"))
    r.write("units/db.yaml", unit_yaml("db", replicas=None))
    r.write("README.md", "not a unit\n")
    r.commit("three units")
    return r


@pytest.fixture
def source(repo: GitRepo) -> Iterator[GitSource]:
    with GitSource(SourceSettings(repo=str(repo.path), path="units")) as opened:
        yield opened


def units(store: Store) -> dict[str, str]:
    return {s.key.removeprefix(keys.UNITS): s.value.decode() for s in store.list_units()}


def revisions(store: Store) -> dict[str, int]:
    return {s.key.removeprefix(keys.UNITS): s.mod_revision for s in store.list_units()}


def test_a_commit_lands_in_etcd_with_its_inventory_and_status(
    repo: GitRepo, source: GitSource, store: Store
) -> None:
    result = Syncer(source, store).sync_once()
    assert result.ok and result.commit == repo.head()
    assert units(store) == {"web": spec("web"), "api": spec("api"), "db": spec("db", replicas=None)}
    inventory = read_actual(store).inventory
    assert inventory is not None and inventory.commit == repo.head()
    assert sorted(inventory.units) == ["api", "db", "web"]
    assert inventory.units["web"].path == "units/web.yaml"
    status = read_status(store)
    assert status is not None and status.attempt.ok and status.last_success is not None
    assert status.attempt.counts["create"] == 3


def test_one_invalid_file_blocks_only_its_own_unit(
    repo: GitRepo, source: GitSource, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    syncer = Syncer(source, store)
    syncer.sync_once()
    before = store.get_unit("web")
    repo.write("units/web.yaml", BROKEN)
    repo.write("units/api.yaml", unit_yaml("api", "example.com/api:2"))
    repo.write("units/new.yaml", unit_yaml("new"))
    commit = repo.commit("break web, change api, add new")

    with caplog.at_level(logging.WARNING):
        result = syncer.sync_once()

    assert result.ok and result.plan is not None
    assert [p.path for p in result.plan.problems] == ["units/web.yaml"]
    now = units(store)
    assert now["api"] == spec("api", "example.com/api:2")
    assert now["new"] == spec("new")
    after = store.get_unit("web")
    assert before is not None and after is not None
    assert (after.value, after.mod_revision) == (before.value, before.mod_revision)
    # The unit stays owned (a fixed file updates it later) and the problem is reported.
    inventory = read_actual(store).inventory
    assert inventory is not None and inventory.commit == commit and "web" in inventory.units
    status = read_status(store)
    assert status is not None
    assert [(p["file"], p["line"], p["field"]) for p in status.attempt.problems] == [
        ("units/web.yaml", 2, "replicas")
    ]
    assert "units/web.yaml:2: replicas" in caplog.text

    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:3"))
    repo.commit("fix web")
    assert syncer.sync_once().ok
    assert units(store)["web"] == spec("web", "example.com/web:3")


def test_the_same_invalid_file_is_logged_once_not_at_every_poll(
    repo: GitRepo, source: GitSource, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    repo.write("units/web.yaml", BROKEN)
    repo.commit("broken")
    syncer = Syncer(source, store)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert syncer.sync_once().ok
    assert caplog.text.count("units/web.yaml:2: replicas") == 1


def test_deleting_every_unit_file_deletes_nothing_unless_allowed(
    repo: GitRepo, source: GitSource, store: Store
) -> None:
    Syncer(source, store).sync_once()
    before = units(store)
    repo.remove("units")
    repo.commit("remove everything")

    result = Syncer(source, store, SyncSettings(max_prune=100)).sync_once()
    assert result.plan is not None and "every managed unit" in result.plan.prune_refused
    assert units(store) == before
    status = read_status(store)
    assert status is not None and "every managed unit" in status.attempt.prune_refused
    # Still owned: lifting the guard later deletes them.
    assert Syncer(source, store, SyncSettings(allow_prune_all=True)).sync_once().ok
    assert units(store) == {}


def test_max_prune_refuses_a_commit_deleting_more_units_than_allowed(
    repo: GitRepo, source: GitSource, store: Store
) -> None:
    Syncer(source, store).sync_once()
    repo.remove("units/web.yaml")
    repo.remove("units/api.yaml")
    repo.write("units/db.yaml", unit_yaml("db", "example.com/db:2", replicas=None))
    repo.commit("remove two, change one")

    result = Syncer(source, store, SyncSettings(max_prune=1, max_prune_percent=100.0)).sync_once()
    assert result.plan is not None and "--max-prune 1" in result.plan.prune_refused
    # The refusal blocks the deletions only: the change still goes ahead.
    assert units(store) == {
        "web": spec("web"),
        "api": spec("api"),
        "db": spec("db", "example.com/db:2", replicas=None),
    }
    assert Syncer(source, store, SyncSettings(max_prune=2, max_prune_percent=100.0)).sync_once().ok
    assert sorted(units(store)) == ["db"]


def test_a_unit_created_with_kaylee_run_survives_every_sync(
    repo: GitRepo, source: GitSource, store: Store
) -> None:
    syncer = Syncer(source, store, SyncSettings(allow_prune_all=True))
    syncer.sync_once()
    store.put_unit("adhoc", spec("adhoc"))  # what `kaylee run adhoc.yaml` writes
    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:2"))
    repo.commit("change web")
    assert syncer.sync_once().ok
    repo.remove("units")
    repo.commit("remove every file")
    assert syncer.sync_once().ok
    assert units(store) == {"adhoc": spec("adhoc")}
    inventory = read_actual(store).inventory
    assert inventory is not None and inventory.units == {}


def test_a_hand_edit_is_put_back_at_the_next_sync_and_logged(
    source: GitSource, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    syncer = Syncer(source, store)
    syncer.sync_once()
    store.put_unit("web", spec("web", "example.com/hotfix:1"))
    store.delete_unit("api")
    with caplog.at_level(logging.WARNING):
        result = syncer.sync_once()
    assert result.applied is not None
    assert (result.applied.updated, result.applied.created) == (1, 1)
    assert units(store)["web"] == spec("web") and units(store)["api"] == spec("api")
    assert "web: drift: units/web was changed in etcd outside Git" in caplog.text
    assert "api: drift: units/api is missing in etcd (deleted outside Git" in caplog.text


def test_a_suspended_unit_is_left_alone_until_resumed(
    repo: GitRepo, source: GitSource, store: Store
) -> None:
    syncer = Syncer(source, store)
    syncer.sync_once()
    hotfix = spec("web", "example.com/hotfix:1")
    store.put_unit("web", hotfix)
    suspend(store, "web", who="oncall", reason="INC-42", until=None, now=0.0)
    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:2"))
    repo.commit("change web meanwhile")

    result = syncer.sync_once()
    assert result.ok and result.counts["suspended"] == 1
    assert units(store)["web"] == hotfix

    assert resume(store, "web") is not None
    assert syncer.sync_once().ok
    assert units(store)["web"] == spec("web", "example.com/web:2")


def test_a_failed_fetch_writes_nothing_and_keeps_the_last_success(
    tmp_path: Path, store: Store
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
        before = [(s.key, s.value, s.mod_revision) for s in store.get_prefix("units/")]
        inventory_before = store.get(keys.INVENTORY)
        shutil.rmtree(upstream.path)  # the remote is gone

        result = syncer.sync_once()

    assert not result.ok and result.stage == "git"
    assert [(s.key, s.value, s.mod_revision) for s in store.get_prefix("units/")] == before
    assert store.get(keys.INVENTORY) == inventory_before
    status = read_status(store)
    assert status is not None and not status.attempt.ok
    assert status.attempt.error == result.error and status.attempt.error
    assert status.last_success is not None and status.last_success.commit == first


def test_an_unreachable_etcd_fails_the_attempt_without_raising(
    source: GitSource, unreachable_store: Store
) -> None:
    result = Syncer(source, unreachable_store).sync_once()
    assert not result.ok and result.stage == "etcd" and result.commit
    assert "127.0.0.1" in result.error


@pytest.fixture
def unreachable_store(tmp_path: Path) -> Iterator[Store]:
    from kaylee_sync.embedded_etcd import free_port

    settings = EtcdSettings(endpoints=(f"http://127.0.0.1:{free_port()}",), timeout=0.5)
    with Store(settings) as opened:
        yield opened


def test_a_deposed_leader_writes_nothing_and_it_is_not_a_failure(
    source: GitSource, store: Store
) -> None:
    store.put(keys.MASTER, "someone-else")
    result = Syncer(source, store, identity="me", is_leader=lambda: False).sync_once()
    assert result.deposed and result.stage == "leadership" and not result.ok
    assert units(store) == {} and read_status(store) is None


def test_a_leader_deposed_during_the_apply_is_stopped_by_the_fence(
    source: GitSource, store: Store
) -> None:
    # The leader still believes it leads when it plans; etcd already names another.
    store.put(keys.MASTER, "the-new-leader")
    answers = iter([True, False])
    syncer = Syncer(source, store, identity="me", is_leader=lambda: next(answers, False))
    result = syncer.sync_once()
    assert result.deposed
    assert units(store) == {} and store.get(keys.INVENTORY) is None


def test_a_concurrent_change_is_a_conflict_worth_a_replan(
    source: GitSource, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncer = Syncer(source, store)

    def apply_after_a_manual_write(*args: Any, **kwargs: Any) -> Any:
        store.put_unit("web", spec("web", "example.com/manual:1"))  # `kaylee run` wins the race
        return apply_plan(*args, **kwargs)

    store.put_unit("web", spec("web", "example.com/old:1"))
    monkeypatch.setattr(syncer_module, "apply_plan", apply_after_a_manual_write)
    result = syncer.sync_once()
    assert not result.ok and result.conflict and not result.deposed
    monkeypatch.undo()
    assert syncer.sync_once().ok  # the re-plan takes the unit over
    assert units(store)["web"] == spec("web")


def test_the_commit_lag_is_measured_only_when_the_commit_is_new(
    repo: GitRepo, source: GitSource, store: Store
) -> None:
    syncer = Syncer(source, store)
    assert syncer.sync_once().lag is not None
    assert syncer.sync_once().lag is None  # same commit again: nothing was brought
    repo.write("README.md", "a commit outside the unit path\n")
    repo.commit("docs")
    assert syncer.sync_once().lag is not None


def test_a_malformed_inventory_stops_the_sync_before_anything_is_written(
    repo: GitRepo, source: GitSource, store: Store
) -> None:
    syncer = Syncer(source, store)
    syncer.sync_once()
    store.put(keys.INVENTORY, "{not json")
    repo.remove("units/web.yaml")
    repo.commit("remove web")
    result = syncer.sync_once()
    assert not result.ok and result.stage == "etcd" and "sync/inventory" in result.error
    assert "web" in units(store)
    with pytest.raises(StoreError):
        read_actual(store)
