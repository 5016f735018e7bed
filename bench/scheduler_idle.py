"""Benchmark: one scheduler pass over 10,000 fleet units when there is nothing to do.

The scheduler is level-triggered: it re-reads every spec and every fleet unit on each
pass (on every change, every second while something moves, and every ``--resync``), so
the cost of a pass with nothing to do is the floor of what it costs to run. The target
is a pass under 1 s for 10,000 fleet units (2,500 specs × 4 replicas).

Setup writes the specs to etcd v3 and fleet's registry keys to etcd v2 directly — the
keys fleetctl and the agents would have written (unit text, job object, target-state,
target machine, and a ``running`` state per unit) — in parallel, so that setup takes
seconds rather than the minutes the rate-limited driver would. The first pass (a new
leader's: it writes every unit's rollout report and loads every unit text) is reported
separately, for context. Every pass must decide "steady, nothing to do" for every unit,
or the benchmark stops: a pass that acts is not an idle pass.

Drivers: ``etcd`` (fleet's registry, the default) and ``api`` (fleetd's HTTP API, here
served in-process by the simulator, so its CPU time includes the simulated fleetd's).

    python -m bench.scheduler_idle [--specs 2500] [--replicas 4] [--driver etcd|api|both]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from concurrent.futures import ThreadPoolExecutor

from bench.common import Measurement, bench_main, private_etcd, progress, timed
from kaylee_sync.fleet.api import ApiDriver
from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.fleet.protocol import FleetClient
from kaylee_sync.fleet.registry import RegistryDriver, job_object_json, unit_object_json
from kaylee_sync.fleetsim import FleetApiServer
from kaylee_sync.fleetsim.registry import unit_state
from kaylee_sync.render import render_units
from kaylee_sync.scheduler.runner import Scheduler, SchedulerSettings
from kaylee_sync.settings import EtcdSettings
from kaylee_sync.spec import App, UnitSpec, to_json
from kaylee_sync.store import Op, Store, keys

FLEET_PREFIX = "/_coreos.com/fleet/"
MACHINES = [f"{i:032x}" for i in range(1, 21)]
TARGET = 1.0  # seconds per idle pass, for 10,000 fleet units
WRITERS = 16  # parallel v2 writers while setting up


def make_specs(count: int, replicas: int) -> list[UnitSpec]:
    return [
        UnitSpec(
            name=f"svc{i:05d}",
            replicas=replicas,
            apps=(App(f"docker://registry.example.com/team/svc{i}:1.0"),),
            args=("--net=host",),
        )
        for i in range(count)
    ]


def fleet_keys(specs: list[UnitSpec]) -> dict[str, str]:
    """fleet's registry keys (relative to its prefix) for every spec, all running."""
    out: dict[str, str] = {}
    n = 0
    for spec in specs:
        for unit in render_units(spec):
            machine = MACHINES[n % len(MACHINES)]
            n += 1
            out[f"unit/{unit.hash}"] = unit_object_json(unit.text)
            out[f"job/{unit.name}/object"] = job_object_json(unit.name, unit.hash)
            out[f"job/{unit.name}/target-state"] = "launched"
            out[f"job/{unit.name}/target"] = machine
            out[f"states/{unit.name}/{machine}"] = unit_state(
                "loaded", "active", "running", machine, unit.hash
            )
    return out


def populate(endpoint: str, store: Store, specs: list[UnitSpec]) -> int:
    """Write the specs (v3, batched) and fleet's keys (v2, in parallel); fleet units made."""
    store.apply_batched([Op.put(keys.unit_key(s.name), to_json(s)) for s in specs], None)
    fleet = fleet_keys(specs)
    with Etcd2Client(endpoint, timeout=30) as client:

        def write(item: tuple[str, str]) -> None:
            client.set(FLEET_PREFIX + item[0], item[1])

        with ThreadPoolExecutor(WRITERS) as pool:
            list(pool.map(write, fleet.items(), chunksize=64))
    return sum(1 for k in fleet if k.endswith("/object"))


def check_idle(scheduler: Scheduler, expected_units: int) -> int:
    """One pass; raises if it was not an idle pass over every unit."""
    decisions = scheduler.run_pass()
    busy = [d for d in decisions if d.actions or d.phase != "steady"]
    if busy or len(decisions) != expected_units:
        first = busy[0] if busy else None
        raise SystemExit(
            f"not an idle pass: {len(decisions)} units decided, {len(busy)} not steady "
            f"(first: {first})"
        )
    return len(decisions)


def measure(
    name: str, store: Store, fleet: FleetClient, specs: int, units: int, args: argparse.Namespace
) -> list[Measurement]:
    scheduler = Scheduler(store, fleet, SchedulerSettings())
    progress(f"{name}: first pass (writes every rollout report)")
    _, first = timed(lambda: check_idle(scheduler, specs))
    walls, cpus = [], []
    for i in range(args.runs):
        _, t = timed(lambda: check_idle(scheduler, specs))
        progress(f"{name}: idle pass {i + 1}/{args.runs}: {t.wall:.3f} s (cpu {t.cpu:.3f} s)")
        walls.append(t.wall)
        cpus.append(t.cpu)
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(check_idle, scheduler, specs)
        pstats.Stats(profile, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
    size = {"specs": specs, "fleet_units": units}
    return [
        Measurement(f"scheduler idle pass ({name})", tuple(walls), target=TARGET,
                    extra={**size, "cpu_median": sorted(cpus)[len(cpus) // 2]}),
        Measurement(f"scheduler first pass as leader ({name})", (first.wall,),
                    extra={"cpu": first.cpu}),
    ]  # fmt: skip


def run(args: argparse.Namespace) -> list[Measurement]:
    specs = make_specs(args.specs, args.replicas)
    # No fsync: setup writes ~50,000 keys; an idle pass writes nothing, so the numbers
    # are unchanged, and only the first pass (which writes reports) gets a little faster.
    with private_etcd("--unsafe-no-fsync") as etcd:
        settings = EtcdSettings(endpoints=(etcd.endpoint,), prefix="/kaylee2", timeout=30)
        with Store(settings) as store:
            progress(f"setup: {len(specs)} specs × {args.replicas} replicas")
            _, setup = timed(lambda: populate(etcd.endpoint, store, specs))
            units = len(specs) * args.replicas
            progress(f"setup: {units} fleet units written in {setup.wall:.1f} s")
            results: list[Measurement] = []
            if args.driver in ("etcd", "both"):
                client = Etcd2Client(etcd.endpoint, timeout=30)
                try:
                    driver = RegistryDriver(client, FLEET_PREFIX)
                    results += measure("etcd driver", store, driver, len(specs), units, args)
                finally:
                    client.close()
            if args.driver in ("api", "both"):
                server = FleetApiServer(etcd.endpoint, FLEET_PREFIX).start()
                api = ApiDriver(server.url, timeout=60)
                try:
                    results += measure("api driver", store, api, len(specs), units, args)
                finally:
                    api.close()
                    server.stop()
    return results


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--specs", type=int, default=2500, help="unit specs (default 2500)")
    p.add_argument("--replicas", type=int, default=4, help="replicas per spec (default 4)")
    p.add_argument("--driver", choices=["etcd", "api", "both"], default="both")
    p.add_argument("--profile", action="store_true", help="cProfile one more pass (stderr)")


def main(argv: list[str] | None = None) -> int:
    return bench_main((__doc__ or "").splitlines()[0], run, configure, argv)


if __name__ == "__main__":
    raise SystemExit(main())
