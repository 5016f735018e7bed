"""The HTTP API v1 driver against the fleet simulator's API server over a real etcd.

The simulator serves fleet's API from fleet's registry keys, so every test can also look
at the keys themselves and compare with what the registry driver reads.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kaylee_sync.errors import FleetError, FleetNotFound, FleetUnavailable, UsageError
from kaylee_sync.fleet.api import ApiDriver, ApiError
from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.fleet.protocol import FleetClient
from kaylee_sync.fleet.registry import RegistryDriver, job_object_json
from kaylee_sync.fleet.throttle import Throttle, ThrottleSettings
from kaylee_sync.fleetsim import FleetApiServer
from kaylee_sync.unitfile import UnitOption, parse, unit_hash

from .test_fleet_registry import M1, M2, SLEEPER, put_state, put_unit, value

OTHER = parse("[Service]\nExecStart=/bin/true\n")


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fleet", dir="/tmp"))  # unix socket paths are short
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def api(etcd_endpoint: str, prefix: str, socket_dir: Path) -> Iterator[ApiDriver]:
    sock = socket_dir / "fleet.sock"
    with FleetApiServer(etcd_endpoint, prefix, f"unix://{sock}"), ApiDriver(f"unix://{sock}") as d:
        yield d


@pytest.fixture
def registry(client: Etcd2Client, prefix: str) -> RegistryDriver:
    return RegistryDriver(client, prefix)


def test_driver_implements_the_protocol(api: ApiDriver) -> None:
    driver: FleetClient = api
    assert driver.units() == []
    assert driver.unit_states() == []
    assert driver.machines() == []


def test_default_endpoint_is_fleets_socket_and_bad_schemes_are_refused() -> None:
    with ApiDriver() as d:
        assert d.endpoint == "unix:///var/run/fleet.sock"
    with ApiDriver("http://user:pw@127.0.0.1:49153/") as d:
        assert d.endpoint == "http://127.0.0.1:49153" and "pw" not in repr(d)
    with pytest.raises(ValueError):
        ApiDriver("ftp://host")


def test_create_unit_writes_fleets_keys(api: ApiDriver, client: Etcd2Client, prefix: str) -> None:
    name = "k2:web:abc123:d4e5f6:1.service"
    api.create_unit(name, parse(SLEEPER), "launched")
    h = unit_hash(parse(SLEEPER))
    assert json.loads(value(client, f"{prefix}unit/{h}") or "") == {"Raw": SLEEPER}
    assert value(client, f"{prefix}job/{name}/object") == job_object_json(name, h)
    assert value(client, f"{prefix}job/{name}/target-state") == "launched"
    unit = api.unit(name)
    assert unit is not None
    assert (unit.name, unit.options, unit.desired_state) == (name, parse(SLEEPER), "launched")
    assert api.unit("absent.service") is None


def test_create_same_unit_again_writes_nothing(api: ApiDriver, client: Etcd2Client) -> None:
    api.create_unit("same.service", parse(SLEEPER), "launched")
    before = client.index()
    api.create_unit("same.service", parse(SLEEPER), "launched")
    api.set_target_state("same.service", "launched")
    assert client.index() == before


def test_new_target_state_keeps_the_unit_object(
    api: ApiDriver, client: Etcd2Client, prefix: str
) -> None:
    api.create_unit("t.service", parse(SLEEPER), "loaded")
    obj = client.get(f"{prefix}job/t.service/object")
    api.create_unit("t.service", parse(SLEEPER), "launched")
    assert client.get(f"{prefix}job/t.service/object") == obj
    api.set_target_state("t.service", "inactive")
    assert client.get(f"{prefix}job/t.service/object") == obj
    assert value(client, f"{prefix}job/t.service/target-state") == "inactive"


def test_new_options_replace_the_unit(api: ApiDriver) -> None:
    api.create_unit("r.service", parse(SLEEPER), "launched")
    api.create_unit("r.service", OTHER, "launched")
    unit = api.unit("r.service")
    assert unit is not None and unit.options == OTHER and unit.hash == unit_hash(OTHER)


def test_missing_units_are_not_found(api: ApiDriver) -> None:
    with pytest.raises(FleetNotFound):
        api.set_target_state("missing.service", "launched")
    with pytest.raises(FleetNotFound):
        api.destroy_unit("missing.service")
    with pytest.raises(UsageError):
        api.set_target_state("missing.service", "started")


def test_destroy_removes_the_job_and_keeps_the_unit_body(
    api: ApiDriver, client: Etcd2Client, prefix: str
) -> None:
    api.create_unit("d.service", parse(SLEEPER), "launched")
    api.destroy_unit("d.service")
    assert api.unit("d.service") is None
    assert client.get(f"{prefix}job/d.service") is None
    assert client.get(f"{prefix}unit/{unit_hash(parse(SLEEPER))}") is not None


def test_fleetd_refusals_become_api_errors(api: ApiDriver) -> None:
    with pytest.raises(ApiError) as info:
        api.create_unit("tmpl@.service", parse(SLEEPER), "inactive")
        api.create_unit("tmpl@.service", parse(SLEEPER), "launched")
    assert info.value.status == 400 and "template" in str(info.value)
    bad = (UnitOption("X-Fleet", "MachineID", M1), UnitOption("X-Fleet", "Global", "true"))
    with pytest.raises(ApiError):
        api.create_unit("bad.service", bad)


def test_lists_follow_next_page_tokens(api: ApiDriver, registry: RegistryDriver) -> None:
    names = [f"p{i:03}.service" for i in range(205)]
    for name in names:
        registry.create_unit(name, OTHER, "loaded")
    assert [u.name for u in api.units()] == names


def test_reads_agree_with_the_registry_driver(
    api: ApiDriver, registry: RegistryDriver, client: Etcd2Client, prefix: str
) -> None:
    put_unit(client, prefix, "a.service", SLEEPER, target_state="launched")
    put_unit(client, prefix, "b.service", SLEEPER, target_state="loaded", target=M1)
    put_state(client, prefix, "b.service", M1, "dead")
    put_unit(client, prefix, "c.service", SLEEPER, target_state="launched", target=M2)
    client.set(f"{prefix}job/c.service/job-state", M2)
    put_state(client, prefix, "c.service", M2, "running")
    for mid, ip in ((M1, "10.0.0.1"), (M2, "10.0.0.2")):
        obj = {"ID": mid, "PublicIP": ip, "Metadata": {"disk": "ssd"}, "Version": "1.0.0"}
        client.set(f"{prefix}machines/{mid}/object", json.dumps(obj))
    client.set(f"{prefix}machines/{M2}/metadata/disk", "hdd")
    assert api.units() == registry.units()
    assert [(u.current_state, u.machine_id) for u in api.units()] == [
        ("inactive", ""),
        ("loaded", M1),
        ("launched", M2),
    ]
    assert api.unit_states() == registry.unit_states()
    assert len(api.unit_states()) == 2
    assert api.machines() == registry.machines()
    assert api.machines()[1].metadata == {"disk": "hdd"}


def test_tcp_endpoint(etcd_endpoint: str, prefix: str) -> None:
    with FleetApiServer(etcd_endpoint, prefix) as server, ApiDriver(server.url) as d:
        d.create_unit("tcp.service", parse(SLEEPER), "inactive")
        assert [u.name for u in d.units()] == ["tcp.service"]


def test_unreachable_socket_is_retried_then_unavailable(socket_dir: Path) -> None:
    sleeps: list[float] = []
    throttle = Throttle(ThrottleSettings(attempts=3), sleep=sleeps.append, rand=lambda a, b: b)
    driver = ApiDriver(f"unix://{socket_dir}/none.sock", throttle=throttle)
    with driver, pytest.raises(FleetUnavailable) as info:
        driver.units()
    assert sleeps == [0.2, 0.4]
    assert "\n" not in str(info.value)


def _mocked(status: int, body: object) -> ApiDriver:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers.get("content-type") in (None, "application/json")
        return httpx.Response(status, json=body)

    throttle = Throttle(ThrottleSettings(attempts=1))
    driver = ApiDriver("http://fleet.invalid", throttle=throttle)
    driver._http = httpx.Client(
        transport=httpx.MockTransport(handler), base_url="http://fleet.invalid"
    )
    return driver


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (503, FleetUnavailable),
        (500, FleetUnavailable),
        (409, ApiError),
        (415, ApiError),
        (400, ApiError),
        (404, FleetNotFound),
    ],
)
def test_status_codes_map_to_project_errors(status: int, error: type[FleetError]) -> None:
    body = {"error": {"code": status, "message": "it\nfailed"}}
    with _mocked(status, body) as d, pytest.raises(error) as info:
        d.destroy_unit("x.service")
    assert str(info.value).endswith(f"DELETE units/x.service: HTTP {status}: it failed")
    if isinstance(info.value, ApiError):
        assert info.value.status == status
