"""The simulator's placement rules, as pure functions: where fleet would put each unit."""

from __future__ import annotations

import pytest

from kaylee_sync.fleetsim.requirements import (
    Requirements,
    go_path_match,
    split_multivalue,
    unit_printf,
)
from kaylee_sync.fleetsim.scheduling import Job, Machine, desired_units, plan
from kaylee_sync.fleetsim.systemd import Behaviour, SimUnit, behaviour_for
from kaylee_sync.unitfile import UnitOption, parse

A, B, C = "a" * 32, "b" * 32, "c" * 32


def req(name: str, **xfleet: str | list[str]) -> Requirements:
    opts = []
    for key, values in xfleet.items():
        for v in [values] if isinstance(values, str) else values:
            opts.append(UnitOption("X-Fleet", key, v))
    return Requirements.from_options(name, opts)


def job(name: str, state: str = "launched", target: str = "", **xfleet: str | list[str]) -> Job:
    return Job(name, state, req(name, **xfleet), target)


def schedule(jobs: list[Job], machines: list[Machine]) -> dict[str, str]:
    return {d.job: d.machine_id for d in plan(jobs, machines) if d.action == "schedule"}


# Go's path.Match test table (src/path/match_test.go): pattern, name, match.
GO_MATCH = [
    ("abc", "abc", True),
    ("*", "abc", True),
    ("*c", "abc", True),
    ("a*", "a", True),
    ("a*", "abc", True),
    ("a*", "ab/c", False),
    ("a*/b", "abc/b", True),
    ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True),
    ("a*b?c*x", "abxbbxdbxebxczzy", False),
    ("ab[c]", "abc", True),
    ("ab[b-d]", "abc", True),
    ("ab[e-g]", "abc", False),
    ("ab[^c]", "abc", False),
    ("ab[^b-d]", "abc", False),
    ("ab[^e-g]", "abc", True),
    ("a\\*b", "a*b", True),
    ("a\\*b", "ab", False),
    ("a?b", "a☺b", True),
    ("a[^a]b", "a☺b", True),
    ("a???b", "a☺b", False),
    ("[a-ζ]*", "α", True),
    ("*[a-ζ]", "A", False),
    ("a?b", "a/b", False),
    ("a*b", "a/b", False),
    ("[\\]a]", "]", True),
    ("[\\-]", "-", True),
    ("[x\\-]", "-", True),
    ("[x\\-]", "z", False),
    ("[\\-x]", "x", True),
    ("*x", "xxx", True),
    # malformed patterns match nothing
    ("[]a]", "]", False),
    ("[-]", "-", False),
    ("[x-]", "x", False),
    ("[-x]", "x", False),
    ("\\", "a", False),
    ("[a-b-c]", "a", False),
    ("[", "a", False),
    ("[^bc", "a", False),
    ("a[", "a", False),
]


@pytest.mark.parametrize(("pattern", "name", "expected"), GO_MATCH)
def test_conflict_globs_follow_go_path_match(pattern: str, name: str, expected: bool) -> None:
    assert go_path_match(pattern, name) is expected


def test_quoted_multivalue_splits_on_spaces_outside_quotes() -> None:
    assert split_multivalue('"disk=ssd" "disk=hdd"') == ["disk=ssd", "disk=hdd"]
    assert split_multivalue('"role=web server"') == ["role=web server"]
    assert split_multivalue("disk=ssd disk=hdd") == ["disk=ssd disk=hdd"]


def test_specifiers_expand_from_the_unit_name() -> None:
    assert unit_printf("%n|%N|%p|%i", "web@3.service") == "web@3.service|web@3|web|3"
    assert unit_printf("%p-*", "db.service") == "db-*"
    assert unit_printf("%n", "noext") == "%n"


def test_requirements_read_fleet_spellings_and_quirks() -> None:
    r = req(
        "web@1.service",
        MachineMetadata=['"disk=ssd" "disk=hdd"', "region=eu", "bogus", "a=b=c"],
        Conflicts="web@*.service  db.service",
        Global=["true", "no"],
        **{"X-ConditionMachineOf": "%p-sidekick@%i.service"},
    )
    assert r.metadata == {"disk": frozenset({"ssd", "hdd"}), "region": frozenset({"eu"})}
    assert r.conflicts == ("web@*.service", "db.service")
    assert r.peers == ("web-sidekick@1.service",)
    assert r.is_global is False  # the last Global wins
    assert req("x.service", Global="yes").is_global


def test_api_rejects_unresolvable_combinations() -> None:
    assert req("a.service", MachineID=A, Conflicts="b*").invalid_reason()
    assert req("a.service", Global="true", MachineOf="b.service").invalid_reason()
    assert req("a.service", MachineOf="b.service", Conflicts="b*").invalid_reason()
    assert req("a.service", MachineOf="b.service", Conflicts="c*").invalid_reason() is None


def test_metadata_values_of_one_key_are_ored_and_keys_anded() -> None:
    machines = [
        Machine(A, {"disk": "ssd", "region": "us"}),
        Machine(B, {"disk": "hdd", "region": "eu"}),
        Machine(C, {"disk": "ssd"}),
    ]
    jobs = [
        job("any-disk-eu.service", MachineMetadata=['"disk=ssd" "disk=hdd"', "region=eu"]),
        job("ssd-us.service", MachineMetadata=["disk=ssd", "region=us"]),
        job("nowhere.service", MachineMetadata="region=mars"),
    ]
    assert schedule(jobs, machines) == {"any-disk-eu.service": B, "ssd-us.service": A}


def test_machine_id_accepts_the_full_id_or_its_first_eight_digits() -> None:
    machines = [Machine(A), Machine(B)]
    jobs = [job("full.service", MachineID=B), job("short.service", MachineID=B[:8])]
    assert schedule(jobs, machines) == {"full.service": B, "short.service": B}
    assert schedule([job("seven.service", MachineID=B[:7])], machines) == {}


def test_conflicts_are_symmetric_and_use_globs() -> None:
    machines = [Machine(A), Machine(B)]
    # B is busier, so only a conflict keeps the new unit off A
    busy = [job("old1.service", target=B), job("old2.service", target=B)]
    assert schedule([*busy, job("new.service")], machines) == {"new.service": A}
    # the unit already on A declares the conflict ...
    placed = schedule(
        [*busy, job("a-web.service", target=A, Conflicts="b-*.service"), job("b-web.service")],
        machines,
    )
    assert placed == {"b-web.service": B}
    # ... or the newcomer does
    placed = schedule(
        [*busy, job("a-web.service", target=A), job("b-web.service", Conflicts="a-*")], machines
    )
    assert placed == {"b-web.service": B}
    # a third unit conflicting with both has nowhere to go
    three = [job(f"web@{i}.service", Conflicts="web@*.service") for i in range(3)]
    assert len(schedule(three, machines)) == 2


def test_least_loaded_machine_wins_and_ties_go_to_the_lowest_id() -> None:
    machines = [Machine(B), Machine(A), Machine(C)]
    jobs = [job(f"u{i}.service") for i in range(6)]
    placed = schedule(jobs, machines)
    assert placed["u0.service"] == A and placed["u1.service"] == B
    assert sorted(placed.values()) == [A, A, B, B, C, C]
    # units already scheduled count as load
    busy = [job("old1.service", target=A), job("old2.service", target=A)]
    assert schedule([*busy, job("new.service")], machines)["new.service"] == B


def test_global_units_get_no_target_but_count_as_load_where_they_match() -> None:
    machines = [Machine(A, {"role": "edge"}), Machine(B)]
    jobs = [job("g.service", Global="true", MachineMetadata="role=edge"), job("x.service")]
    assert schedule(jobs, machines) == {"x.service": B}
    assert set(desired_units(machines[0], jobs)) == {"g.service"}
    assert set(desired_units(machines[1], jobs)) == set()


def test_machine_of_follows_the_peer() -> None:
    machines = [Machine(A), Machine(B)]
    jobs = [job("db.service", target=B), job("sidekick.service", MachineOf="db.service")]
    assert schedule(jobs, machines) == {"sidekick.service": B}


def test_unschedules_inactive_jobs_gone_machines_and_misfits() -> None:
    machines = [Machine(A, {"role": "web"}), Machine(B)]
    jobs = [
        job("stopped.service", "inactive", target=A),
        job("orphan.service", target=C),
        job("misfit.service", target=B, MachineMetadata="role=web"),
        job("fine.service", "loaded", target=B),
    ]
    decisions = plan(jobs, machines)
    gone = {d.job for d in decisions if d.action == "unschedule"}
    assert gone == {"stopped.service", "orphan.service", "misfit.service"}
    again = {d.job: d.machine_id for d in decisions if d.action == "schedule"}
    assert again == {"orphan.service": A, "misfit.service": A}


def test_agent_takes_its_targets_and_skips_conflicting_globals() -> None:
    me = Machine(A, {"role": "web"})
    jobs = [
        job("mine.service", target=A),
        job("theirs.service", target=B),
        job("z-global.service", Global="true", Conflicts="mine.service"),
        job("y-global.service", Global="true", MachineMetadata="role=web"),
    ]
    assert set(desired_units(me, jobs)) == {"mine.service", "y-global.service"}


def test_behaviours_match_unit_names_or_images_and_drive_states() -> None:
    opts = parse("[Service]\nExecStartPre=/usr/bin/rkt fetch quay.io/acme/web:2\n")
    table = {"quay.io/acme/*": Behaviour.parse("never_start"), "db*": Behaviour(crash_after=1)}
    assert behaviour_for("web.service", opts, table).never_start
    assert behaviour_for("db.service", (), table).crash_after == 1
    assert behaviour_for("other.service", opts[:0], table) == Behaviour()

    unit = SimUnit("db.service", "h", "", Behaviour(crash_after=1.0), default_delay=0.5)
    unit.start(now=10.0)
    assert unit.state == ("loaded", "activating", "start-pre")
    unit.advance(10.6)
    assert unit.state == ("loaded", "active", "running")
    unit.advance(11.7)
    assert unit.state == ("loaded", "failed", "failed")

    never = SimUnit("w.service", "h", "", Behaviour(never_start=True), default_delay=0.5)
    never.start(now=0.0)
    seen = set()
    for t in range(1, 40):
        never.advance(t / 10)
        seen.add(never.state[2])
    assert seen == {"start-pre", "auto-restart"}
