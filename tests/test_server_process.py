"""``kaylee server`` as real processes against a real etcd and the fleet simulator."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

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


def start_server(
    etcd_endpoint: str, etcd_prefix: str, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    args = [
        kaylee(), "--etcd-endpoints", etcd_endpoint, "--etcd-prefix", etcd_prefix,
        "server", "--fleet-prefix", etcd_prefix + "/fleet/", "--lease-ttl", "3",
        "--stable", "0.5", "--resync", "2", "--listen", "127.0.0.1:0",
    ]  # fmt: skip
    with open(log, "ab") as out:
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )


def listener_url(log: Path) -> str | None:
    """The listener's URL from the server's log (it binds port 0: a free port)."""
    found = re.search(r"HTTP listener on (http://\S+)", log.read_text())
    return found.group(1) if found else None


@pytest.fixture
def systemd() -> Iterator[tuple[dict[str, str], socket.socket]]:
    """What systemd gives a Type=notify service with WatchdogSec=1s, and its socket."""
    with tempfile.TemporaryDirectory(prefix="ks-") as directory:
        path = str(Path(directory) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(30)
            yield {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}, sock


def test_server_serves_probes_and_metrics_and_speaks_the_notify_protocol(
    etcd_endpoint: str,
    etcd_prefix: str,
    store: Store,
    cluster: SimulatedCluster,
    tmp_path: Path,
    systemd: tuple[dict[str, str], socket.socket],
) -> None:
    env, sock = systemd
    log = tmp_path / "server.log"
    server = start_server(etcd_endpoint, etcd_prefix, log, env)
    try:
        assert sock.recv(4096).startswith(b"READY=1")
        wait_for(lambda: sock.recv(4096) == b"WATCHDOG=1", timeout=30, what="a watchdog ping")
        url = wait_for(lambda: listener_url(log), timeout=20, what="the listener's URL")
        wait_for(store.leader, timeout=20)
        assert httpx.get(url + "/healthz", timeout=10).text == "ok\n"
        wait_for(lambda: httpx.get(url + "/readyz", timeout=10).status_code == 200, timeout=20)
        families = {
            f.name: f for f in text_string_to_metric_families(httpx.get(url + "/metrics").text)
        }
        assert [s.value for s in families["kaylee_sync_leader"].samples] == [1.0]
        up = {s.labels["loop"]: s.value for s in families["kaylee_sync_loop_up"].samples}
        assert up == {"election": 1, "scheduler": 1, "scheduler-watch": 1, "watchdog": 1}
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=20)
    assert code == 0, log.read_text()
    assert store.leader() is None
    assert "Traceback" not in log.read_text()


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
