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
import contextlib
import cProfile
import pstats
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from bench.common import Measurement, bench_main, private_etcd, progress, timed
from kaylee_sync.embedded_etcd import EmbeddedEtcd
from kaylee_sync.fleet.api import ApiDriver
from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.fleet.protocol import FleetClient
from kaylee_sync.fleet.registry import RegistryDriver, job_object_json, unit_object_json
from kaylee_sync.fleetsim.registry import unit_state
from kaylee_sync.render import render_units
from kaylee_sync.scheduler.runner import Scheduler, SchedulerSettings
from kaylee_sync.settings import EtcdSettings
from kaylee_sync.spec import App, UnitSpec, to_json
from kaylee_sync.store import Op, Store, keys

FLEET_PREFIX = "/_coreos.com/fleet/"
MACHINES = [f"{i:032x}" for i in range(1, 21)]
TARGET = 1.0  # seconds per idle pass...
TARGET_UNITS = 10_000  # ...over this many fleet units (smaller runs are for context)
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
        Measurement(f"scheduler idle pass ({name}, {units:,} units)", tuple(walls),
                    target=TARGET if units >= TARGET_UNITS else None,
                    extra={**size, "cpu_median": sorted(cpus)[len(cpus) // 2]}),
        Measurement(f"scheduler first pass as leader ({name}, {units:,} units)", (first.wall,),
                    extra={"cpu": first.cpu}),
    ]  # fmt: skip


def run(args: argparse.Namespace) -> list[Measurement]:
    results: list[Measurement] = []
    if args.driver in ("etcd", "both"):
        with populated(args.specs, args.replicas) as (etcd, store, units):
            client = Etcd2Client(etcd.endpoint, timeout=30)
            try:
                driver = RegistryDriver(client, FLEET_PREFIX)
                results += measure("etcd driver", store, driver, args.specs, units, args)
            finally:
                client.close()
    if args.driver in ("api", "both"):
        with (
            populated(args.api_specs, args.replicas) as (etcd, store, units),
            simulated_fleetd(etcd.endpoint) as url,
            ApiDriver(url, timeout=120) as api,
        ):
            results += measure("api driver", store, api, args.api_specs, units, args)
    return results


@contextlib.contextmanager
def populated(specs: int, replicas: int) -> Iterator[tuple[EmbeddedEtcd, Store, int]]:
    """A private etcd holding ``specs`` specs and their running fleet units."""
    made = make_specs(specs, replicas)
    # No fsync: setup writes five keys per fleet unit; an idle pass writes nothing, so
    # its numbers are unchanged (only the first pass, which writes reports, gains).
    with private_etcd("--unsafe-no-fsync") as etcd:
        settings = EtcdSettings(endpoints=(etcd.endpoint,), prefix="/kaylee2", timeout=30)
        with Store(settings) as store:
            progress(f"setup: {specs} specs × {replicas} replicas")
            units, setup = timed(lambda: populate(etcd.endpoint, store, made))
            progress(f"setup: {units} fleet units written in {setup.wall:.1f} s")
            yield etcd, store, units


# The simulator's fleetd API runs in a child process, so that the CPU time measured is
# kaylee-sync's alone (in-process, both would share the interpreter and its lock).
_SERVE_API = """
import sys
from kaylee_sync.fleetsim import FleetApiServer
server = FleetApiServer(sys.argv[1], sys.argv[2]).start()
print(server.url, flush=True)
sys.stdin.read()
server.stop()
"""


@contextlib.contextmanager
def simulated_fleetd(endpoint: str) -> Iterator[str]:
    args = [sys.executable, "-c", _SERVE_API, endpoint, FLEET_PREFIX]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        url = proc.stdout.readline().strip()
        if not url:
            raise SystemExit("the simulated fleet API did not start")
        yield url
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--specs", type=int, default=2500, help="unit specs (default 2500)")
    p.add_argument("--replicas", type=int, default=4, help="replicas per spec (default 4)")
    p.add_argument(
        "--api-specs",
        type=int,
        default=250,
        help="unit specs for the api driver (default 250: the simulated fleetd re-reads "
        "every unit for each page of 100, so 10,000 units take minutes per pass)",
    )
    p.add_argument("--driver", choices=["etcd", "api", "both"], default="both")
    p.add_argument("--profile", action="store_true", help="cProfile one more pass (stderr)")


def main(argv: list[str] | None = None) -> int:
    doc = (__doc__ or "").splitlines()[0]
    return bench_main(doc, run, configure, argv, prog="python -m bench.scheduler_idle")


if __name__ == "__main__":
    raise SystemExit(main())
