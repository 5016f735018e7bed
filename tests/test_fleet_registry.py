"""The registry driver against a real etcd: fleet's exact keys and JSON, read and written."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from kaylee_sync.embedded_etcd import free_port
from kaylee_sync.errors import FleetNotFound, FleetUnavailable, UsageError
from kaylee_sync.fleet.etcd2 import Etcd2Client, Node
from kaylee_sync.fleet.model import FleetUnit, Machine, UnitState
from kaylee_sync.fleet.protocol import FleetClient
from kaylee_sync.fleet.registry import RegistryDriver, go_json_string, job_object_json
from kaylee_sync.fleet.throttle import Throttle, ThrottleSettings
from kaylee_sync.unitfile import UnitOption, parse, serialize, unit_hash

from . import vectors

M1 = "a" * 32
M2 = "b" * 32
SLEEPER = "[Unit]\nDescription=Hello sleeper\n\n[Service]\nExecStart=/bin/sleep 1000\n"


KAYLEE_UNITS = [u for case in vectors.load("kaylee-go.jsonl") for u in case["fleet_units"]]
FLEET_TEXTS = [v for v in vectors.load("fleet-unit-hash.jsonl") if "error" not in v]


class CountingClient(Etcd2Client):
    """Records every request so tests can check what was read and that nothing was written."""

    gets: list[str]

    def get(self, key: str, recursive: bool = False, sorted: bool = False) -> Node | None:
        self.gets.append(key)
        return super().get(key, recursive=recursive, sorted=sorted)


@pytest.fixture
def client(etcd_endpoint: str) -> Iterator[CountingClient]:
    c = CountingClient([etcd_endpoint])
    c.gets = []
    with c:
        yield c


@pytest.fixture
def driver(client: CountingClient, prefix: str) -> RegistryDriver:
    return RegistryDriver(client, prefix)


def value(client: Etcd2Client, key: str) -> str | None:
    node = client.get(key)
    return node.value if node else None


def put_unit(client: Etcd2Client, prefix: str, name: str, text: str, **job: str) -> str:
    """Write a unit the way fleetctl does, by hand: unit/<hash>, object, other job keys.

    ``text`` is the canonical text fleetctl stores as Raw; the key is its SHA-1.
    """
    h = hashlib.sha1(text.encode()).hexdigest()
    client.set(f"{prefix}unit/{h}", json.dumps({"Raw": text}))
    obj = {"Name": name, "UnitHash": list(bytes.fromhex(h))}
    client.set(f"{prefix}job/{name}/object", json.dumps(obj))
    for key, val in job.items():
        client.set(f"{prefix}job/{name}/{key.replace('_', '-')}", val)
    return h


def put_state(client: Etcd2Client, prefix: str, name: str, machine: str, sub: str) -> None:
    state = {
        "loadState": "loaded",
        "activeState": "active" if sub == "running" else "inactive",
        "subState": sub,
        "machineState": {
            "ID": machine,
            "PublicIP": "",
            "Metadata": None,
            "Capabilities": None,
            "Version": "",
        },
        "unitHash": "c0ffee",
    }
    client.set(f"{prefix}states/{name}/{machine}", json.dumps(state))


def test_driver_implements_the_protocol(driver: RegistryDriver) -> None:
    client: FleetClient = driver
    assert client.units() == []
    assert client.unit_states() == []
    assert client.machines() == []


def verbatim_options(text: str) -> tuple[UnitOption, ...]:
    """The options the Go Kaylee sent for ``text``: every ``Name=Value`` line, untrimmed.

    Some Go renderings end a value with a space (a volume plugin call without options);
    fleet hashes the options as sent, so those texts do not survive parse() unchanged.
    """
    options, section = [], ""
    for line in text.split("\n"):  # not splitlines(): values may hold U+2028
        if line.startswith("["):
            section = line[1:-1]
        elif line:
            name, _, val = line.partition("=")
            options.append(UnitOption(section, name, val))
    return tuple(options)


@pytest.mark.parametrize("vector", KAYLEE_UNITS, ids=[u["name"] for u in KAYLEE_UNITS])
def test_create_writes_fleets_exact_keys_and_bytes(
    driver: RegistryDriver, client: Etcd2Client, prefix: str, vector: dict[str, Any]
) -> None:
    name, text, h = vector["name"], vector["unit_file"], vector["fleet_unit_hash"]
    options = parse(text)
    if serialize(options) != text:  # a value with trailing whitespace: see verbatim_options
        assert serialize(verbatim_options(text)) == text
        options = verbatim_options(text)
    driver.create_unit(name, options, "launched")
    unit = client.get(f"{prefix}unit/{h}")
    obj = client.get(f"{prefix}job/{name}/object")
    state = client.get(f"{prefix}job/{name}/target-state")
    assert unit is not None and obj is not None and state is not None
    assert json.loads(unit.value or "") == {"Raw": text}
    numbers = ",".join(map(str, bytes.fromhex(h)))
    expected = '{"Name":"' + name + '","UnitHash":[' + numbers + "]}"
    assert obj.value == expected
    assert state.value == "launched"
    assert unit.created_index < obj.created_index < state.created_index  # fleet's order
    assert unit.ttl is None and obj.ttl is None and state.ttl is None


def test_unit_text_is_encoded_like_go(
    client: Etcd2Client, driver: RegistryDriver, prefix: str
) -> None:
    options = (UnitOption("Service", "ExecStart", '/bin/echo "<a & b>"\t\x01\u2028é\\'),)
    driver.create_unit("esc.service", options, "inactive")
    stored = value(client, f"{prefix}unit/{unit_hash(options)}")
    assert stored == (
        '{"Raw":"[Service]\\nExecStart=/bin/echo \\"\\u003ca \\u0026 b\\u003e\\"'
        '\\t\\u0001\\u2028é\\\\\\n"}'
    )


def test_go_json_string_replaces_lone_surrogates() -> None:
    assert go_json_string("a\ud800b") == '"a\ufffdb"'
    assert (
        job_object_json("x", "00" * 19 + "ff") == '{"Name":"x","UnitHash":[' + "0," * 19 + "255]}"
    )


def test_create_same_unit_again_writes_nothing(
    driver: RegistryDriver, client: Etcd2Client, prefix: str
) -> None:
    options = parse(SLEEPER)
    driver.create_unit("sleeper.service", options, "launched")
    before = client.index()
    driver.create_unit("sleeper.service", options, "launched")
    assert client.index() == before  # the cluster index moves on any write at all


def test_create_with_new_state_writes_only_target_state(
    driver: RegistryDriver, client: Etcd2Client, prefix: str
) -> None:
    options = parse(SLEEPER)
    driver.create_unit("s.service", options, "loaded")
    obj = client.get(f"{prefix}job/s.service/object")
    driver.create_unit("s.service", options, "launched")
    assert client.get(f"{prefix}job/s.service/object") == obj
    assert value(client, f"{prefix}job/s.service/target-state") == "launched"


def test_create_with_new_options_replaces_the_object(
    driver: RegistryDriver, client: Etcd2Client, prefix: str
) -> None:
    driver.create_unit("r.service", parse(SLEEPER), "launched")
    state = client.get(f"{prefix}job/r.service/target-state")
    other = parse("[Service]\nExecStart=/bin/true\n")
    driver.create_unit("r.service", other, "launched")
    assert value(client, f"{prefix}job/r.service/object") == job_object_json(
        "r.service", unit_hash(other)
    )
    assert client.get(f"{prefix}job/r.service/target-state") == state
    assert value(client, f"{prefix}unit/{unit_hash(parse(SLEEPER))}") is not None
    assert driver.unit("r.service") == FleetUnit("r.service", other, "launched")


def test_create_keeps_a_unit_body_that_already_exists(
    driver: RegistryDriver, client: Etcd2Client, prefix: str
) -> None:
    h = put_unit(client, prefix, "first.service", SLEEPER, target_state="launched")
    body = client.get(f"{prefix}unit/{h}")
    driver.create_unit("second.service", parse(SLEEPER), "launched")
    assert client.get(f"{prefix}unit/{h}") == body


@pytest.mark.parametrize("vector", FLEET_TEXTS, ids=[str(v["id"]) for v in FLEET_TEXTS])
def test_units_written_by_fleetctl_are_read_back(
    driver: RegistryDriver, client: Etcd2Client, prefix: str, vector: dict[str, Any]
) -> None:
    name = f"v{vector['id']}@x:1.service"
    h = put_unit(client, prefix, name, vector["canonical"], target_state="loaded")
    assert h == vector["hash"]
    [unit] = driver.units()
    assert unit == FleetUnit(name, parse(vector["canonical"]), "loaded", "inactive", "")
    if serialize(unit.options) == vector["canonical"]:  # else fleet-registry.md's quirk
        assert unit.hash == vector["hash"]
    assert driver.unit(name) == unit


def test_job_state_follows_target_state_and_heartbeat(
    driver: RegistryDriver, client: Etcd2Client, prefix: str
) -> None:
    put_unit(client, prefix, "a-unscheduled.service", SLEEPER, target_state="launched")
    put_unit(client, prefix, "b-no-state.service", SLEEPER, target_state="launched", target=M1)
    put_unit(client, prefix, "c-loaded.service", SLEEPER, target_state="loaded", target=M1)
    put_state(client, prefix, "c-loaded.service", M1, "dead")
    put_unit(client, prefix, "d-launched.service", SLEEPER, target_state="launched", target=M2)
    client.set(f"{prefix}job/d-launched.service/job-state", M2)
    put_state(client, prefix, "d-launched.service", M2, "running")
    put_unit(client, prefix, "e-moved.service", SLEEPER, target_state="launched", target=M2)
    client.set(f"{prefix}job/e-moved.service/job-state", M1)
    put_state(client, prefix, "e-moved.service", M2, "running")
    put_unit(client, prefix, "f-other-host.service", SLEEPER, target_state="launched", target=M2)
    put_state(client, prefix, "f-other-host.service", M1, "running")
    expected = {
        "a-unscheduled.service": ("inactive", ""),
        "b-no-state.service": ("inactive", M1),
        "c-loaded.service": ("loaded", M1),
        "d-launched.service": ("launched", M2),
        "e-moved.service": ("loaded", M2),
        "f-other-host.service": ("inactive", M2),
    }
    units = driver.units()
    assert [u.name for u in units] == sorted(expected)
    assert {u.name: (u.current_state, u.machine_id) for u in units} == expected
    for name, (state, machine) in expected.items():
        unit = driver.unit(name)
        assert unit is not None and (unit.current_state, unit.machine_id) == (state, machine)


def test_listing_reads_each_directory_once_and_caches_unit_texts(
    driver: RegistryDriver, client: CountingClient, prefix: str
) -> None:
    for i in range(10):
        put_unit(client, prefix, f"u{i}.service", f"[Service]\nExecStart=/bin/{i}\n")
    client.gets.clear()
    assert len(driver.units()) == 10
    assert client.gets == [f"{prefix}job", f"{prefix}states", f"{prefix}unit"]
    client.gets.clear()
    driver.units()
    assert client.gets == [f"{prefix}job", f"{prefix}states"]


def test_jobs_without_object_or_unit_body_are_skipped(
    driver: RegistryDriver, client: Etcd2Client, prefix: str
) -> None:
    client.set(f"{prefix}job/orphan.service/target-state", "launched")
    h = put_unit(client, prefix, "nobody.service", SLEEPER)
    client.delete(f"{prefix}unit/{h}")
    assert driver.units() == []
    assert driver.unit("nobody.service") is None
    assert driver.unit("absent.service") is None


def test_unit_states_are_parsed_and_sorted(
    driver: RegistryDriver, client: Etcd2Client, prefix: str
) -> None:
    put_state(client, prefix, "b.service", M2, "running")
    put_state(client, prefix, "b.service", M1, "dead")
    put_state(client, prefix, "a.service", M2, "running")
    client.set(f"{prefix}states/a.service/{M1}", "not json")
    assert driver.unit_states() == [
        UnitState("a.service", "c0ffee", M2, "loaded", "active", "running"),
        UnitState("b.service", "c0ffee", M1, "loaded", "inactive", "dead"),
        UnitState("b.service", "c0ffee", M2, "loaded", "active", "running"),
    ]


def test_machines_apply_dynamic_metadata(
    driver: RegistryDriver, client: Etcd2Client, prefix: str
) -> None:
    def machine(mid: str, ip: str, metadata: dict[str, str] | None) -> None:
        obj = {
            "ID": mid,
            "PublicIP": ip,
            "Metadata": metadata,
            "Capabilities": {"DISABLE_ENGINE": False, "GRPC": False},
            "Version": "1.0.0",
        }
        client.set(f"{prefix}machines/{mid}/object", json.dumps(obj), ttl=30)

    machine(M2, "10.0.0.2", {"disk": "ssd", "region": "eu", "rack": "1"})
    machine(M1, "10.0.0.1", None)
    client.set(f"{prefix}machines/{M2}/metadata/disk", "hdd")
    client.set(f"{prefix}machines/{M2}/metadata/rack", "")
    client.set(f"{prefix}machines/{M2}/metadata/role", "web")
    client.set(f"{prefix}machines/{'c' * 32}/metadata/role", "gone")  # object expired
    assert driver.machines() == [
        Machine(M1, "10.0.0.1", {}),
        Machine(M2, "10.0.0.2", {"disk": "hdd", "region": "eu", "role": "web"}),
    ]


def test_set_target_state_writes_only_a_change(
    driver: RegistryDriver, client: Etcd2Client, prefix: str
) -> None:
    driver.create_unit("t.service", parse(SLEEPER), "launched")
    before = client.index()
    driver.set_target_state("t.service", "launched")
    assert client.index() == before
    driver.set_target_state("t.service", "loaded")
    assert value(client, f"{prefix}job/t.service/target-state") == "loaded"
    with pytest.raises(FleetNotFound):
        driver.set_target_state("missing.service", "loaded")
    with pytest.raises(UsageError):
        driver.set_target_state("t.service", "running")
    assert value(client, f"{prefix}job/missing.service/target-state") is None


def test_destroy_removes_the_job_and_keeps_the_unit_body(
    driver: RegistryDriver, client: Etcd2Client, prefix: str
) -> None:
    driver.create_unit("d.service", parse(SLEEPER), "launched")
    client.set(f"{prefix}job/d.service/target", M1)
    driver.destroy_unit("d.service")
    assert client.get(f"{prefix}job/d.service") is None
    assert value(client, f"{prefix}unit/{unit_hash(parse(SLEEPER))}") is not None
    with pytest.raises(FleetNotFound):
        driver.destroy_unit("d.service")


def test_unreachable_etcd_is_retried_with_backoff_then_unavailable(prefix: str) -> None:
    sleeps: list[float] = []
    settings = ThrottleSettings(attempts=4, backoff=0.5, max_backoff=1.5)
    throttle = Throttle(settings, sleep=sleeps.append, rand=lambda lo, hi: hi)
    with Etcd2Client(f"http://127.0.0.1:{free_port()}", timeout=1) as dead:
        driver = RegistryDriver(dead, prefix, throttle=throttle)
        with pytest.raises(FleetUnavailable):
            driver.create_unit("x.service", parse(SLEEPER))
    assert sleeps == [0.5, 1.0, 1.5]


def test_retry_uses_full_jitter_and_stops_on_success() -> None:
    calls: list[tuple[float, float]] = []
    sleeps: list[float] = []

    def rand(lo: float, hi: float) -> float:
        calls.append((lo, hi))
        return hi / 2

    throttle = Throttle(ThrottleSettings(backoff=0.2), sleep=sleeps.append, rand=rand)
    outcomes: list[Exception | str] = [FleetUnavailable("down"), FleetUnavailable("down"), "ok"]

    def flaky() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert throttle.call("test", flaky) == "ok"
    assert calls == [(0.0, 0.2), (0.0, 0.4)]
    assert sleeps == [0.1, 0.2]


def test_errors_other_than_unavailable_are_not_retried() -> None:
    throttle = Throttle(sleep=lambda s: pytest.fail("slept"))
    attempts = []

    def missing() -> None:
        attempts.append(1)
        raise FleetNotFound("no")

    with pytest.raises(FleetNotFound):
        throttle.call("test", missing)
    assert attempts == [1]


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    now = [100.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(round(seconds, 6))
        now[0] += seconds

    throttle = Throttle(
        ThrottleSettings(write_rate=10, write_burst=3), clock=lambda: now[0], sleep=sleep
    )
    for _ in range(5):
        throttle.acquire()
    assert sleeps == [0.1, 0.1]
    now[0] += 10  # idle refills up to the burst, not beyond
    for _ in range(3):
        throttle.acquire()
    assert sleeps == [0.1, 0.1]
    throttle.acquire()
    assert sleeps == [0.1, 0.1, 0.1]
