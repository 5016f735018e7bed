"""The prune guard holds: refused deletions stay refused until Git, a passing commit or
an explicit ``--allow-prune`` releases them (issue 9, "Deletions that need a reason").

Each scenario runs against a real Git repository and the session etcd: a commit that
the guard must refuse, then several syncs (and, where it matters, the daemon's own poll
loop and a new leader), then the release. "Nothing deleted" is checked on etcd itself,
by name and mod revision, never on what the plan says.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

from kaylee_sync.cli.sync import cli
from kaylee_sync.errors import ConflictError, StoreError
from kaylee_sync.plan.compute import make_plan
from kaylee_sync.plan.model import Action, ActualState, DesiredState, PruneHold
from kaylee_sync.plan.output_json import plan_from_json, plan_to_json
from kaylee_sync.plan.output_markdown import render_markdown
from kaylee_sync.plan.output_text import render_text
from kaylee_sync.plan.prune import PruneLimits
from kaylee_sync.source import GitSource, SourceSettings
from kaylee_sync.store import Store, keys
from kaylee_sync.sync.actual import read_actual
from kaylee_sync.sync.apply import apply_plan
from kaylee_sync.sync.status import read_status
from kaylee_sync.sync.suspend import resume, suspend
from kaylee_sync.sync.syncer import Syncer, SyncSettings
from tests.gitrepo import GitRepo, unit_yaml
from tests.plan_builders import NOW, desired, problem, spec, suspension, synced
from tests.polling import wait_for
from tests.test_gitops_daemon import running

BROKEN = "name: u0\nreplicas: many\napps:\n  - image: example.com/u0:2\n"
NAMES = [f"u{i}" for i in range(10)]
POLLS = 5  # syncs after each refusal; the old guard gave way at the second


def snapshot(store: Store) -> dict[str, int]:
    """Every unit in etcd with its mod revision: equal snapshots mean nothing was touched."""
    return {s.key.removeprefix(keys.UNITS): s.mod_revision for s in store.list_units()}


def make_repo(path: Path, names: list[str]) -> GitRepo:
    repo = GitRepo(path)
    for name in names:
        repo.write(f"units/{name}.yaml", unit_yaml(name))
    repo.commit(f"{len(names)} units")
    return repo


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return make_repo(tmp_path / "repo", NAMES)


@pytest.fixture
def source(repo: GitRepo) -> Iterator[GitSource]:
    with GitSource(SourceSettings(repo=str(repo.path), path="units")) as opened:
        yield opened


@pytest.fixture
def synced_store(source: GitSource, store: Store) -> Store:
    assert Syncer(source, store).sync_once().ok
    assert sorted(store.unit_names()) == NAMES
    return store


def poll(syncer: Syncer, times: int = POLLS) -> None:
    for _ in range(times):
        result = syncer.sync_once()
        assert result.ok, result.error
        assert result.plan is not None and result.plan.prune_refused


def held(store: Store) -> int:
    hold = read_actual(store).prune_hold
    return 0 if hold is None else hold.held


# -- the three scenarios of the issue ---------------------------------------------------


def test_delete_all_and_add_one_deletes_nothing_at_any_later_poll(
    repo: GitRepo, source: GitSource, synced_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    store = synced_store
    before = snapshot(store)
    repo.remove("units")
    repo.write("units/new.yaml", unit_yaml("new"))
    commit = repo.commit("delete every unit, add one")
    syncer = Syncer(source, store)
    with caplog.at_level(logging.WARNING):
        poll(syncer)
        poll(Syncer(source, store))  # a restarted daemon or a new leader: the same
    now = snapshot(store)
    assert {n: now[n] for n in NAMES} == before and "new" in now  # the add went ahead
    assert held(store) == 10
    # Once per commit in the whole cluster, not at every poll and not again after a restart.
    assert caplog.text.count(f"prune refused at {commit[:7]}") == 1
    status = read_status(store)
    assert status is not None and status.attempt.prune_hold is not None
    assert status.attempt.prune_hold.held == 10 and status.attempt.prune_hold.baseline == 10

    lifted = Syncer(source, store, SyncSettings(allow_prune_all=True))
    with caplog.at_level(logging.WARNING):
        result = lifted.sync_once()
    assert result.ok and result.applied is not None and result.applied.deleted == 10
    assert store.unit_names() == ["new"] and store.get(keys.PRUNE_HOLD) is None
    assert "prune guard lifted by --allow-prune: deleted 10 units (u0, u1" in caplog.text
    status = read_status(store)
    assert status is not None and status.attempt.prune_hold is None
    assert status.attempt.prune_released.startswith("released by --allow-prune")


def test_delete_nine_and_break_the_tenth_deletes_nothing_until_the_files_come_back(
    repo: GitRepo, source: GitSource, synced_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    store = synced_store
    before = snapshot(store)
    for name in NAMES[1:]:
        repo.remove(f"units/{name}.yaml")
    repo.write("units/u0.yaml", BROKEN)
    repo.commit("delete nine, break one")
    syncer = Syncer(source, store)
    with caplog.at_level(logging.WARNING):
        poll(syncer)
    assert caplog.text.count("prune refused at") == 1
    assert caplog.text.count("invalid unit file: units/u0.yaml:2") == 1
    assert snapshot(store) == before and held(store) == 9
    plan = syncer.plan(syncer.desired())
    assert plan.count(Action.PRUNE_REFUSED) == 9 and plan.count(Action.INVALID) == 1
    assert "no valid managed unit is left" in plan.prune_refused
    # Even with the budget lifted by hand, "no valid unit left" still refuses.
    wide = Syncer(source, store, SyncSettings(max_prune=None, max_prune_percent=None))
    poll(wide, 2)
    assert snapshot(store) == before

    for name in NAMES:
        repo.write(f"units/{name}.yaml", unit_yaml(name))
    repo.commit("restore every file")
    result = syncer.sync_once()
    assert result.ok and result.plan is not None and not result.plan.prune_refused
    assert result.plan.prune_released == "Git no longer deletes the held units"
    assert snapshot(store) == before and store.get(keys.PRUNE_HOLD) is None


def test_a_force_push_of_an_unrelated_history_is_held_through_the_daemons_polls(
    tmp_path: Path, store: Store
) -> None:
    upstream = make_repo(tmp_path / "upstream", NAMES)
    settings = SourceSettings(
        repo=f"file://{upstream.path}", path="units", cache_dir=tmp_path / "cache"
    )
    with GitSource(settings) as source:
        assert Syncer(source, store).sync_once().ok
        before = snapshot(store)
        # Another history entirely, with other units, forced onto main.
        upstream.git("checkout", "-q", "--orphan", "unrelated")
        upstream.git("rm", "-q", "-r", "--cached", ".")
        for path in (upstream.path / "units").iterdir():
            path.unlink()
        others = [f"other{i}" for i in range(10)]
        for name in others:
            upstream.write(f"units/{name}.yaml", unit_yaml(name))
        pushed = upstream.commit("unrelated history")
        upstream.git("branch", "-M", "unrelated", "main")

        with running(source, store, interval=0.1) as daemon:
            metric = daemon.metrics.registry.get_sample_value
            wait_for(
                lambda: (metric("kaylee_sync_syncs_total", {"result": "partial"}) or 0) >= POLLS,
                timeout=30,
                what=f"{POLLS} refused syncs",
            )
            assert daemon.last_result is not None and daemon.last_result.commit == pushed
            assert metric("kaylee_sync_prune_held_units") == 10
        now = snapshot(store)
        assert {n: now[n] for n in NAMES} == before and set(others) <= now.keys()

        with running(source, store, interval=0.1, sync=SyncSettings(allow_prune_all=True)):
            wait_for(lambda: sorted(store.unit_names()) == others, 30, "the explicit release")
        assert store.get(keys.PRUNE_HOLD) is None


# -- the baseline does not grow, and a passing commit releases -------------------------


def test_units_added_after_a_refusal_do_not_make_the_held_deletions_small(
    repo: GitRepo, source: GitSource, synced_store: Store
) -> None:
    store = synced_store
    repo.remove("units/u1.yaml")
    repo.remove("units/u2.yaml")
    repo.commit("delete two of ten: over the budget of one")
    syncer = Syncer(source, store)
    poll(syncer, 2)
    for i in range(30):
        repo.write(f"units/more{i}.yaml", unit_yaml(f"more{i}"))
    repo.commit("thirty more units: two of forty would be within 10 %")
    poll(syncer)
    assert {"u1", "u2"} <= set(store.unit_names()) and len(store.unit_names()) == 40
    hold = read_actual(store).prune_hold
    assert hold is not None and hold.baseline == 10 and hold.held == 2

    repo.write("units/u1.yaml", unit_yaml("u1"))
    repo.commit("bring u1 back: one deletion of the ten is within the budget")
    result = syncer.sync_once()
    assert result.ok and result.applied is not None and result.applied.deleted == 1
    assert "u2" not in store.unit_names() and store.get(keys.PRUNE_HOLD) is None
    assert result.plan is not None and result.plan.prune_released.startswith("the commit passes")


def test_the_default_budget_refuses_sixty_percent(
    repo: GitRepo, source: GitSource, synced_store: Store
) -> None:
    store = synced_store
    before = snapshot(store)
    for name in NAMES[:6]:
        repo.remove(f"units/{name}.yaml")
    repo.commit("delete six of ten")
    poll(Syncer(source, store))
    assert snapshot(store) == before
    status = read_status(store)
    assert status is not None
    assert "refusing to delete 6 of 10 units managed: more than the budget of 1" in (
        status.attempt.prune_refused
    )
    repo.remove(f"units/{NAMES[6]}.yaml")  # a smaller commit cannot sneak past either
    repo.commit("and a seventh")
    poll(Syncer(source, store))
    assert snapshot(store) == before


def test_one_deletion_passes_the_default_budget_of_a_small_repository(
    repo: GitRepo, source: GitSource, synced_store: Store
) -> None:
    repo.remove("units/u3.yaml")
    repo.commit("retire u3")
    result = Syncer(source, synced_store).sync_once()
    assert result.ok and result.plan is not None and not result.plan.prune_refused
    assert "u3" not in synced_store.unit_names() and len(synced_store.unit_names()) == 9


def test_the_default_budget_refuses_1000_of_1010_and_says_so_in_every_output() -> None:
    everything = [spec(f"s{i:04d}") for i in range(1010)]
    kept = everything[:10]
    plan = make_plan(desired(*kept), synced(desired(*everything)), now=NOW)
    assert plan.count(Action.PRUNE_REFUSED) == 1000 and plan.count(Action.DELETE) == 0
    assert "refusing to delete 1000 of 1010 units managed: more than the budget of 20" in (
        plan.prune_refused
    )
    assert "--max-prune 20 per commit" in plan.prune_refused
    assert plan.prune_hold is not None and plan.prune_hold.baseline == 1010
    guard_line = f"Prune guard: {plan.prune_refused}"
    assert guard_line in render_text(plan, color=False)
    assert "> **Prune guard:** refusing to delete 1000 of 1010" in render_markdown(plan)
    doc = plan_to_json(plan)
    assert doc["prune_refused"] == plan.prune_refused and doc["prune_hold"]["held"] == 1000
    assert plan_from_json(json.loads(json.dumps(doc))).prune_hold == plan.prune_hold


def test_a_plan_says_since_when_and_since_which_commit_a_refusal_is_held() -> None:
    ten = [spec(f"s{i}") for i in range(10)]
    hold = PruneHold(NOW - 3600, "f" * 40, "f" * 40, 10, 2, "refused before")
    etcd = dataclasses.replace(synced(desired(*ten)), prune_hold=hold)
    plan = make_plan(desired(*ten[2:]), etcd, now=NOW)
    assert plan.prune_hold is not None and plan.prune_hold.since == NOW - 3600
    assert plan.prune_hold.commit != plan.prune_hold.first_commit
    line = next(x for x in render_text(plan, color=False).splitlines() if "Prune guard" in x)
    assert line.endswith("(held since 2023-11-14 21:13 UTC, first refused at fffffff)")
    back = make_plan(desired(*ten), etcd, now=NOW)
    assert back.prune_hold is None and back.prune_released and not back.has_changes
    assert "Prune guard hold ends: Git no longer deletes the held units" in render_text(
        back, color=False
    )


def test_the_budget_is_ten_percent_at_least_one_and_at_most_twenty() -> None:
    limits = PruneLimits()
    assert [limits.budget(n) for n in (1, 9, 10, 19, 20, 30, 199, 200, 10_000)] == [
        1,
        1,
        1,
        1,
        2,
        3,
        19,
        20,
        20,
    ]
    assert PruneLimits(max_count=None, max_percent=None).budget(7) == 7
    assert PruneLimits(max_count=0).budget(100) == 0


# -- the hold in etcd ----------------------------------------------------------------------


def test_a_refusal_is_recorded_before_any_unit_is_written_and_guarded(
    repo: GitRepo, source: GitSource, synced_store: Store
) -> None:
    store = synced_store
    repo.remove("units")
    repo.write("units/new.yaml", unit_yaml("new"))
    repo.commit("delete every unit, add one")
    syncer = Syncer(source, store)
    actual = read_actual(store)
    plan = syncer.plan(syncer.desired(), actual)
    assert plan.prune_hold is not None and plan.count(Action.CREATE) == 1
    store.put(keys.PRUNE_HOLD, '{"v":1}')  # another writer got there first
    before = snapshot(store)
    with pytest.raises(ConflictError, match="recording the prune hold"):
        apply_plan(store, plan, actual.inventory, fence=None, prune_hold=actual.prune_hold)
    assert snapshot(store) == before  # not even the new unit: the hold comes first


def test_a_malformed_hold_stops_sync_with_the_key_named_and_nothing_deleted(
    repo: GitRepo, source: GitSource, synced_store: Store
) -> None:
    store = synced_store
    repo.remove("units")
    repo.commit("delete everything")
    poll(Syncer(source, store), 1)
    before = snapshot(store)
    fields = '"first_commit":"a","commit":"a","baseline":1,"held":1,"reason":"r"'
    garbage_values = [b"{oops", b'{"v":2}', b"\xff", b"[]", b'{"v":1,"since":1e999}']
    garbage_values += [f'{{"v":1,"since":{t},{fields}}}'.encode() for t in ("1e300", "NaN")]
    garbage_values.append(b'{"v":1,"since":1,"first_commit":"a","commit":"a","baseline":-1}')
    for garbage in garbage_values:
        store.put(keys.PRUNE_HOLD, garbage)
        result = Syncer(source, store, SyncSettings(allow_prune_all=True)).sync_once()
        assert not result.ok and result.stage == "etcd"
        assert f"{keys.PRUNE_HOLD} is not a valid prune hold" in result.error
        assert "\n" not in result.error and snapshot(store) == before
    with pytest.raises(StoreError):
        read_actual(store)
    store.delete(keys.PRUNE_HOLD)  # the documented repair: the next sync re-judges
    assert Syncer(source, store).sync_once().plan.prune_refused  # type: ignore[union-attr]
    assert snapshot(store) == before


# -- the command line: plan shows it, apply releases it, status reports it ---------------


def run(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_plan_shows_the_hold_and_a_saved_allow_prune_plan_releases_it(
    repo: GitRepo, source: GitSource, synced_store: Store, etcd_args: list[str], tmp_path: Path
) -> None:
    store = synced_store
    repo.remove("units")
    repo.write("units/new.yaml", unit_yaml("new"))
    commit = repo.commit("delete every unit, add one")
    poll(Syncer(source, store), 2)
    where = ["--repo", str(repo.path), "--path", "units"]

    text = run("plan", *where, *etcd_args)
    assert text.exit_code == 1
    assert "Prune guard: refusing to delete 10 units: every unit managed when" in text.stdout
    assert f"first refused, at {commit[:7]} (10; the units added since" in text.stdout
    doc = json.loads(run("plan", *where, *etcd_args, "--format", "json").stdout)
    assert doc["prune_hold"]["held"] == 10 and doc["summary"]["prune-refused"] == 10
    status = run("status", *etcd_args)
    assert "prune hold:    10 units held back since" in status.stdout

    saved = tmp_path / "plan.json"
    lifted = run("plan", *where, *etcd_args, "--allow-prune", "--out", str(saved))
    assert lifted.exit_code == 2 and "Prune guard lifted by --allow-prune" in lifted.stdout
    assert snapshot(store).keys() == {*NAMES, "new"}  # plan never writes
    applied = run("apply", str(saved), *where, *etcd_args)
    assert applied.exit_code == 0, applied.output
    assert "Prune guard hold ends: released by --allow-prune, deleting 10 units" in applied.stdout
    assert "10 deleted" in applied.stdout
    assert store.unit_names() == ["new"] and store.get(keys.PRUNE_HOLD) is None


def test_once_keeps_the_hold_until_started_with_allow_prune(
    repo: GitRepo, synced_store: Store, etcd_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = synced_store
    repo.remove("units")
    repo.write("units/new.yaml", unit_yaml("new"))
    repo.commit("delete every unit, add one")
    once = ["--repo", str(repo.path), "--path", "units", "--once", "--no-scheduler", *etcd_args]
    for _ in range(3):
        refused = run(*once)
        assert refused.exit_code == 1 and sorted(store.unit_names()) == sorted([*NAMES, "new"])
    monkeypatch.setenv("KAYLEE_ALLOW_PRUNE", "true")
    lifted = run(*once)
    assert lifted.exit_code == 0, lifted.output
    assert "prune guard lifted by --allow-prune: deleted 10 units" in lifted.stderr
    assert store.unit_names() == ["new"] and store.get(keys.PRUNE_HOLD) is None


def test_the_old_flag_name_and_its_variable_still_lift_the_guard(
    repo: GitRepo, synced_store: Store, etcd_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo.remove("units")
    repo.commit("delete everything")
    where = ["--repo", str(repo.path), "--path", "units", *etcd_args]
    assert run("plan", *where, "--allow-prune-all").exit_code == 2
    monkeypatch.setenv("KAYLEE_PLAN_ALLOW_PRUNE_ALL", "true")
    assert run("plan", *where).exit_code == 2
    refused = run("plan", *where, "--max-prune-percent", "nan")
    assert refused.exit_code == 2 and "--max-prune-percent" in refused.output
    assert "Traceback" not in refused.output


# -- trials: random refused commits, random later commits and polls --------------------

# 40 in the suite; PRUNE_TRIALS=500 for the run recorded in docs/reliability.md.
TRIALS = int(os.environ.get("PRUNE_TRIALS", "40"))
PROPERTY_EXAMPLES = int(os.environ.get("PRUNE_EXAMPLES", "150"))


def test_random_refused_commits_stay_held_through_later_commits_and_polls(
    tmp_path: Path, store: Store, record_property: Callable[[str, object], None]
) -> None:
    """Each trial: a repository of 3-25 units, a commit the guard must refuse (deletions
    over the budget, perhaps breaking or adding files), then 1-4 later commits that only
    add, change or break other files, each followed by 1-3 syncs. No held unit may be
    deleted; --allow-prune then deletes exactly the held ones."""
    rng = random.Random(9)
    failures = []
    polls = held_units = 0
    for trial in range(TRIALS):
        names = [f"t{trial}n{i}" for i in range(rng.randint(3, 25))]
        repo = make_repo(tmp_path / f"trial{trial}", names)
        for key in [s.key for s in store.get_prefix("")]:  # each trial starts empty
            store.delete(key)
        with GitSource(SourceSettings(repo=str(repo.path), path="units")) as source:
            syncer = Syncer(source, store)
            assert syncer.sync_once().ok
            budget = PruneLimits().budget(len(names))
            doomed = rng.sample(names, rng.randint(budget + 1, len(names)))
            for name in doomed:
                repo.remove(f"units/{name}.yaml")
            alive = [n for n in names if n not in doomed]
            if alive and rng.random() < 0.5:
                repo.write(f"units/{rng.choice(alive)}.yaml", "name: [broken\n")
            for i in range(rng.randint(0, 3)):
                repo.write(f"units/t{trial}add{i}.yaml", unit_yaml(f"t{trial}add{i}"))
            repo.commit("refused")
            for step in range(rng.randint(1, 4)):
                for i in range(rng.randint(1, 3)):
                    name = f"t{trial}later{step}x{i}"
                    repo.write(f"units/{name}.yaml", unit_yaml(name))
                repo.commit(f"later {step}")
                for _ in range(rng.randint(1, 3)):
                    syncer.sync_once()
                    polls += 1
            held_units += len(doomed)
            if not set(doomed) <= set(store.unit_names()):
                failures.append(trial)
                continue
            lifted = Syncer(source, store, SyncSettings(allow_prune_all=True)).sync_once()
            if lifted.applied is None or lifted.applied.deleted != len(doomed):
                failures.append(trial)
    record_property("prune_trials", {"trials": TRIALS, "polls": polls, "held": held_units})
    print(f"\nprune guard: {TRIALS} trials, {polls} polls, {held_units} held units")
    assert failures == [], f"held units deleted (or release wrong) in trials {failures}"


def test_suspending_the_held_units_keeps_the_hold_for_when_they_are_resumed(
    repo: GitRepo, source: GitSource, synced_store: Store
) -> None:
    store = synced_store
    for name in NAMES[:3]:
        repo.remove(f"units/{name}.yaml")
    repo.commit("delete three")
    syncer = Syncer(source, store)
    poll(syncer, 1)
    for name in NAMES[:3]:
        suspend(store, name, who="oncall", reason="keep", until=None, now=NOW)
    for _ in range(2):
        assert syncer.sync_once().ok
    assert read_actual(store).prune_hold is not None
    for name in NAMES[:3]:
        assert resume(store, name) is not None
    poll(syncer, 2)
    assert set(NAMES) == set(store.unit_names())


# -- the rule itself, on random worlds -------------------------------------------------


@st.composite
def guarded_worlds(draw: st.DrawFn) -> tuple[DesiredState, ActualState, PruneLimits]:
    """1-40 managed units; the commit drops, breaks, keeps or suspends each, and adds
    some; maybe a hold from an earlier refusal; any budget, maybe lifted."""
    names = [f"m{i}" for i in range(draw(st.integers(1, 40)))]
    fate = {n: draw(st.sampled_from(["keep", "keep", "drop", "break"])) for n in names}
    suspended = [n for n in names if draw(st.integers(0, 9)) == 0]
    kept = [spec(n) for n in names if fate[n] == "keep"]
    added = [spec(f"a{i}") for i in range(draw(st.integers(0, 5)))]
    broken = [problem(f"units/{n}.yaml", n) for n in names if fate[n] == "break"]
    etcd = synced(desired(*[spec(n) for n in names]), suspended=map(suspension, suspended))
    baseline = draw(st.none() | st.integers(0, 40))
    if baseline is not None:
        hold = PruneHold(NOW - 99, "f" * 40, "e" * 40, baseline, 1, "refused before")
        etcd = dataclasses.replace(etcd, prune_hold=hold)
    limits = PruneLimits(
        max_count=draw(st.none() | st.integers(0, 25)),
        max_percent=draw(st.none() | st.floats(0, 100)),
        allow=draw(st.integers(0, 4)) == 0,
    )
    return desired(*kept, *added, problems=broken), etcd, limits


@settings(max_examples=PROPERTY_EXAMPLES)
@given(guarded_worlds())
def test_no_plan_deletes_over_the_budget_of_the_held_baseline_without_allow_prune(
    world: tuple[DesiredState, ActualState, PruneLimits],
) -> None:
    state, etcd, limits = world
    plan = make_plan(state, etcd, now=NOW, prune=limits)
    managed = sorted(etcd.units)  # synced(): every unit in etcd is managed
    held = etcd.prune_hold
    base = len(managed) if held is None else min(len(managed), held.baseline)
    deleted = plan.count(Action.DELETE)
    if deleted and not limits.allow:
        assert deleted <= limits.budget(base)
        kept = {e.name for e in plan.entries if e.action not in (Action.DELETE, Action.INVALID)}
        assert kept & set(managed), "a commit keeping no valid managed unit deleted some"
    if plan.prune_refused:
        new = plan.prune_hold
        assert new is not None and new.held == plan.count(Action.PRUNE_REFUSED)
        assert new.baseline == base  # the baseline never grows
        if held is not None:
            assert (new.since, new.first_commit) == (NOW - 99, "f" * 40)
    elif plan.prune_hold is not None:  # kept only while suspended units alone are deleted
        assert plan.prune_hold == held and plan.count(Action.SUSPENDED)
