"""The simulated fleet against a real etcd: scheduling, agents, states, machines leaving."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.fleet.registry import RegistryDriver
from kaylee_sync.fleetsim import SimulatedCluster
from kaylee_sync.unitfile import UnitOption, parse, serialize

M1, M2, M3 = "1" * 32, "2" * 32, "3" * 32


def unit(exec_start: str = "/bin/sleep 1000", **xfleet: str) -> list[UnitOption]:
    text = f"[Unit]\nDescription=test\n\n[Service]\nExecStart={exec_start}\n"
    if xfleet:
        text += "\n[X-Fleet]\n" + "".join(f"{k}={v}\n" for k, v in xfleet.items())
    return list(parse(text))


@pytest.fixture
def fleet(client: Etcd2Client, prefix: str) -> RegistryDriver:
    return RegistryDriver(client, prefix)


def make_cluster(endpoint: str, prefix: str, **kwargs: object) -> SimulatedCluster:
    defaults: dict[str, object] = {
        "machines": [
            {"id": M1, "metadata": {"role": "web", "disk": "ssd"}},
            {"id": M2, "metadata": {"role": "web", "disk": "hdd"}},
            {"id": M3, "metadata": {"role": "db"}},
        ],
        "engine_interval": 0.1,
        "agent_interval": 0.1,
        "default_start_delay": 0.1,
    }
    defaults.update(kwargs)
    return SimulatedCluster(endpoint, prefix, **defaults)  # type: ignore[arg-type]


@pytest.fixture
def cluster(etcd_endpoint: str, prefix: str) -> Iterator[SimulatedCluster]:
    with make_cluster(etcd_endpoint, prefix) as c:
        yield c


def test_unit_goes_from_inactive_to_launched_to_running_with_fleets_state_json(
    cluster: SimulatedCluster, fleet: RegistryDriver, client: Etcd2Client, prefix: str
) -> None:
    fleet.create_unit("hello.service", unit(MachineMetadata="role=db"), "inactive")
    time.sleep(0.3)
    assert cluster.targets() == {}  # inactive units are not scheduled

    fleet.set_target_state("hello.service", "launched")
    cluster.wait_until(lambda: cluster.running_units() == {"hello.service": [M3]}, timeout=5)
    raw = client.get(f"{prefix}states/hello.service/{M3}")
    assert raw is not None and raw.ttl is not None and 0 < raw.ttl <= 30
    state = json.loads(raw.value or "")
    assert list(state) == ["loadState", "activeState", "subState", "machineState", "unitHash"]
    assert state["machineState"] == {
        "ID": M3,
        "PublicIP": "",
        "Metadata": None,
        "Capabilities": None,
        "Version": "",
    }
    assert (state["loadState"], state["activeState"], state["subState"]) == (
        "loaded",
        "active",
        "running",
    )
    assert state["unitHash"] == fleet.unit("hello.service").hash  # type: ignore[union-attr]
    legacy = client.get(f"{prefix}state/hello.service")
    assert legacy is not None and json.loads(legacy.value or "") == state
    heartbeat = client.get(f"{prefix}job/hello.service/job-state")
    assert heartbeat is not None and heartbeat.value == M3
    # the submitter's own driver sees the same picture
    assert fleet.unit("hello.service").current_state == "launched"  # type: ignore[union-attr]


def test_machine_objects_and_engine_keys_look_like_fleetds(
    cluster: SimulatedCluster, client: Etcd2Client, prefix: str
) -> None:
    cluster.wait_until(lambda: client.get(f"{prefix}lease/engine-leader"), timeout=5)
    obj = client.get(f"{prefix}machines/{M1}/object")
    assert obj is not None and obj.ttl is not None
    assert json.loads(obj.value or "") == {
        "ID": M1,
        "PublicIP": "10.0.0.1",
        "Metadata": {"role": "web", "disk": "ssd"},
        "Capabilities": {"DISABLE_ENGINE": False, "GRPC": False},
        "Version": "1.0.0",
    }
    lease = client.get(f"{prefix}lease/engine-leader")
    assert lease is not None and json.loads(lease.value or "") == {"MachineID": M1, "Version": 1}
    version = client.get(f"{prefix}engine/version")
    assert version is not None and version.value == "1"


def test_placement_honours_metadata_machine_id_and_conflicts(
    cluster: SimulatedCluster, fleet: RegistryDriver
) -> None:
    fleet.create_unit("ssd.service", unit(MachineMetadata="disk=ssd"))
    fleet.create_unit("pinned.service", unit(MachineID=M2[:8]))
    fleet.create_unit("web@1.service", unit(Conflicts="web@*.service"))
    fleet.create_unit("web@2.service", unit(Conflicts="web@*.service"))
    want = {"ssd.service", "pinned.service", "web@1.service", "web@2.service"}
    targets = cluster.wait_until(lambda: (t := cluster.targets()).keys() == want and t, 5)
    assert targets["ssd.service"] == M1
    assert targets["pinned.service"] == M2
    assert targets["web@1.service"] != targets["web@2.service"]


def test_global_unit_runs_on_every_matching_machine_without_a_target(
    cluster: SimulatedCluster, fleet: RegistryDriver
) -> None:
    fleet.create_unit("agent.service", unit(Global="true", MachineMetadata="role=web"))
    # each machine starts its copy in its own time: wait for both (and no third)
    running = cluster.wait_until(
        lambda: len(r := cluster.running_units().get("agent.service", [])) >= 2 and r, 5
    )
    assert running == [M1, M2]
    assert cluster.targets() == {}


def test_target_loaded_stops_the_unit_and_destroy_removes_its_states(
    cluster: SimulatedCluster, fleet: RegistryDriver, client: Etcd2Client, prefix: str
) -> None:
    fleet.create_unit("db.service", unit(MachineMetadata="role=db"))
    cluster.wait_until(lambda: cluster.running_units() == {"db.service": [M3]}, 5)

    fleet.set_target_state("db.service", "loaded")
    dead = ("loaded", "inactive", "dead")
    cluster.wait_until(lambda: cluster.unit_states().get(("db.service", M3)) == dead, 5)
    cluster.wait_until(lambda: client.get(f"{prefix}job/db.service/job-state") is None, 5)

    fleet.destroy_unit("db.service")
    cluster.wait_until(lambda: cluster.unit_states() == {}, 5)
    assert client.get(f"{prefix}state/db.service") is None


def test_a_unit_that_never_starts_stays_activating(
    etcd_endpoint: str, prefix: str, fleet: RegistryDriver
) -> None:
    behaviours = {"*/bad-image:*": "never_start", "crashy.service": "crash_after=0.3"}
    with make_cluster(etcd_endpoint, prefix, behaviours=behaviours) as cluster:
        fleet.create_unit("bad.service", unit("/usr/bin/rkt run quay.io/acme/bad-image:1"))
        fleet.create_unit("crashy.service", unit())
        fleet.create_unit("good.service", unit())
        cluster.wait_until(lambda: "good.service" in cluster.running_units(), 5)
        failed = ("loaded", "failed", "failed")
        cluster.wait_until(lambda: failed in cluster.unit_states().values(), 5)
        seen = set()
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline:
            for (name, _), state in cluster.unit_states().items():
                if name == "bad.service":
                    seen.add(state)
            time.sleep(0.05)
        assert {s[1] for s in seen} == {"activating"}
        assert "bad.service" not in cluster.running_units()


def test_units_of_a_machine_that_leaves_are_rescheduled_elsewhere(
    cluster: SimulatedCluster, fleet: RegistryDriver, client: Etcd2Client, prefix: str
) -> None:
    fleet.create_unit("web.service", unit(MachineMetadata="role=web"))
    first = cluster.wait_until(lambda: cluster.running_units().get("web.service"), 5)[0]
    cluster.remove_machine(first)
    assert client.get(f"{prefix}machines/{first}/object") is None
    assert all(m != first for _, m in cluster.unit_states())
    other = M2 if first == M1 else M1
    cluster.wait_until(lambda: cluster.running_units().get("web.service") == [other], 5)


def test_a_crashed_machine_is_noticed_when_its_ttl_expires(
    etcd_endpoint: str, prefix: str, fleet: RegistryDriver
) -> None:
    machines = [{"id": M1}, {"id": M2}]
    with make_cluster(etcd_endpoint, prefix, machines=machines, machine_ttl=1) as cluster:
        fleet.create_unit("web.service", unit(MachineID=M2))
        fleet.create_unit("any.service", unit())
        cluster.wait_until(lambda: len(cluster.running_units()) == 2, 5)
        cluster.crash_machine(M2)
        # The pinned unit loses its machine; the free one moves to the survivor.
        cluster.wait_until(lambda: "web.service" not in cluster.targets(), 5)
        cluster.wait_until(lambda: cluster.targets().get("any.service") == M1, 5)


def test_machines_join_at_run_time_and_take_new_work(
    cluster: SimulatedCluster, fleet: RegistryDriver
) -> None:
    new = cluster.add_machine({"role": "gpu"})
    fleet.create_unit("train.service", unit(MachineMetadata="role=gpu"))
    cluster.wait_until(lambda: cluster.running_units().get("train.service") == [new], 5)


def test_stop_is_prompt_and_leaves_no_machines_behind(
    etcd_endpoint: str, prefix: str, client: Etcd2Client
) -> None:
    cluster = make_cluster(etcd_endpoint, prefix, engine_interval=2.0, agent_interval=5.0)
    cluster.start()
    cluster.wait_until(lambda: client.get(f"{prefix}machines/{M3}/object"), 5)
    started = time.monotonic()
    cluster.stop()
    assert time.monotonic() - started < 4.0  # not after an agent's 5 s interval
    machines = client.get(f"{prefix}machines", recursive=True)
    assert machines is not None and not any(n.name == "object" for n in machines.walk())


def test_a_unit_whose_machine_no_longer_fits_is_unscheduled_and_stopped(
    cluster: SimulatedCluster, fleet: RegistryDriver, client: Etcd2Client, prefix: str
) -> None:
    fleet.create_unit("db.service", unit(MachineMetadata="role=db"))
    cluster.wait_until(lambda: cluster.running_units() == {"db.service": [M3]}, 5)
    # dynamic metadata (what PATCH /machines writes) overrides the machine's own
    client.set(f"{prefix}machines/{M3}/metadata/role", "cache")
    cluster.wait_until(lambda: cluster.targets() == {}, 5)
    cluster.wait_until(lambda: cluster.unit_states() == {}, 5)
    client.set(f"{prefix}machines/{M3}/metadata/role", "db")
    cluster.wait_until(lambda: cluster.running_units() == {"db.service": [M3]}, 5)


def test_agents_load_the_stored_unit_text_and_the_cluster_serves_the_api(
    cluster: SimulatedCluster, fleet: RegistryDriver
) -> None:
    options = unit(MachineMetadata="role=db")
    fleet.create_unit("db.service", options)
    cluster.wait_until(lambda: cluster.running_units() == {"db.service": [M3]}, 5)
    assert cluster.agents[M3].unit_files() == {"db.service": serialize(options)}
    server = cluster.serve_api()
    with httpx.Client(base_url=server.url) as http:
        got = http.get("/fleet/v1/units/db.service").json()
    assert (got["machineID"], got["currentState"]) == (M3, "launched")
