"""Health-gated rollouts end to end: the scheduler with its prober, a real etcd and the
fleet simulator serving each instance's health, through both fleet drivers.

The issue's "done when": a unit of 4 replicas with ``canary: 1``, ``autoRevert: true``
and an HTTP check; a bad image gets exactly one canary, which fails its check and is
destroyed while the 4 old instances never stop, and the status says "reverted"; a good
image gets its canary promoted and all 4 replaced, ``maxParallel`` respected and never
fewer than 4 healthy.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kaylee_sync.fleet.api import ApiDriver
from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.fleet.registry import RegistryDriver
from kaylee_sync.fleetsim import FleetApiServer, SimulatedCluster
from kaylee_sync.health import Phase, decode_report
from kaylee_sync.probe import Prober
from kaylee_sync.render import parse_unit_name
from kaylee_sync.scheduler.runner import Scheduler, SchedulerSettings
from kaylee_sync.spec import (
    App,
    HealthPolicy,
    HttpCheck,
    RolloutPolicy,
    UnitPolicy,
    UnitSpec,
    policy_to_json,
    spec_hash6,
    to_json,
)
from kaylee_sync.store import Store, keys

FAST = SchedulerSettings(
    stable=0.5,
    rollout_timeout=30.0,
    destroy_timeout=3.0,
    active_interval=0.1,
    resync=1.0,
    settle=0.5,
)
OLD = UnitSpec(name="web", replicas=4, max_replicas_per_host=2, apps=(App("docker://web:1"),))
GOOD = dataclasses.replace(OLD, apps=(App("docker://web:2"),))
BAD = dataclasses.replace(OLD, apps=(App("docker://web:bad"),))
HEALTHY_DEADLINE = 4.0
CHECK_INTERVAL = 0.3


def policy(port: int, **rollout: Any) -> UnitPolicy:
    settings: dict[str, Any] = {
        "canary": 1,
        "auto_promote": True,
        "auto_revert": True,
        "max_parallel": 2,
        "min_healthy_time": 0.6,
        "healthy_deadline": HEALTHY_DEADLINE,
    }
    settings.update(rollout)
    url = f"http://${{MACHINE_IP}}:{port}/health/${{KAYLEE_ID}}"
    return UnitPolicy(
        RolloutPolicy(**settings),
        HealthPolicy(http=HttpCheck(url, interval=CHECK_INTERVAL, timeout=0.25, failures=2)),
    )


class Rollouts:
    def __init__(self, store: Store, fleet: Any, cluster: SimulatedCluster) -> None:
        self.store, self.fleet, self.cluster = store, fleet, cluster
        self.leading = True
        self.prober = Prober().start()
        self.scheduler = Scheduler(
            store, fleet, FAST, prober=self.prober, is_leader=lambda: self.leading
        )
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.scheduler.run, args=(self.stop,), daemon=True)
        self.samples: list[dict[str, Any]] = []
        assert cluster.health is not None
        self.port = cluster.health.port

    def put(self, spec: UnitSpec, unit_policy: UnitPolicy) -> None:
        self.store.put(keys.policy_key(spec.name), policy_to_json(unit_policy))
        self.store.put_unit(spec.name, to_json(spec))
        if not self.thread.is_alive():
            self.thread.start()
        self.scheduler.trigger()

    def report(self) -> Any:
        stored = self.store.get(keys.rollout_key("web"))
        return None if stored is None else decode_report(stored.value, stored.key)

    def sample(self) -> dict[str, Any]:
        """Per hash: fleet units, launched ones, healthy ones (by the simulator's word)."""
        out: dict[str, Any] = {"units": {}, "launched": {}, "healthy": 0}
        for unit in self.fleet.units():
            parsed = parse_unit_name(unit.name)
            if parsed is None or parsed.unit != "web":
                continue
            h = parsed.hash6
            out["units"][h] = out["units"].get(h, 0) + 1
            if unit.desired_state == "launched":
                out["launched"][h] = out["launched"].get(h, 0) + 1
        for agent in list(self.cluster.agents.values()):
            for name in agent.units():
                if parse_unit_name(name) is not None and agent.health_of(
                    name.replace(":", "_").removesuffix(".service")
                ):
                    out["healthy"] += 1
        self.samples.append(out)
        return out

    def wait(self, predicate: Any, timeout: float, what: str) -> Any:
        def check() -> Any:
            self.sample()
            return predicate()

        try:
            return self.cluster.wait_until(check, timeout=timeout, interval=0.05)
        except TimeoutError:
            raise AssertionError(f"{what}; last: {self.samples[-1]}, {self.report()}") from None

    def steady(self, spec: UnitSpec) -> None:
        h = spec_hash6(spec)
        self.wait(
            lambda: (
                (r := self.report()) is not None
                and r.phase is Phase.STEADY
                and r.hash6 == h
                and self.samples[-1]["units"] == {h: 4}
            ),
            60,
            f"{h} steady",
        )

    def fail_over(self) -> None:
        """The leader dies (it stops acting at once); a standby with its own prober and
        no memory of the rollout takes over, knowing only what is in etcd and fleet."""
        self.leading = False
        self.close()
        self.leading = True
        self.prober = Prober().start()
        self.scheduler = Scheduler(self.store, self.fleet, FAST, prober=self.prober)
        self.scheduler.became_leader()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.scheduler.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.scheduler.trigger()
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        self.prober.stop()


@pytest.fixture(params=["etcd", "api"])
def rollouts(
    request: pytest.FixtureRequest, etcd_endpoint: str, prefix: str, store: Store, tmp_path: Path
) -> Iterator[Rollouts]:
    with SimulatedCluster(
        etcd_endpoint,
        prefix,
        machines=[{}, {}, {}],
        engine_interval=0.1,
        agent_interval=0.1,
        behaviours={"*web:bad*": "unhealthy"},
        default_start_delay=0.2,
        serve_health=True,
    ) as cluster:
        server = None
        if request.param == "etcd":
            fleet: Any = RegistryDriver(Etcd2Client(etcd_endpoint), prefix)
        else:
            server = FleetApiServer(etcd_endpoint, prefix, f"unix://{tmp_path}/fleet.sock").start()
            fleet = ApiDriver(f"unix://{tmp_path}/fleet.sock")
        r = Rollouts(store, fleet, cluster)
        try:
            yield r
        finally:
            r.close()
            (fleet.client if isinstance(fleet, RegistryDriver) else fleet).close()
            if server is not None:
                server.stop()


def test_a_bad_canary_is_reverted_and_the_old_instances_never_stop(rollouts: Rollouts) -> None:
    rollouts.put(OLD, policy(rollouts.port))
    rollouts.steady(OLD)
    old, bad = spec_hash6(OLD), spec_hash6(BAD)
    rollouts.samples.clear()
    rollouts.put(BAD, policy(rollouts.port))
    report = rollouts.wait(
        lambda: (r := rollouts.report()) is not None and r.phase is Phase.REVERTED and r,
        30,
        "reverted",
    )
    assert report.failed_hash == bad and "failed health" in report.message
    rollouts.wait(lambda: bad not in rollouts.sample()["units"], 10, "the canary destroyed")
    # exactly one canary was ever started, and the 4 old instances stayed launched
    assert max(s["units"].get(bad, 0) for s in rollouts.samples) == 1
    assert all(s["launched"].get(old) == 4 for s in rollouts.samples)
    assert all(s["healthy"] >= 4 for s in rollouts.samples)


def test_a_good_canary_is_promoted_and_all_replaced(rollouts: Rollouts) -> None:
    rollouts.put(OLD, policy(rollouts.port))
    rollouts.steady(OLD)
    good = spec_hash6(GOOD)
    rollouts.samples.clear()
    rollouts.put(GOOD, policy(rollouts.port))
    rollouts.steady(GOOD)
    assert min(s["healthy"] for s in rollouts.samples) >= 4
    # maxParallel 2: never more than 4 + 2 instances launched at once
    assert max(sum(s["launched"].values()) for s in rollouts.samples) <= 6
    report = rollouts.report()
    assert report is not None and report.stable_spec == to_json(GOOD) and report.healthy == 4
    assert rollouts.samples[-1]["units"] == {good: 4}


def test_a_policy_change_restarts_nothing(rollouts: Rollouts) -> None:
    rollouts.put(OLD, policy(rollouts.port))
    rollouts.steady(OLD)
    before = {u.name for u in rollouts.fleet.units()}
    rollouts.put(OLD, policy(rollouts.port, canary=2, max_parallel=1))
    for _ in range(20):
        rollouts.scheduler.run_pass()
    assert {u.name for u in rollouts.fleet.units()} == before


@pytest.mark.parametrize("image", ["bad", "good"])
def test_a_new_leader_finishes_or_reverts_a_canary_it_did_not_start(
    rollouts: Rollouts, image: str
) -> None:
    spec = BAD if image == "bad" else GOOD
    rollouts.put(OLD, policy(rollouts.port))
    rollouts.steady(OLD)
    old, new = spec_hash6(OLD), spec_hash6(spec)
    rollouts.samples.clear()
    rollouts.put(spec, policy(rollouts.port))
    rollouts.wait(
        lambda: (r := rollouts.report()) is not None and r.phase is Phase.CANARY and r.hash6 == new,
        20,
        "the canary under way",
    )
    rollouts.wait(lambda: rollouts.samples[-1]["units"].get(new) == 1, 20, "the canary created")
    rollouts.fail_over()
    if image == "bad":
        report = rollouts.wait(
            lambda: (r := rollouts.report()) is not None and r.phase is Phase.REVERTED and r,
            30,
            "reverted by the new leader",
        )
        assert report.failed_hash == new
        rollouts.wait(lambda: new not in rollouts.sample()["units"], 10, "the canary destroyed")
        assert all(s["launched"].get(old) == 4 for s in rollouts.samples)
    else:
        rollouts.steady(GOOD)
        assert rollouts.samples[-1]["units"] == {new: 4}
    # the canary was never started twice, whoever led
    assert max(s["units"].get(new, 0) for s in rollouts.samples) <= (1 if image == "bad" else 6)
    assert min(s["healthy"] for s in rollouts.samples) >= 4
