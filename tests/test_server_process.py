"""``kaylee server`` as real processes against a real etcd and the fleet simulator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaylee_sync.fleetsim import SimulatedCluster
from kaylee_sync.store import Store
from tests.polling import wait_for

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample-repo" / "countly.yaml"


def kaylee() -> str:
    script = Path(sys.executable).parent / "kaylee"
    return str(script) if script.exists() else "kaylee"


@pytest.fixture
def cluster(etcd_endpoint: str, etcd_prefix: str) -> Iterator[SimulatedCluster]:
    machines = [{"metadata": {"ssd": "false"}} for _ in range(3)]
    with SimulatedCluster(
        etcd_endpoint, etcd_prefix + "/fleet/", machines=machines,
        engine_interval=0.1, agent_interval=0.1,
    ) as sim:  # fmt: skip
        yield sim


def start_server(etcd_endpoint: str, etcd_prefix: str, log: Path) -> subprocess.Popen[bytes]:
    args = [
        kaylee(), "--etcd-endpoints", etcd_endpoint, "--etcd-prefix", etcd_prefix,
        "server", "--fleet-prefix", etcd_prefix + "/fleet/", "--lease-ttl", "3",
        "--stable", "0.5", "--resync", "2",
    ]  # fmt: skip
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


def test_server_schedules_ls_shows_it_and_sigterm_resigns(
    etcd_endpoint: str, etcd_prefix: str, store: Store, cluster: SimulatedCluster, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    server = start_server(etcd_endpoint, etcd_prefix, log)
    try:
        wait_for(store.leader, timeout=20)
        env = {**os.environ, "ETCDCTL_ENDPOINT": etcd_endpoint}
        base = [kaylee(), "--etcd-prefix", etcd_prefix]
        done = subprocess.run([*base, "run", str(SAMPLE)], env=env, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr

        def all_running() -> bool:
            running = cluster.running_units()
            return sum(1 for n in running if n.startswith("k2:countly:160702:")) == 4

        wait_for(all_running, timeout=40)
        ls = subprocess.run(
            [*base, "ls", "--format", "json", "--fleet-prefix", etcd_prefix + "/fleet/"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        listing = json.loads(ls.stdout)
        countly = listing["units"][0]
        assert listing["leader"] == store.leader()
        assert len(countly["fleet_units"]) == 4
        assert {u["state"] for u in countly["fleet_units"]} == {"running"}
        assert all(len(u["machine"]) == 32 for u in countly["fleet_units"])
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=20)
    assert code == 0, log.read_text()
    assert store.leader() is None  # resigned: the lease was revoked at once
    assert "Traceback" not in log.read_text()
