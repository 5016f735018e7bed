"""Scheduler safety (issue 10): fenced and conditional fleet writes, repair, prompt stop,
malformed records, and one paused-leader trial end to end.

Against the session etcd and fleet's real registry keys; the many-trial runs are
``python -m tests.safety_trials`` (numbers in docs/reliability.md).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaylee_sync.errors import FleetConflict, FleetFenced, FleetUnavailable
from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.fleet.model import LAUNCHED, LOADED
from kaylee_sync.fleet.registry import RegistryDriver
from kaylee_sync.fleet.throttle import Throttle, ThrottleSettings
from kaylee_sync.render import render_units
from kaylee_sync.scheduler.runner import Scheduler, SchedulerSettings
from kaylee_sync.spec import App, UnitSpec, to_json
from kaylee_sync.store import Store
from kaylee_sync.unitfile import parse
from tests import safety_trials

SLEEPER = parse("[Service]\nExecStart=/bin/sleep 1000\n")
WEB = UnitSpec(name="web", replicas=2, apps=(App("docker://web:1"),))
NAME = "k2:web:aaaaaa:bbbbbb:1.service"


@pytest.fixture
def driver(client: Etcd2Client, prefix: str) -> RegistryDriver:
    return RegistryDriver(client, prefix)


def node(client: Etcd2Client, key: str) -> str | None:
    found = client.get(key)
    return found.value if found else None


# -- writes conditional on what was read ------------------------------------------------


def test_a_stale_target_state_write_cannot_resurrect_a_destroyed_job(
    driver: RegistryDriver, client: Etcd2Client, prefix: str
) -> None:
    driver.create_unit(NAME, SLEEPER, LAUNCHED, fresh=True)
    (seen,) = driver.units()
    RegistryDriver(client, prefix).destroy_unit(NAME)  # the new leader destroys it
    with pytest.raises(FleetConflict):
        driver.set_target_state(NAME, LOADED, seen=seen)
    assert client.get(f"{prefix}job/{NAME}") is None


def test_a_stale_write_cannot_overwrite_a_newer_target_state(
    driver: RegistryDriver, client: Etcd2Client, prefix: str
) -> None:
    driver.create_unit(NAME, SLEEPER, LAUNCHED, fresh=True)
    (seen,) = driver.units()
    other = RegistryDriver(client, prefix)
    other.set_target_state(NAME, LOADED)
    other.set_target_state(NAME, LAUNCHED)  # the same value again, at a newer index
    with pytest.raises(FleetConflict):
        driver.set_target_state(NAME, LOADED, seen=seen)
    with pytest.raises(FleetConflict):
        driver.destroy_unit(NAME, seen=seen)
    assert node(client, f"{prefix}job/{NAME}/target-state") == LAUNCHED
    assert node(client, f"{prefix}job/{NAME}/object") is not None


def test_a_fresh_create_never_replaces_a_unit_that_appeared(
    driver: RegistryDriver, client: Etcd2Client, prefix: str
) -> None:
    driver.create_unit(NAME, SLEEPER, LOADED, fresh=True)
    before = node(client, f"{prefix}job/{NAME}/object")
    with pytest.raises(FleetConflict):
        driver.create_unit(NAME, parse("[Service]\nExecStart=/bin/true\n"), LAUNCHED, fresh=True)
    assert node(client, f"{prefix}job/{NAME}/object") == before
    assert node(client, f"{prefix}job/{NAME}/target-state") == LOADED


def test_a_destroy_based_on_a_current_reading_removes_the_whole_job(
    driver: RegistryDriver, client: Etcd2Client, prefix: str
) -> None:
    driver.create_unit(NAME, SLEEPER, LAUNCHED, fresh=True)
    client.set(f"{prefix}job/{NAME}/target", "m" * 32)  # what fleet's engine adds
    (seen,) = driver.units()
    driver.destroy_unit(NAME, seen=seen)
    assert client.get(f"{prefix}job/{NAME}") is None


# -- the write guard --------------------------------------------------------------------


def test_the_guard_is_asked_before_every_write_attempt_and_stops_the_retries() -> None:
    deposed = threading.Event()
    sent: list[int] = []

    def guard(what: str) -> None:
        if deposed.is_set():
            raise FleetFenced(f"not sending {what}")

    def flaky() -> None:
        sent.append(1)
        deposed.set()  # the lease runs out while this attempt fails
        raise FleetUnavailable("etcd is slow")

    throttle = Throttle(ThrottleSettings(attempts=5), sleep=lambda s: None, guard=guard)
    with pytest.raises(FleetFenced):
        throttle.call("set x", flaky, write=True)
    assert sent == [1]  # no retry was sent once the lease was gone


def test_a_deposed_scheduler_sends_no_fleet_write(
    store: Store, client: Etcd2Client, prefix: str
) -> None:
    store.put_unit(WEB.name, to_json(WEB))
    leading = threading.Event()
    scheduler = Scheduler(store, RegistryDriver(client, prefix), is_leader=leading.is_set)
    with pytest.raises(FleetFenced):
        scheduler.fleet.create_unit(NAME, SLEEPER, fresh=True)
    assert scheduler.run_pass() == []  # a pass that begins deposed abandons quietly
    assert client.get(f"{prefix}job") is None


def test_the_guard_is_asked_again_on_the_socket_right_before_the_request(
    etcd_endpoint: str, prefix: str
) -> None:
    asked: list[str] = []

    def refuse(what: str) -> None:
        asked.append(what)
        raise FleetFenced(f"not sending {what}")

    with Etcd2Client(etcd_endpoint) as client:
        client.before_write = refuse
        url = f"{etcd_endpoint}/v2/keys{prefix}probe"
        with pytest.raises(FleetFenced):
            client._http.put(url, data={"value": "x"})  # below every check in the client
        assert asked and asked[0].startswith("PUT /v2/keys")
        assert client.get(f"{prefix}probe") is None  # reads pass, and nothing was written


# -- prompt stop, fenced reports --------------------------------------------------------


def test_a_pass_stops_between_actions_once_asked_to(
    store: Store, client: Etcd2Client, prefix: str
) -> None:
    for i in range(20):
        spec = UnitSpec(name=f"u{i:02d}", apps=(App(f"docker://u:{i}"),))
        store.put_unit(spec.name, to_json(spec))
    stop = threading.Event()
    fleet = RegistryDriver(client, prefix)
    scheduler = Scheduler(store, fleet, should_stop=stop.is_set)
    created = fleet.create_unit

    def create_then_stop(*args: object, **kwargs: object) -> None:
        created(*args, **kwargs)  # type: ignore[arg-type]
        stop.set()  # SIGTERM arrives during the first create

    fleet.create_unit = create_then_stop  # type: ignore[method-assign]
    assert scheduler.run_pass() == []
    assert len(fleet.units()) == 1


def test_rollout_reports_are_fenced_on_master(
    store: Store, client: Etcd2Client, prefix: str
) -> None:
    store.put_unit(WEB.name, to_json(WEB))
    store.put("master", "someone-else")
    fleet = RegistryDriver(client, prefix)
    scheduler = Scheduler(store, fleet, identity="me:1:abc")
    scheduler.run_pass()
    assert store.get("scheduler/rollouts/web") is None
    store.put("master", "me:1:abc")
    scheduler.run_pass()
    assert store.get("scheduler/rollouts/web") is not None


# -- malformed records ------------------------------------------------------------------


def test_one_malformed_record_costs_only_that_record(
    store: Store, client: Etcd2Client, prefix: str
) -> None:
    db = UnitSpec(name="db", apps=(App("docker://db:1"),))
    for spec in (WEB, db):
        store.put_unit(spec.name, to_json(spec))
    store.put("scheduler/rollouts/web", "null")
    store.put("scheduler/rollouts/db", json.dumps({"created": {"x": float("nan")}}))
    for junk in ("null", "[1, 2]", '{"name": 5}', '"text"', "{"):
        store.put_unit(f"junk{len(junk)}", junk)  # each costs its own unit only
    store.put("restart/web", "many")
    store.put("restart/db", "-3")
    name = render_units(WEB)[0].name
    state = {"subState": "running", "machineState": "not an object", "unitHash": 7}
    client.set(f"{prefix}states/{name}/{'a' * 32}", json.dumps(state))
    client.set(f"{prefix}machines/{'a' * 32}/object", json.dumps({"ID": "a", "Metadata": [1]}))
    fleet = RegistryDriver(client, prefix)
    decisions = Scheduler(store, fleet, SchedulerSettings()).run_pass()
    assert {d.unit for d in decisions} == {"web", "db"}  # the junk units are left alone
    assert len(fleet.units()) == 3  # two web replicas and db, despite it all
    assert fleet.machines()[0].metadata == {}


# -- repair -----------------------------------------------------------------------------


def test_debris_under_our_prefix_is_cleaned_and_nothing_else(
    driver: RegistryDriver, client: Etcd2Client, prefix: str
) -> None:
    ours = render_units(WEB)
    driver.create_unit(ours[0].name, ours[0].options, fresh=True)  # a healthy unit of ours
    client.set(f"{prefix}job/{ours[1].name}/target-state", LOADED)  # resurrected by a stale write
    client.set(f"{prefix}job/other:web:1.service/target-state", LOADED)  # not ours
    client.set(f"{prefix}job/plain.service/target", "m" * 32)  # not ours
    orphan = UnitSpec(name="gone", apps=(App("docker://gone:1"),))
    body = render_units(orphan)[0]
    driver.create_unit(body.name, body.options, fresh=True)
    client.delete(f"{prefix}job/{body.name}", recursive=True)  # its body stays behind
    driver.create_unit("foreign.service", SLEEPER, fresh=True)
    client.delete(f"{prefix}job/foreign.service", recursive=True)  # a body not ours
    debris = driver.debris("k2")
    assert sorted(d.kind for d in debris) == ["body", "job"]
    for item in debris:
        driver.clean(item)
    assert driver.debris("k2") == []
    assert client.get(f"{prefix}job/{ours[1].name}") is None
    assert node(client, f"{prefix}job/other:web:1.service/target-state") == LOADED
    assert node(client, f"{prefix}job/plain.service/target") == "m" * 32
    assert [u.name for u in driver.units()] == [ours[0].name]
    assert client.get(f"{prefix}unit/{driver.units()[0].hash}") is not None
    assert len(client.get(f"{prefix}unit").nodes) == 2  # type: ignore[union-attr]


def test_debris_that_changed_since_it_was_found_is_left_alone(
    driver: RegistryDriver, client: Etcd2Client, prefix: str
) -> None:
    client.set(f"{prefix}job/{NAME}/target-state", LOADED)
    (item,) = driver.debris("k2")
    client.set(f"{prefix}job/{NAME}/target-state", LAUNCHED)
    with pytest.raises(FleetConflict):
        driver.clean(item)
    assert node(client, f"{prefix}job/{NAME}/target-state") == LAUNCHED


def test_the_scheduler_cleans_debris_seen_by_two_scans(
    store: Store, client: Etcd2Client, prefix: str
) -> None:
    client.set(f"{prefix}job/{NAME}/target-state", LOADED)
    scheduler = Scheduler(
        store, RegistryDriver(client, prefix), SchedulerSettings(resync=0.0, active_interval=0.0)
    )
    scheduler.run_pass()
    assert client.get(f"{prefix}job/{NAME}") is not None  # seen once: maybe a write in flight
    scheduler.run_pass()
    assert client.get(f"{prefix}job/{NAME}") is None


# -- end to end -------------------------------------------------------------------------


@pytest.fixture
def trial_logs(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


@pytest.mark.slow
def test_a_leader_paused_just_after_a_fleet_write_never_writes_again(
    etcd_endpoint: str, trial_logs: Path
) -> None:
    cluster = safety_trials.Cluster(etcd_endpoint, "etcd", trial_logs)
    try:
        out = safety_trials.pause_trial(cluster, "write", second_commit=True)
    finally:
        cluster.close()
    assert out.stale_fleet == 0 and out.stale_reports == 0, out.detail
    assert out.converged, out.detail
    assert not cluster.breaches and not cluster.duplicates
