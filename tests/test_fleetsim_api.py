"""The simulator's fleet HTTP API v1, spoken to with plain HTTP, over a real etcd."""

from __future__ import annotations

import base64
import json
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kaylee_sync.embedded_etcd import free_port
from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.fleetsim import FleetApiServer, SimulatedCluster
from kaylee_sync.unitfile import parse, serialize, unit_hash

M1, M2 = "1" * 32, "2" * 32
JSON = {"Content-Type": "application/json"}
SLEEP = [
    {"section": "Unit", "name": "Description", "value": "sleeper"},
    {"section": "Service", "name": "ExecStart", "value": "/bin/sleep 1000"},
]


@pytest.fixture
def http(etcd_endpoint: str, prefix: str) -> Iterator[httpx.Client]:
    with (
        FleetApiServer(etcd_endpoint, prefix) as server,
        httpx.Client(base_url=server.url + "/fleet/v1") as c,
    ):
        yield c


def put(http: httpx.Client, name: str, body: Any, headers: Any = JSON) -> httpx.Response:
    return http.put(f"/units/{name}", content=json.dumps(body), headers=headers)


def error(resp: httpx.Response) -> tuple[int, str]:
    body = resp.json()
    assert body["error"]["code"] == resp.status_code and list(body) == ["error"]
    return resp.status_code, body["error"]["message"]


def test_put_creates_fleets_keys_and_get_reads_them_back(
    http: httpx.Client, client: Etcd2Client, prefix: str
) -> None:
    assert put(http, "web.service", {"options": SLEEP}).status_code == 201
    digest = unit_hash(parse("[Unit]\nDescription=sleeper\n[Service]\nExecStart=/bin/sleep 1000"))
    raw = client.get(f"{prefix}unit/{digest}")
    assert raw is not None and json.loads(raw.value or "") == {
        "Raw": "[Unit]\nDescription=sleeper\n\n[Service]\nExecStart=/bin/sleep 1000\n"
    }
    obj = client.get(f"{prefix}job/web.service/object")
    assert obj is not None
    assert json.loads(obj.value or "") == {
        "Name": "web.service",
        "UnitHash": list(bytes.fromhex(digest)),
    }
    state = client.get(f"{prefix}job/web.service/target-state")
    assert state is not None and state.value == "inactive"  # the default desiredState

    got = http.get("/units/web.service")
    assert got.status_code == 200
    assert got.json() == {
        "name": "web.service",
        "options": SLEEP,
        "desiredState": "inactive",
        "currentState": "inactive",
    }


def test_put_follows_fleets_rules_for_existing_units(
    http: httpx.Client, client: Etcd2Client, prefix: str
) -> None:
    assert error(put(http, "web.service", {"desiredState": "launched"})) == (
        409,
        "unit does not exist and options field empty",
    )
    assert put(http, "web.service", {"options": SLEEP}).status_code == 201
    assert error(put(http, "web.service", {"options": SLEEP}))[0] == 409  # no desiredState
    assert put(http, "web.service", {"desiredState": "loaded"}).status_code == 204
    state = client.get(f"{prefix}job/web.service/target-state")
    assert state is not None and state.value == "loaded"
    # other options replace the unit (a new hash), keeping the given desiredState
    other = [{"section": "Service", "name": "ExecStart", "value": "/bin/true"}]
    assert (
        put(http, "web.service", {"options": other, "desiredState": "launched"}).status_code == 201
    )
    got = http.get("/units/web.service").json()
    assert got["options"] == other and got["desiredState"] == "launched"


def test_put_refuses_bad_content_types_names_and_requirements(http: httpx.Client) -> None:
    body = {"options": SLEEP}
    assert error(put(http, "a.service", body, headers={}))[0] == 415
    assert error(put(http, "a.service", body, {"Content-Type": "text/plain"}))[0] == 415
    charset = {"Content-Type": "application/json; charset=utf-8"}
    assert put(http, "a.service", body, charset).status_code == 201
    assert error(put(http, "noext", body)) == (400, 'unit name must contain "."')
    assert error(put(http, "a.service", {"name": "b.service", **body}))[0] == 400
    assert error(http.put("/units/a.service", content=b"{oops", headers=JSON))[0] == 400
    pinned = [{"section": "X-Fleet", "name": "MachineID", "value": M1}]
    conflict = [{"section": "X-Fleet", "name": "Conflicts", "value": "x*"}]
    assert error(put(http, "c.service", {"options": pinned + conflict})) == (
        400,
        "MachineID cannot be used with Conflicts",
    )
    assert put(http, "t@.service", {"options": SLEEP}).status_code == 201
    assert error(put(http, "t@.service", {"desiredState": "launched"})) == (
        400,
        'cannot activate template "t@.service"',
    )


def test_delete_and_missing_units(http: httpx.Client, client: Etcd2Client, prefix: str) -> None:
    assert error(http.get("/units/none.service")) == (404, "unit does not exist")
    assert error(http.delete("/units/none.service")) == (404, "unit does not exist")
    assert put(http, "web.service", {"options": SLEEP}).status_code == 201
    assert http.delete("/units/web.service").status_code == 204
    assert client.get(f"{prefix}job/web.service") is None
    assert http.get("/units").json() == {}  # Go's omitempty: no "units" at all


def test_units_come_in_pages_of_100(http: httpx.Client, client: Etcd2Client, prefix: str) -> None:
    options = parse("[Service]\nExecStart=/bin/true\n")
    digest = unit_hash(options)
    client.create(f"{prefix}unit/{digest}", json.dumps({"Raw": serialize(options)}))
    for i in range(205):
        name = f"u{i:03}.service"
        obj = {"Name": name, "UnitHash": list(bytes.fromhex(digest))}
        client.set(f"{prefix}job/{name}/object", json.dumps(obj))
    names: list[str] = []
    sizes = []
    params: dict[str, str] = {}
    while True:
        page = http.get("/units", params=params).json()
        sizes.append(len(page.get("units", [])))
        names += [u["name"] for u in page.get("units", [])]
        if "nextPageToken" not in page:
            break
        params = {"nextPageToken": page["nextPageToken"]}
    assert sizes == [100, 100, 5]
    assert names == sorted(names) and len(set(names)) == 205
    # no target-state key: fleet omits desiredState
    assert "desiredState" not in http.get("/units/u000.service").json()
    bad = base64.urlsafe_b64encode(struct.pack("<HH", 50, 1)).decode()
    assert error(http.get("/units", params={"nextPageToken": bad})) == (
        400,
        "token limit must be 100",
    )


def test_state_and_units_report_what_the_agents_do(
    etcd_endpoint: str, prefix: str, http: httpx.Client
) -> None:
    machines = [{"id": M1, "metadata": {"role": "a"}}, {"id": M2, "metadata": {"role": "b"}}]
    with SimulatedCluster(
        etcd_endpoint, prefix, machines, engine_interval=0.1, agent_interval=0.1
    ) as cluster:
        for name, role in (("a.service", "a"), ("b.service", "b")):
            pin = {"section": "X-Fleet", "name": "MachineMetadata", "value": f"role={role}"}
            body = {"options": [*SLEEP, pin], "desiredState": "launched"}
            assert put(http, name, body).status_code == 201
        cluster.wait_until(lambda: len(cluster.running_units()) == 2, timeout=5)
        cluster.wait_until(
            lambda: http.get("/units/a.service").json().get("currentState") == "launched", 5
        )
        states = http.get("/state").json()["states"]
        assert [(s["name"], s["machineID"]) for s in states] == [
            ("a.service", M1),
            ("b.service", M2),
        ]
        assert set(states[0]) == {
            "name",
            "hash",
            "machineID",
            "systemdLoadState",
            "systemdActiveState",
            "systemdSubState",
        }
        assert states[0]["systemdSubState"] == "running"
        only = http.get("/state", params={"machineID": M2}).json()["states"]
        assert [s["name"] for s in only] == ["b.service"]
        only = http.get("/state", params={"unitName": "a.service"}).json()["states"]
        assert [s["machineID"] for s in only] == [M1]
        unit = http.get("/units/a.service").json()
        assert unit["machineID"] == M1 and unit["currentState"] == "launched"

        listed = http.get("/machines").json()["machines"]
        assert listed == [
            {"id": M1, "primaryIP": "10.0.0.1", "metadata": {"role": "a"}},
            {"id": M2, "primaryIP": "10.0.0.2", "metadata": {"role": "b"}},
        ]


def test_patch_machines_sets_and_removes_dynamic_metadata(
    http: httpx.Client, client: Etcd2Client, prefix: str
) -> None:
    client.set(f"{prefix}machines/{M1}/object", json.dumps({"ID": M1, "Metadata": {"a": "1"}}))
    ops = [
        {"op": "add", "path": f"/{M1}/metadata/zone", "value": {"value": "eu"}},
        {"op": "remove", "path": f"/{M1}/metadata/a"},
    ]
    resp = http.patch("/machines", content=json.dumps(ops))
    assert resp.status_code == 204 and resp.content == b""
    assert http.get("/machines").json() == {"machines": [{"id": M1, "metadata": {"zone": "eu"}}]}
    removed = client.get(f"{prefix}machines/{M1}/metadata/a")
    assert removed is not None and removed.value == ""
    bad_op = [{"op": "move", "path": f"/{M1}/metadata/x", "value": {"value": "1"}}]
    assert error(http.patch("/machines", content=json.dumps(bad_op)))[0] == 400
    bad_path = [{"op": "add", "path": f"/{M1}/meta/x", "value": {"value": "1"}}]
    assert error(http.patch("/machines", content=json.dumps(bad_path))) == (
        400,
        "machine metadata path invalid",
    )
    no_value = [{"op": "replace", "path": f"/{M1}/metadata/x"}]
    assert error(http.patch("/machines", content=json.dumps(no_value)))[0] == 400


def test_routing_matches_fleets_mux(http: httpx.Client) -> None:
    root = str(http.base_url).removesuffix("/fleet/v1/")
    with httpx.Client(base_url=root) as raw:
        assert raw.get("/").status_code == 405
        assert raw.get("/nowhere").status_code == 404
        assert raw.get("/v1-alpha/units").status_code == 200
    assert error(http.post("/units", content=b"{}"))[0] == 405
    assert error(http.get("/units/a/b"))[0] == 404
    assert error(http.delete("/machines"))[0] == 405


def test_serves_on_a_unix_socket(etcd_endpoint: str, prefix: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="fs", dir="/tmp"))  # socket paths must be short
    try:
        sock = tmp / "fleet.sock"
        with FleetApiServer(etcd_endpoint, prefix, f"unix://{sock}") as server:
            assert server.url == f"unix://{sock}"
            transport = httpx.HTTPTransport(uds=str(sock))
            with httpx.Client(transport=transport, base_url="http://fleet") as c:
                assert c.get("/fleet/v1/machines").json() == {}
        assert not sock.exists()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_unreachable_etcd_answers_503(prefix: str) -> None:
    with (
        FleetApiServer(f"http://127.0.0.1:{free_port()}", prefix) as server,
        httpx.Client(base_url=server.url) as c,
    ):
        status, message = error(c.get("/fleet/v1/units"))
        assert status == 503 and message
