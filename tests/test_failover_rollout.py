"""A leader handing over in the middle of a rollout: the standby finishes it safely.

Two ``kaylee server`` processes share a real etcd and the fleet simulator. A replica unit
(and a non-replica one) is mid-rollout when the leader is killed with SIGKILL, or asked
to stop with SIGTERM; the standby must take over and finish both rollouts. A sampler
thread reads fleet's registry every 100 ms throughout, so the assertions cover every
moment of the handover, not just the end state:

- the replica unit never has fewer running replicas than before the rollout;
- the non-replica unit never has two fleet units at once (it is replaced whole);
- at the end: exactly the new units, no duplicate instance (two fleet units for the same
  hash and instance index) and no orphan (a fleet unit of ours matching no spec).
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaylee_sync.fleetsim import SimulatedCluster
from kaylee_sync.render import parse_unit_name
from kaylee_sync.spec import App, UnitSpec, spec_hash6, to_json
from kaylee_sync.store import Store
from tests.polling import wait_for

pytestmark = pytest.mark.slow

WEB = UnitSpec(name="web", replicas=3, apps=(App("docker://web:1"),))
WEB2 = dataclasses.replace(WEB, apps=(App("docker://web:2"),))
DB = UnitSpec(name="db", apps=(App("docker://db:1"),))
DB2 = dataclasses.replace(DB, apps=(App("docker://db:2"),))
# New versions start slowly, so that the rollout is still under way when the leader goes.
BEHAVIOURS = {"docker://web:2": "start_delay=0.8", "docker://db:2": "start_delay=1.5"}


def kaylee() -> str:
    script = Path(sys.executable).parent / "kaylee"
    return str(script) if script.exists() else "kaylee"


@dataclasses.dataclass
class Sample:
    units: frozenset[str]  # every fleet unit of ours
    running: frozenset[str]  # those an agent reports running


class Fleet:
    """Two servers, the simulator and a sampler of fleet's registry."""

    def __init__(
        self, endpoint: str, prefix: str, store: Store, sim: SimulatedCluster, logs: Path
    ) -> None:
        self.endpoint, self.prefix, self.store, self.sim, self.logs = (
            endpoint, prefix, store, sim, logs,
        )  # fmt: skip
        self.servers: list[subprocess.Popen[bytes]] = []
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample_loop, daemon=True)

    def start_server(self) -> subprocess.Popen[bytes]:
        args = [
            kaylee(), "--etcd-endpoints", self.endpoint, "--etcd-prefix", self.prefix,
            "server", "--fleet-prefix", self.prefix + "/fleet/", "--lease-ttl", "3",
            "--stable", "0.5", "--resync", "2", "--listen", "",
        ]  # fmt: skip
        log = self.logs / f"server{len(self.servers)}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        self.servers.append(proc)
        return proc

    def leader(self) -> subprocess.Popen[bytes]:
        """The server process holding ``master`` (its id is host:pid:random)."""
        holder = self.store.leader()
        assert holder is not None, "no leader"
        pid = int(holder.split(":")[1])
        return next(p for p in self.servers if p.pid == pid)

    def snapshot(self) -> Sample:
        running = self.sim.running_units()
        names = [r.job.name for r in self.sim.registry.jobs()]
        ours = frozenset(n for n in names if parse_unit_name(n) is not None)
        return Sample(ours, frozenset(n for n in ours if n in running))

    def _sample_loop(self) -> None:
        while not self._stop.wait(0.1):
            self.samples.append(self.snapshot())

    def start_sampling(self) -> None:
        self._sampler.start()

    def close(self) -> None:
        self._stop.set()
        if self._sampler.is_alive():
            self._sampler.join(5)
        for proc in self.servers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.servers:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log_text(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.logs.glob("server*.log")))


def of(unit: str, names: frozenset[str], hash6: str | None = None) -> set[str]:
    out = set()
    for name in names:
        parsed = parse_unit_name(name)
        if parsed and parsed.unit == unit and (hash6 is None or parsed.hash6 == hash6):
            out.add(name)
    return out


@pytest.fixture
def fleet(etcd_endpoint: str, etcd_prefix: str, store: Store, tmp_path: Path) -> Iterator[Fleet]:
    machines = [{} for _ in range(3)]
    with SimulatedCluster(
        etcd_endpoint, etcd_prefix + "/fleet/", machines=machines, engine_interval=0.1,
        agent_interval=0.1, behaviours=BEHAVIOURS, default_start_delay=0.1,
    ) as sim:  # fmt: skip
        f = Fleet(etcd_endpoint, etcd_prefix, store, sim, tmp_path)
        try:
            yield f
        finally:
            f.close()


def handover_mid_rollout(fleet: Fleet, how: signal.Signals) -> None:
    first = fleet.start_server()
    wait_for(fleet.store.leader, 20, "a leader")
    fleet.start_server()  # the standby
    for spec in (WEB, DB):
        fleet.store.put_unit(spec.name, to_json(spec))
    old_web, old_db = spec_hash6(WEB), spec_hash6(DB)
    wait_for(
        lambda: (
            len(of("web", fleet.snapshot().running, old_web)) == 3
            and len(of("db", fleet.snapshot().running, old_db)) == 1
        ),
        30,
        "the first version to run",
    )
    assert fleet.leader() is first
    fleet.start_sampling()

    for spec in (WEB2, DB2):
        fleet.store.put_unit(spec.name, to_json(spec))
    new_web, new_db = spec_hash6(WEB2), spec_hash6(DB2)
    # Mid-rollout: the first new replica exists, but not every old one has been retired.
    wait_for(lambda: of("web", fleet.snapshot().units, new_web), 20, "the rollout to start")
    gone = fleet.store.leader()
    first.send_signal(how)
    first.wait(timeout=15)
    wait_for(lambda: fleet.store.leader() not in (None, gone), 10, "the standby to lead")
    assert fleet.leader() is not first
    # The standby must not have started from scratch: the rollout was really interrupted.
    mid = fleet.snapshot()
    assert of("web", mid.units, old_web), "the rollout finished before the handover"
    assert not of("db", mid.running, new_db), "db was replaced before the handover"

    def finished() -> bool:
        s = fleet.snapshot()
        return (
            of("web", s.units) == of("web", s.running, new_web)
            and len(of("web", s.units)) == 3
            and of("db", s.units) == of("db", s.running, new_db)
            and len(of("db", s.units)) == 1
        )

    wait_for(finished, 40, "the standby to finish both rollouts")
    # a few more samples: nothing may move once the rollout is done
    seen = len(fleet.samples)
    wait_for(lambda: len(fleet.samples) >= seen + 5, 20, "five more samples")
    end = fleet.snapshot()
    fleet._stop.set()
    fleet._sampler.join(5)

    samples = [*fleet.samples, end]
    assert len(samples) > 30, "the sampler did not watch the handover"
    low = min(len(of("web", s.running)) for s in samples)
    assert low >= 3, f"only {low} web replicas ran at some point"
    most = max(len(of("db", s.units)) for s in samples)
    assert most == 1, f"{most} db fleet units existed at once"
    assert of("web", end.units) == of("web", end.running, new_web) and len(end.units) == 4
    assert of("db", end.units) == of("db", end.running, new_db)
    parsed = [p for n in end.units if (p := parse_unit_name(n)) is not None]
    instances = [(p.unit, p.hash6, p.index) for p in parsed]
    assert len(instances) == len(set(instances)), f"duplicate instances: {sorted(end.units)}"
    assert {(p.unit, p.hash6) for p in parsed} == {("web", new_web), ("db", new_db)}
    assert "Traceback" not in fleet.log_text()


def test_killed_leader_mid_rollout_the_standby_finishes_it_safely(fleet: Fleet) -> None:
    handover_mid_rollout(fleet, signal.SIGKILL)


def test_leader_stopped_mid_rollout_hands_over_and_the_standby_finishes(fleet: Fleet) -> None:
    handover_mid_rollout(fleet, signal.SIGTERM)
