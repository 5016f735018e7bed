"""``kaylee-sync`` daemons as real processes: failover after kill -9, SIGTERM, ``--dev``.

What a signal does can only be seen from outside a process: a killed leader leaves its
lease to expire (the standby takes over within the TTL, then syncs), a terminated one
resigns (its ``master`` key is gone at once and the standby takes over without waiting).
The takeover times measured here are printed (run with ``-s -n 0``) and kept as properties.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.fleet.registry import RegistryDriver
from kaylee_sync.settings import EtcdSettings
from kaylee_sync.store import Store
from kaylee_sync.sync.actual import read_actual
from kaylee_sync.sync.status import read_status
from tests.gitrepo import GitRepo, two_units, unit_yaml
from tests.polling import wait_for

T = TypeVar("T")
pytestmark = pytest.mark.slow


def kaylee_sync() -> str:
    script = Path(sys.executable).parent / "kaylee-sync"
    return str(script) if script.exists() else "kaylee-sync"


class Daemons:
    """kaylee-sync processes on one repository, etcd prefix and log directory."""

    def __init__(self, repo: GitRepo, endpoint: str, prefix: str, logs: Path) -> None:
        self.repo, self.endpoint, self.prefix, self.logs = repo, endpoint, prefix, logs
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, *extra: str) -> subprocess.Popen[bytes]:
        args = [
            kaylee_sync(), "--repo", str(self.repo.path), "--path", "units",
            "--no-scheduler", "--listen", "", "--interval", "0.5",
            "--etcd-endpoints", self.endpoint, "--etcd-prefix", self.prefix, *extra,
        ]  # fmt: skip
        with open(self.logs / f"daemon-{len(self.procs)}.log", "wb") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.procs[proc.pid] = proc
        return proc

    def of(self, identity: str) -> subprocess.Popen[bytes]:
        """The process behind a leader id (``host:pid:random``)."""
        return self.procs[int(identity.split(":")[-2])]

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        index = list(self.procs).index(proc.pid)
        return (self.logs / f"daemon-{index}.log").read_text(errors="replace")

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return two_units(tmp_path / "repo")


@pytest.fixture
def daemons(
    repo: GitRepo, etcd_endpoint: str, etcd_prefix: str, tmp_path: Path
) -> Iterator[Daemons]:
    group = Daemons(repo, etcd_endpoint, etcd_prefix, tmp_path)
    yield group
    group.close()


def new_leader(store: Store, old: str) -> str | None:
    holder = store.leader()
    return holder if holder is not None and holder != old else None


def synced(store: Store, commit: str) -> bool:
    inventory = read_actual(store).inventory
    return inventory is not None and inventory.commit == commit


def test_a_killed_leader_is_replaced_within_the_lease_ttl_and_a_new_commit_lands(
    repo: GitRepo, daemons: Daemons, store: Store, record_property: Callable[[str, Any], None]
) -> None:
    first, second = daemons.start("--lease-ttl", "2"), daemons.start("--lease-ttl", "2")
    leader_id = wait_for(store.leader, timeout=15)
    wait_for(lambda: synced(store, repo.head()), timeout=15)
    time.sleep(1.0)  # a few polls for both
    leader = daemons.of(leader_id)
    standby = second if leader is first else first
    status = read_status(store)
    assert status is not None and status.attempt.leader == leader_id
    # Only the leader writes: only it ever synced, the standby only kept its clone warm.
    assert "synced " in daemons.log(leader)
    assert "synced " not in daemons.log(standby)

    leader.kill()  # SIGKILL: no resignation, the lease must run out
    killed = time.monotonic()
    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:2"))
    commit = repo.commit("web 2, pushed while the leader is dead")
    new_id = wait_for(lambda: new_leader(store, leader_id), timeout=10)
    took_over = time.monotonic() - killed
    wait_for(lambda: synced(store, commit), timeout=10)
    landed = time.monotonic() - killed
    record_property("takeover_seconds", took_over)
    record_property("commit_after_kill_seconds", landed)
    print(f"\nkill -9 (TTL 2 s): new leader after {took_over:.2f} s, commit in etcd {landed:.2f} s")

    assert daemons.of(new_id) is standby
    stored = store.get_unit("web")
    assert stored is not None and b"example.com/web:2" in stored.value
    # sync/status is written just after the inventory: give it that moment
    status = wait_for(lambda: read_status(store), timeout=5)
    wait_for(lambda: (read_status(store) or status).attempt.leader == new_id, timeout=5)
    # the lease TTL, plus one sync (the poll interval and the sync itself)
    assert landed < 2 + 0.5 + 1.5

    standby.send_signal(signal.SIGTERM)
    assert standby.wait(10) == 0


def test_sigterm_exits_0_promptly_and_resigns_so_the_standby_takes_over_at_once(
    repo: GitRepo, daemons: Daemons, store: Store, record_property: Callable[[str, Any], None]
) -> None:
    # A 10 s lease: a takeover well under it can only come from the resignation.
    first, second = daemons.start("--lease-ttl", "10"), daemons.start("--lease-ttl", "10")
    leader_id = wait_for(store.leader, timeout=15)
    wait_for(lambda: synced(store, repo.head()), timeout=15)
    leader = daemons.of(leader_id)
    standby = second if leader is first else first

    signalled = time.monotonic()
    leader.send_signal(signal.SIGTERM)
    code = leader.wait(10)
    exited = time.monotonic() - signalled
    holder = store.leader()
    assert code == 0
    assert holder != leader_id  # gone at once, not after the 10 s lease
    new_id = wait_for(lambda: new_leader(store, leader_id), timeout=3)
    took_over = time.monotonic() - signalled
    record_property("sigterm_exit_seconds", exited)
    record_property("sigterm_takeover_seconds", took_over)
    print(f"\nSIGTERM: exited after {exited:.2f} s, standby leads after {took_over:.2f} s")
    assert exited < 3 and took_over < 3
    assert daemons.of(new_id) is standby

    log = daemons.log(leader)
    assert "received SIGTERM" in log and "resigned" in log
    assert "Traceback" not in log and " ERROR " not in log and "WARNING" not in log

    repo.write("units/api.yaml", unit_yaml("api", "example.com/api:2"))
    commit = repo.commit("api 2")
    wait_for(lambda: synced(store, commit), timeout=5)


def banner_endpoint(log: Path) -> str | None:
    match = re.search(r"^\s+etcd\s+(http://127\.0\.0\.1:\d+)", log.read_text(), re.M)
    return match.group(1) if match else None


def test_dev_mode_syncs_into_its_own_etcd_and_the_simulated_fleet_runs_it(
    repo: GitRepo, tmp_path: Path
) -> None:
    stderr = tmp_path / "dev.err"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("ETCDCTL_ENDPOINT", None)
    args = [
        kaylee_sync(), "--dev", "--repo", str(repo.path), "--path", "units",
        "--listen", "127.0.0.1:0", "--stable", "0.5",
    ]  # fmt: skip
    with open(stderr, "wb") as err, open(tmp_path / "dev.out", "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=err, env=env)
    try:
        endpoint = wait_for(lambda: banner_endpoint(stderr), timeout=30)
        assert (tmp_path / "cache" / "kaylee-sync" / "dev" / "etcd").is_dir()
        with (
            Store(EtcdSettings(endpoints=(endpoint,), timeout=2.0)) as store,
            Etcd2Client(endpoint) as client,
        ):
            wait_for(lambda: sorted(store.unit_names()) == ["api", "web"], timeout=20)
            fleet = RegistryDriver(client, "/_coreos.com/fleet/")

            def running_units() -> list[str]:
                _, states = fleet.snapshot()
                return [s.name for s in states if s.sub_state == "running"]

            names = wait_for(lambda: running_units() if len(running_units()) == 4 else None, 30)
        assert all(re.match(r"k2:(web|api):[0-9a-f]{6}:", n) for n in names)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    text = stderr.read_text()
    assert code == 0, text[-3000:]
    assert "SIMULATED" in text
    assert "Traceback" not in text
    assert "HTTP Request:" not in text  # httpx's per-request INFO lines are silenced
    # the banner names the listener the daemon really bound, not port 0
    assert "127.0.0.1:0/" not in text
