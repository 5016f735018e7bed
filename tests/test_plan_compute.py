"""make_plan: the sync rules design.md decided, one behaviour per test (pure, no server)."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given, settings

from kaylee_sync.plan.compute import make_plan
from kaylee_sync.plan.model import Action, ActualState, DesiredState, Plan, PlanEntry
from kaylee_sync.plan.prune import PruneLimits
from kaylee_sync.spec import to_json
from tests.plan_builders import (
    COMMIT,
    NOW,
    actual,
    blob_of,
    desired,
    problem,
    spec,
    suspension,
    synced,
    unit,
    worlds,
)

WEB = spec("web", replicas=3)
API = spec("api", "docker://api:1", replicas=2)
DB = spec("db", "docker://db:1")


def entry(plan: Plan, name: str) -> PlanEntry:
    (found,) = [e for e in plan.entries if e.name == name]
    return found


def names(plan: Plan, action: Action) -> list[str]:
    return [e.name for e in plan.entries if e.action == action]


def test_a_synced_commit_plans_nothing_but_counts_every_unit() -> None:
    state = desired(WEB, API, DB)
    plan = make_plan(state, synced(state), now=NOW)
    assert not plan.has_changes
    assert names(plan, Action.UNCHANGED) == ["api", "db", "web"]
    assert all(e.diff == "" and e.effect is None for e in plan.entries)


def test_new_file_is_created_with_its_value_and_no_mod_revision() -> None:
    plan = make_plan(desired(WEB), actual({}, {}), now=NOW)
    (e,) = plan.entries
    assert (e.action, e.reason, e.path) == (Action.CREATE, "new file", "units/web.yaml")
    assert (e.old_value, e.new_value, e.mod_revision) == (None, to_json(WEB), 0)
    assert e.effect is not None and e.effect.summary == "starts 3 fleet units"


def test_changed_file_is_an_update_guarded_by_the_mod_revision_read() -> None:
    before = desired(WEB)
    after = desired(dataclasses.replace(WEB, apps=API.apps))
    state = synced(before)
    plan = make_plan(after, state, now=NOW)
    e = entry(plan, "web")
    assert (e.action, e.reason) == (Action.UPDATE, "file changed")
    assert e.old_value == to_json(WEB) and e.new_value == after.units["web"].value
    assert e.mod_revision == state.units["web"].mod_revision != 0


def test_a_managed_unit_changed_by_hand_is_put_back_as_drift() -> None:
    state = desired(WEB)
    etcd = synced(state)
    etcd.units["web"] = dataclasses.replace(etcd.units["web"], value=to_json(API))
    e = entry(make_plan(state, etcd, now=NOW), "web")
    assert e.action == Action.UPDATE
    assert e.reason == "drift: units/web was changed in etcd outside Git; putting it back"


def test_a_managed_unit_deleted_by_hand_is_created_again_as_drift() -> None:
    state = desired(WEB)
    etcd = actual({}, {"web": ("units/web.yaml", state.units["web"].blob)})
    e = entry(make_plan(state, etcd, now=NOW), "web")
    assert e.action == Action.CREATE and e.reason.startswith("drift: units/web is missing")


def test_a_file_for_a_unit_created_outside_git_takes_it_over() -> None:
    e = entry(make_plan(desired(WEB), actual({"web": API}, {}), now=NOW), "web")
    assert (e.action, e.reason) == (Action.UPDATE, "takes over a unit created outside Git")


def test_units_created_outside_git_are_never_shown_or_deleted() -> None:
    state = desired(WEB)
    etcd = actual({"web": WEB, "manual": DB}, {"web": ("units/web.yaml", blob_of(to_json(WEB)))})
    plan = make_plan(state, etcd, now=NOW)
    assert [e.name for e in plan.entries] == ["web"]


def test_a_removed_file_deletes_its_managed_unit() -> None:
    state = synced(desired(WEB, API, DB))
    plan = make_plan(desired(WEB, API), state, now=NOW)
    e = entry(plan, "db")
    assert (e.action, e.path, e.new_value) == (Action.DELETE, None, None)
    assert e.reason == "units/db.yaml was removed from Git"
    assert e.old_value == to_json(DB) and e.mod_revision == state.units["db"].mod_revision
    assert e.effect is not None and e.effect.summary == "destroys its fleet unit"
    assert e.diff.startswith("--- etcd units/db\n+++ units/db.yaml @ 1a2b3c4 (removed)\n")


def test_an_inventory_unit_already_gone_from_etcd_is_not_deleted_again() -> None:
    etcd = synced(desired(WEB, API))
    del etcd.units["api"]
    plan = make_plan(desired(WEB), etcd, now=NOW)
    assert [e.name for e in plan.entries] == ["web"]


def test_a_file_that_now_declares_another_unit_deletes_the_old_one_and_says_so() -> None:
    etcd = synced(desired(WEB, API))
    renamed = unit(spec("web2", replicas=3), path="units/web.yaml")
    plan = make_plan(desired(renamed, API), etcd, now=NOW)
    old = entry(plan, "web")
    assert (old.action, old.path) == (Action.DELETE, "units/web.yaml")
    assert old.reason == "units/web.yaml now declares units/web2"
    assert entry(plan, "web2").action == Action.CREATE


def test_an_invalid_file_keeps_its_unit_mapped_through_the_inventory() -> None:
    etcd = synced(desired(WEB, API))
    bad = problem("units/web.yaml")  # did not even parse: no name
    plan = make_plan(desired(API, problems=[bad]), etcd, now=NOW)
    e = entry(plan, "web")
    assert e.action == Action.INVALID
    assert e.reason == "units/web.yaml is invalid; units/web is left as it is"
    assert (e.old_value, e.new_value, e.issues) == (to_json(WEB), None, bad.issues)
    assert plan.problems == (bad,)
    assert not plan.has_changes


def test_an_invalid_file_naming_its_unit_blocks_only_that_unit() -> None:
    etcd = synced(desired(WEB, API))
    new_api = dataclasses.replace(API, replicas=4)
    plan = make_plan(desired(new_api, problems=[problem("units/web.yaml", "web")]), etcd, now=NOW)
    assert names(plan, Action.INVALID) == ["web"]
    assert names(plan, Action.UPDATE) == ["api"]


def test_a_new_invalid_file_is_shown_as_not_created() -> None:
    plan = make_plan(desired(problems=[problem("units/x.yaml", "x")]), actual({}, {}), now=NOW)
    e = entry(plan, "x")
    assert (e.action, e.old_value, e.mod_revision) == (Action.INVALID, None, 0)
    assert e.reason == "units/x.yaml is invalid; units/x is not created"


def test_two_files_claiming_one_name_are_one_invalid_entry_naming_both() -> None:
    problems = [problem("units/a.yaml", "web"), problem("units/b.yaml", "web")]
    plan = make_plan(desired(problems=problems), synced(desired(WEB)), now=NOW)
    e = entry(plan, "web")
    assert e.reason == "units/a.yaml and units/b.yaml are invalid; units/web is left as it is"
    assert len(e.issues) == 2


def test_an_invalid_file_whose_unit_moved_to_a_valid_file_does_not_block_it() -> None:
    etcd = synced(desired(WEB))
    moved = unit(dataclasses.replace(WEB, replicas=4), path="units/new/web.yaml")
    plan = make_plan(desired(moved, problems=[problem("units/web.yaml")]), etcd, now=NOW)
    assert entry(plan, "web").action == Action.UPDATE


def test_an_unparsable_file_with_no_inventory_entry_is_only_a_problem() -> None:
    plan = make_plan(desired(WEB, problems=[problem("units/zzz.yaml")]), actual({}, {}), now=NOW)
    assert [e.name for e in plan.entries] == ["web"]
    assert len(plan.problems) == 1


def test_deleting_every_managed_unit_is_refused_without_allow_prune_all() -> None:
    etcd = synced(desired(WEB, API))
    plan = make_plan(desired(), etcd, now=NOW)
    assert names(plan, Action.PRUNE_REFUSED) == ["api", "web"]
    assert "--allow-prune" in plan.prune_refused and "\n" not in plan.prune_refused
    assert not plan.has_changes
    allowed = make_plan(desired(), etcd, now=NOW, prune=PruneLimits(allow=True))
    assert names(allowed, Action.DELETE) == ["api", "web"] and allowed.prune_refused == ""


def test_more_deletions_than_max_prune_are_refused_but_other_changes_go_ahead() -> None:
    etcd = synced(desired(WEB, API, DB, spec("a"), spec("b")))
    plan = make_plan(
        desired(dataclasses.replace(WEB, replicas=9)),
        etcd,
        now=NOW,
        prune=PruneLimits(max_count=3, max_percent=None),
    )
    assert names(plan, Action.PRUNE_REFUSED) == ["a", "api", "b", "db"]
    assert names(plan, Action.UPDATE) == ["web"]
    assert "--max-prune 3" in plan.prune_refused
    assert (
        make_plan(
            desired(WEB), etcd, now=NOW, prune=PruneLimits(max_count=4, max_percent=None)
        ).prune_refused
        == ""
    )


def test_an_invalid_file_does_not_count_as_deleting_every_unit() -> None:
    etcd = synced(desired(WEB))
    plan = make_plan(desired(problems=[problem("units/web.yaml")]), etcd, now=NOW)
    assert plan.prune_refused == "" and names(plan, Action.INVALID) == ["web"]


def test_a_suspended_unit_is_left_alone_but_shows_what_git_wants() -> None:
    etcd = synced(desired(WEB), suspended=[suspension("web")])
    new_web = dataclasses.replace(WEB, replicas=5)
    e = entry(make_plan(desired(new_web), etcd, now=NOW), "web")
    assert e.action == Action.SUSPENDED and e.effect is None
    assert e.reason == (
        "Git would update it, but it is suspended by alice until resumed: hotfix for INC-42"
    )
    assert '+  "replicas": 5,' in e.diff and e.new_value == to_json(new_web)


def test_a_suspended_unit_git_would_delete_is_kept_and_not_counted_as_prunable() -> None:
    etcd = synced(desired(WEB, API), suspended=[suspension("api", until=NOW + 60)])
    plan = make_plan(desired(WEB), etcd, now=NOW)
    e = entry(plan, "api")
    assert e.action == Action.SUSPENDED
    assert e.reason.startswith("Git would delete it, but it is suspended by alice until 2023-")
    assert plan.prune_refused == ""


def test_suspending_one_unit_does_not_disarm_the_delete_everything_guard() -> None:
    etcd = synced(desired(WEB, API), suspended=[suspension("api")])
    plan = make_plan(desired(), etcd, now=NOW)
    assert names(plan, Action.PRUNE_REFUSED) == ["web"] and plan.prune_refused


def test_an_expired_suspension_no_longer_counts_and_is_reported() -> None:
    etcd = synced(desired(WEB), suspended=[suspension("web", until=NOW - 1)])
    plan = make_plan(desired(dataclasses.replace(WEB, replicas=5)), etcd, now=NOW)
    assert entry(plan, "web").action == Action.UPDATE
    assert plan.expired_suspensions == ("web",)


def test_plan_copies_what_the_apply_guards_need() -> None:
    state = desired(WEB)
    etcd = synced(state)
    plan = make_plan(state, etcd, now=NOW)
    assert (plan.state_index, plan.inventory_revision) == ("idx-1", 7)
    assert plan.desired is state and plan.against == "etcd"


def test_against_another_commit_labels_the_diff_with_its_description() -> None:
    etcd = synced(desired(WEB), source="origin/main (9f8e7d6)")
    plan = make_plan(desired(dataclasses.replace(WEB, replicas=4)), etcd, now=NOW)
    assert plan.against == "origin/main (9f8e7d6)"
    assert entry(plan, "web").diff.startswith(
        f"--- origin/main (9f8e7d6) units/web\n+++ units/web.yaml @ {COMMIT[:7]}\n"
    )


def test_entries_are_sorted_by_name_whatever_their_action() -> None:
    etcd = synced(desired(spec("m"), spec("z")))
    plan = make_plan(
        desired(spec("a"), spec("m", replicas=2), problems=[problem("units/b.yaml", "b")]),
        etcd,
        now=NOW,
        prune=PruneLimits(allow=True),
    )
    assert [(e.name, e.action) for e in plan.entries] == [
        ("a", Action.CREATE),
        ("b", Action.INVALID),
        ("m", Action.UPDATE),
        ("z", Action.DELETE),
    ]


def test_diff_shows_the_changed_field_pretty_printed_in_stored_key_order() -> None:
    etcd = synced(desired(WEB))
    e = entry(make_plan(desired(dataclasses.replace(WEB, replicas=4)), etcd, now=NOW), "web")
    assert e.diff.splitlines()[2:6] == [
        "@@ -1,6 +1,6 @@",
        " {",
        '   "name": "web",',
        '-  "replicas": 3,',
    ]


def test_a_value_equal_once_pretty_printed_still_shows_a_diff() -> None:
    state = desired(WEB)
    etcd = synced(state)
    spaced = to_json(WEB).replace(",", ", ")
    etcd.units["web"] = dataclasses.replace(etcd.units["web"], value=spaced)
    e = entry(make_plan(state, etcd, now=NOW), "web")
    assert e.action == Action.UPDATE and e.diff
    assert e.effect is not None and e.effect.summary == "no fleet change"


@settings(max_examples=60, deadline=None)
@given(worlds())
def test_the_rules_hold_for_any_commit_and_etcd(
    world: tuple[DesiredState, ActualState, dict[str, Any]],
) -> None:
    state, etcd, options = world
    plan = make_plan(state, etcd, **options)
    got = [e.name for e in plan.entries]
    assert got == sorted(set(got))
    inventory = etcd.inventory.units if etcd.inventory else {}
    named = {p.name for p in state.problems if p.name}
    # Units Git never knew are never touched, nor even shown.
    assert set(got) <= state.units.keys() | named | inventory.keys()
    active = {n for n, s in etcd.suspended.items() if not s.expired(NOW)}
    for e in plan.entries:
        current = etcd.units.get(e.name)
        assert e.mod_revision == (current.mod_revision if current else 0)
        assert e.old_value == (current.value if current else None)
        if e.action in (Action.CREATE, Action.UPDATE, Action.DELETE):
            assert e.name not in active and e.effect is not None and e.diff
        if e.action == Action.CREATE:
            assert current is None
        if e.action in (Action.UPDATE, Action.UNCHANGED):
            assert (e.new_value != e.old_value) == (e.action == Action.UPDATE)
        if e.action in (Action.DELETE, Action.PRUNE_REFUSED):
            assert e.name in inventory and e.name not in state.units.keys() | named
        if e.action == Action.INVALID:
            assert e.new_value is None and e.issues
    # A unit an invalid file names is never deleted, and refusal is all or nothing.
    assert not named & {e.name for e in plan.changes if e.action == Action.DELETE}
    assert bool(plan.prune_refused) == (plan.count(Action.PRUNE_REFUSED) > 0)
    assert not (plan.prune_refused and plan.count(Action.DELETE))
    assert plan.expired_suspensions == tuple(
        sorted(n for n, s in etcd.suspended.items() if s.expired(NOW))
    )


def test_diffs_are_written_when_read_not_when_planned(monkeypatch: Any) -> None:
    # A sync applies plans it never shows: pretty-printing every value of a plan of
    # 10,000 creates was a third of a cold plan. The text appears when read, and is
    # the diff of the entry's own values.
    from kaylee_sync.plan import diffs

    written: list[str] = []
    real = diffs.unified_diff

    def counted(old: str | None, new: str | None, old_label: str, new_label: str) -> str:
        written.append(new_label)
        return real(old, new, old_label, new_label)

    monkeypatch.setattr(diffs, "unified_diff", counted)
    state = desired(WEB, API, DB)
    plan = make_plan(state, actual({}, {}), now=NOW)
    assert written == []
    e = entry(plan, "api")
    assert e.diff == real(None, e.new_value, "etcd units/api", f"units/api.yaml @ {COMMIT[:7]}")
    assert e.diff.startswith("--- etcd units/api\n") and len(written) == 1
    assert e.diff and len(written) == 1  # written once
