"""``kaylee-sync sync [--wait]``: a sync asked for through etcd, and the rollouts it causes.

A real daemon (election, a file:// remote polled only once an hour, the scheduler over
the fleet simulator) runs on a thread; the command runs as an operator would run it on
another node, knowing only etcd.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from kaylee_sync.cli.sync import cli
from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.fleet.registry import RegistryDriver
from kaylee_sync.fleetsim import SimulatedCluster
from kaylee_sync.source import GitSource, SourceSettings
from kaylee_sync.spec import parse_stored, spec_hash6
from kaylee_sync.store import Store, keys
from tests.gitrepo import GitRepo, two_units, unit_yaml
from tests.gitrepo import unit_json as spec
from tests.polling import wait_for
from tests.test_cli_kaylee import FAST
from tests.test_gitops_daemon import first_sync, image_of, running


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return two_units(tmp_path / "repo")


@pytest.fixture
def remote(repo: GitRepo, tmp_path: Path) -> Iterator[GitSource]:
    settings = SourceSettings(repo=f"file://{repo.path}", path="units", cache_dir=tmp_path / "c")
    with GitSource(settings) as source:
        yield source


def sync_command(etcd_args: list[str], *args: str) -> list[str]:
    return ["sync", *etcd_args, *args]


def test_sync_asks_the_leader_to_sync_now_instead_of_at_the_next_poll(
    repo: GitRepo, remote: GitSource, store: Store, etcd_args: list[str]
) -> None:
    with running(remote, store, interval=3600.0) as daemon:
        first_sync(daemon)
        repo.write("units/web.yaml", unit_yaml("web", "example.com/web:2"))
        repo.commit("web 2")
        result = CliRunner().invoke(cli, sync_command(etcd_args))
        assert result.exit_code == 0, result.output
        assert "sync requested" in result.output
        want = spec("web", "example.com/web:2")
        wait_for(lambda: image_of(store, "web") == want, 15, "the requested sync")
        acknowledged = store.get(keys.SYNC_REQUEST)
        assert acknowledged is not None and b"seen_at" in acknowledged.value


def test_sync_wait_follows_the_rollouts_the_sync_causes(
    repo: GitRepo, remote: GitSource, store: Store, etcd_args: list[str], etcd_endpoint: str,
    etcd_prefix: str,
) -> None:  # fmt: skip
    fleet_prefix = etcd_prefix + "/fleet/"
    with SimulatedCluster(
        etcd_endpoint, fleet_prefix, machines=[{}, {}], engine_interval=0.1,
        agent_interval=0.1, default_start_delay=0.1,
    ):  # fmt: skip
        fleet = RegistryDriver(Etcd2Client(etcd_endpoint), fleet_prefix)
        with running(remote, store, fleet, interval=3600.0, scheduler=FAST) as daemon:
            first_sync(daemon)
            repo.write("units/web.yaml", unit_yaml("web", "example.com/web:2", replicas=2))
            repo.commit("web 2")
            result = CliRunner().invoke(
                cli,
                sync_command(
                    etcd_args, "--wait", "--timeout", "60", "--fleet-prefix", fleet_prefix
                ),
            )
            assert result.exit_code == 0, result.output
            assert "synced " in result.output and "1 update" in result.output
            assert "web" in result.output
            assert image_of(store, "web") == spec("web", "example.com/web:2")
            # what --wait promised: the new version runs, every replica, the old ones gone
            new = spec_hash6(parse_stored(spec("web", "example.com/web:2"), "units/web"))
            names = [u.name for u in fleet.units() if ":web:" in u.name]
            assert len(names) == 2 and all(f":web:{new}:" in n for n in names), names
        fleet.client.close()


def test_sync_wait_without_a_leader_fails_with_one_line(store: Store, etcd_args: list[str]) -> None:
    result = CliRunner().invoke(cli, sync_command(etcd_args, "--wait", "--timeout", "1"))
    assert result.exit_code == 1
    assert "no kaylee-sync daemon leads" in result.output
    assert "Traceback" not in result.output
