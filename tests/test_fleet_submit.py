"""Submitting units through the registry driver without reads, and many at once.

Against the session's real etcd: a create is fleet's CreateUnit (three conditional
writes, no read), an existing unit is refused or updated as fleet and the protocol say,
a batch really keeps several units in flight, every write is counted by the throttle,
and a write guard that refuses once stops the whole batch for good.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest

from kaylee_sync.errors import FleetConflict, FleetFenced
from kaylee_sync.fleet.etcd2 import Etcd2Client, Node
from kaylee_sync.fleet.registry import RegistryDriver, job_object_json
from kaylee_sync.fleet.throttle import Throttle
from kaylee_sync.unitfile import UnitOption, parse, unit_hash

SLEEPER = parse("[Unit]\nDescription=sleeper\n\n[Service]\nExecStart=/bin/sleep 1000\n")


def unit(i: int) -> tuple[str, tuple[UnitOption, ...]]:
    options = parse(f"[Unit]\nDescription=u{i}\n\n[Service]\nExecStart=/bin/sleep {i}\n")
    return f"k2:u{i:03d}:abcdef:1234ab:1.service", options


class Recording(Etcd2Client):
    """Counts reads and writes (the writes by key), as sent to etcd."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(endpoint)
        self.reads: list[str] = []
        self.writes: list[str] = []
        self.lock = threading.Lock()

    def get(self, key: str, recursive: bool = False, sorted: bool = False) -> Node | None:
        with self.lock:
            self.reads.append(key)
        return super().get(key, recursive=recursive, sorted=sorted)

    def set(self, key: str, value: str, *args: object, **kwargs: object) -> Node:
        with self.lock:
            self.writes.append(key)
        return super().set(key, value, *args, **kwargs)  # type: ignore[arg-type]


class CountingThrottle(Throttle):
    """Counts the write tokens taken (one per write attempt), from every worker."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = 0
        self.count_lock = threading.Lock()

    def acquire(self) -> None:
        with self.count_lock:
            self.tokens += 1
        super().acquire()


@pytest.fixture
def client(etcd_endpoint: str) -> Iterator[Recording]:
    with Recording(etcd_endpoint) as c:
        yield c


@pytest.fixture
def driver(client: Recording, prefix: str) -> RegistryDriver:
    return RegistryDriver(client, prefix)


def keys_under(client: Etcd2Client, key: str) -> dict[str, Node]:
    root = client.get(key, recursive=True)
    return {n.key: n for n in root.walk() if not n.dir} if root else {}


def test_a_new_unit_costs_three_writes_and_no_read(
    driver: RegistryDriver, client: Recording, prefix: str
) -> None:
    driver.create_unit("s.service", SLEEPER, "launched")
    h = unit_hash(SLEEPER)
    assert client.reads == []
    assert client.writes == [
        f"{prefix}unit/{h}",
        f"{prefix}job/s.service/object",
        f"{prefix}job/s.service/target-state",
    ]
    assert client.get(f"{prefix}job/s.service/object").value == job_object_json(  # type: ignore[union-attr]
        "s.service", h
    )


def test_a_fresh_create_of_an_existing_unit_is_refused_and_changes_nothing(
    driver: RegistryDriver, client: Recording, prefix: str
) -> None:
    driver.create_unit("s.service", SLEEPER, "loaded")
    before = keys_under(client, prefix + "job")
    index = client.index()
    other = parse("[Service]\nExecStart=/bin/true\n")
    with pytest.raises(FleetConflict, match=r"fleet unit s\.service already exists"):
        driver.create_unit("s.service", other, "launched", fresh=True)
    assert keys_under(client, prefix + "job") == before
    # the new body was written (content-addressed, unreferenced: debris the repair
    # pass removes), and nothing else
    assert client.get(f"{prefix}unit/{unit_hash(other)}") is not None
    assert client.index() == index + 1


def test_an_existing_unit_is_updated_by_what_differs_only(
    driver: RegistryDriver, client: Recording, prefix: str
) -> None:
    driver.create_unit("s.service", SLEEPER, "launched")
    state = client.get(f"{prefix}job/s.service/target-state")
    index = client.index()
    driver.create_unit("s.service", SLEEPER, "launched")  # the same: the creates fail, no change
    assert client.index() == index
    other = parse("[Service]\nExecStart=/bin/true\n")
    driver.create_unit("s.service", other, "launched")
    assert client.get(f"{prefix}job/s.service/object").value == job_object_json(  # type: ignore[union-attr]
        "s.service", unit_hash(other)
    )
    assert client.get(f"{prefix}job/s.service/target-state") == state


def test_a_leftover_target_state_is_compared_not_overwritten_blindly(
    driver: RegistryDriver, client: Recording, prefix: str
) -> None:
    client.set(f"{prefix}job/s.service/target-state", "loaded")  # a job without object
    with pytest.raises(FleetConflict, match=r"s\.service"):
        driver.create_unit("s.service", SLEEPER, "launched", fresh=True)
    driver.create_unit("s.service", SLEEPER, "launched")
    assert client.get(f"{prefix}job/s.service/target-state").value == "launched"  # type: ignore[union-attr]


def test_a_batch_keeps_several_units_in_flight(etcd_endpoint: str, prefix: str) -> None:
    # Each unit's body write waits until four are waiting at once: one at a time, the
    # barrier would break (its timeout is a failure, not a pause) and the batch fail.
    barrier = threading.Barrier(4, timeout=30)

    class Meeting(Etcd2Client):
        def create(self, key: str, value: str, ttl: int | None = None) -> Node:
            if "/unit/" in key:
                barrier.wait()
            return super().create(key, value, ttl)

    units = [unit(i) for i in range(4)]
    with Meeting(etcd_endpoint) as meeting:
        driver = RegistryDriver(meeting, prefix)
        assert driver.create_units(units, "launched", workers=4) == {}
    assert not barrier.broken


def test_a_batch_writes_fleets_keys_in_fleets_order_and_counts_every_write(
    client: Recording, prefix: str
) -> None:
    throttle = CountingThrottle()
    driver = RegistryDriver(client, prefix, throttle)
    units = [unit(i) for i in range(60)]
    existing, options = units[7]
    driver.create_unit(existing, options, "launched")
    throttle.tokens = 0
    failed = driver.create_units(units, "launched", fresh=True, workers=8)
    assert list(failed) == [existing]  # one unit's trouble costs that unit only
    assert isinstance(failed[existing], FleetConflict) and existing in str(failed[existing])
    # 59 new units × 3 writes, plus the refused body and object creates of the 60th
    assert throttle.tokens == 59 * 3 + 2
    for name, opts in units:
        h = unit_hash(opts)
        body = client.get(f"{prefix}unit/{h}")
        obj = client.get(f"{prefix}job/{name}/object")
        state = client.get(f"{prefix}job/{name}/target-state")
        assert body and obj and state and state.value == "launched"
        assert json.loads(obj.value or "")["Name"] == name
        assert body.modified_index < obj.modified_index < state.modified_index


def test_a_guard_refusing_mid_batch_stops_every_worker_for_good(
    client: Recording, prefix: str
) -> None:
    # The guard refuses once, at its 20th check, then would allow again (a lease renewed
    # a moment later): the batch must not send one more write.
    checks: list[str] = []
    lock = threading.Lock()

    def flapping(what: str) -> None:
        with lock:
            checks.append(what)
            if len(checks) == 20:
                raise FleetFenced("lease expired")

    driver = RegistryDriver(client, prefix)
    driver.set_write_guard(flapping)
    units = [unit(i) for i in range(40)]
    index = client.index()
    with pytest.raises(FleetFenced, match="the write guard refused: lease expired"):
        driver.create_units(units, "launched", workers=4)
    assert len(checks) == 20  # after the refusal the guard was never even asked
    assert not [t for t in threading.enumerate() if t.name.startswith("fleet-submit")]
    # What a refused batch leaves is what a crash leaves: per unit, a prefix of fleet's
    # order (body, object, target state); never an object without its body.
    jobs = keys_under(client, prefix + "job")
    bodies = keys_under(client, prefix + "unit")
    sent = client.index() - index  # each write that reached etcd made one key
    assert 0 < len(jobs) + len(bodies) == sent < 20
    for name, opts in units:
        has_body = f"{prefix}unit/{unit_hash(opts)}" in bodies
        has_object = f"{prefix}job/{name}/object" in jobs
        has_state = f"{prefix}job/{name}/target-state" in jobs
        assert has_body or not has_object
        assert has_object or not has_state
    # the next batch (a new lease) is fenced by the guard again, not by the old refusal
    assert driver.create_units(units, "launched", workers=4) == {}
    assert len(keys_under(client, prefix + "job")) == 80


def test_a_refused_first_write_sends_nothing_at_all(client: Recording, prefix: str) -> None:
    driver = RegistryDriver(client, prefix)

    def deposed(what: str) -> None:
        raise FleetFenced(f"not sending {what}")

    driver.set_write_guard(deposed)
    index = client.index()
    with pytest.raises(FleetFenced):
        driver.create_units([unit(i) for i in range(10)], "launched", workers=4)
    assert client.index() == index
    with pytest.raises(FleetFenced):
        driver.create_unit("s.service", SLEEPER)
    assert client.index() == index


def test_a_batch_refuses_a_name_given_twice(driver: RegistryDriver) -> None:
    with pytest.raises(ValueError, match="twice"):
        driver.create_units([unit(1), unit(1)])
