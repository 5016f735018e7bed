"""Benchmark: submitting 1,000 fleet units, launched, through each fleet driver.

What ``fleetctl start`` of 1,000 units does, on an empty fleet registry. The units are
the rendered fleet units of the generated unit files (``bench/fixtures``: replicated
services, global agents, single databases), so their texts are realistic.

- **etcd driver** (target < 1.8 s, half of the real ``fleetctl --driver=etcd``'s 3.6 s):
  ``RegistryDriver.create_units`` over ``Etcd2Client`` writes fleet's registry keys in a
  private etcd (v2 API), a few units in flight at once. Each new unit costs three writes
  and no read: the unit body, the job object (prevExist=false), the target state.
- **etcd driver, one at a time** (no target): ``create_unit`` after ``create_unit``, the
  way the scheduler submits the units of one pass.
- **api driver** (no target): ``ApiDriver`` against the simulator's ``FleetApiServer``,
  which runs in a child process as fleetd would. One read and one PUT per unit.

Both drivers share a write-rate limit (``kaylee_sync/fleet/throttle.py``: 200 writes/s,
burst 100 by default) that protects fleetd's agents, which all wake on every write. With
the defaults the limit, not the driver, sets the time: 3,000 writes take 14.5 s at
least for the etcd driver, 1,000 take 4.5 s for the api driver. The drivers are therefore
measured with the limit lifted (``--runs``), which is the driver's own cost, and once
with the default limit (``--throttled-runs``, default 1: the time is the limit's).

    python -m bench.fleet_submit [--units 1000] [--runs 5] [--throttled-runs 1]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from bench.common import Measurement, bench_main, private_etcd, progress, timed
from bench.fixtures import unit_relpath, unit_yaml
from bench.scheduler_idle import FLEET_PREFIX, simulated_fleetd
from kaylee_sync.fleet.api import ApiDriver
from kaylee_sync.fleet.batch import DEFAULT_WORKERS
from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.fleet.protocol import FleetClient
from kaylee_sync.fleet.registry import RegistryDriver
from kaylee_sync.fleet.throttle import Throttle, ThrottleSettings
from kaylee_sync.render import FleetUnit, render_units
from kaylee_sync.spec.loader import load_unit

TARGET = 1.8  # seconds for 1,000 units through the etcd driver: half of fleetctl's 3.6 s
TARGET_UNITS = 1000
DEFAULT = ThrottleSettings()


def fleet_units(count: int) -> list[FleetUnit]:
    """The first ``count`` fleet units of the generated unit files, rendered."""
    units: list[FleetUnit] = []
    i = 0
    while len(units) < count:
        spec = load_unit(unit_yaml(i).encode(), unit_relpath(i))
        units += render_units(spec)
        i += 1
    return units[:count]


def unlimited() -> Throttle:
    return Throttle(ThrottleSettings(write_rate=1e9, write_burst=10**9))


def submit(driver: FleetClient, units: list[FleetUnit]) -> None:
    """One unit after another, as the scheduler does."""
    for unit in units:
        driver.create_unit(unit.name, unit.options, "launched")


def submit_batch(driver: FleetClient, units: list[FleetUnit]) -> None:
    """All units at once, as ``fleetctl start`` does (the etcd driver's create_units)."""
    assert isinstance(driver, RegistryDriver)
    failed = driver.create_units([(u.name, u.options) for u in units], "launched")
    if failed:
        raise SystemExit(f"{len(failed)} units failed, first: {next(iter(failed.values()))}")


def check(registry: Etcd2Client, units: list[FleetUnit]) -> None:
    """Every unit is in fleet's registry with target state launched; then empty it."""
    jobs = registry.get(FLEET_PREFIX + "job", recursive=True)
    launched = sum(
        1
        for job in (jobs.nodes if jobs else [])
        for part in job.nodes
        if part.name == "target-state" and part.value == "launched"
    )
    if launched != len(units):
        raise SystemExit(f"expected {len(units)} launched units in fleet, found {launched}")
    registry.delete(FLEET_PREFIX.rstrip("/"), recursive=True)


def measure(
    label: str,
    make: Callable[[Throttle], FleetClient],
    throttle: Callable[[], Throttle],
    runs: int,
    registry: Etcd2Client,
    units: list[FleetUnit],
    how: Callable[[FleetClient, list[FleetUnit]], None] = submit,
) -> list[float]:
    walls = []
    for i in range(runs):
        driver = make(throttle())  # a new driver: no cache of unit texts from a run before
        _, t = timed(lambda: how(driver, units))  # noqa: B023
        close = getattr(driver, "close", None)
        if close is not None:
            close()
        check(registry, units)
        progress(f"{label} {i + 1}/{runs}: {t.wall:.2f} s (cpu {t.cpu:.2f} s)")
        walls.append(t.wall)
    return walls


def run(args: argparse.Namespace) -> list[Measurement]:
    units = fleet_units(args.units)
    n = len(units)
    limit = f"{DEFAULT.write_rate:g} writes/s, burst {DEFAULT.write_burst}"
    with private_etcd() as etcd, Etcd2Client(etcd.endpoint, timeout=30) as registry:

        def both(
            name: str,
            make: Callable[[Throttle], FleetClient],
            how: Callable[[FleetClient, list[FleetUnit]], None] = submit,
        ) -> list[list[float]]:
            """Runs with the limit lifted, then with the default limit."""
            return [
                measure(f"{name}, {limited}", make, throttle, runs, registry, units, how)
                for limited, throttle, runs in (
                    ("no limit", unlimited, args.runs),
                    ("default limit", Throttle, args.throttled_runs),
                )
            ]

        def etcd_driver(throttle: Throttle) -> FleetClient:
            return RegistryDriver(Etcd2Client(etcd.endpoint, timeout=30), FLEET_PREFIX, throttle)

        etcd_fast, etcd_slow = both("etcd driver", etcd_driver, submit_batch)
        one_by_one = measure(
            "etcd driver, one at a time, no limit", etcd_driver, unlimited, args.runs,
            registry, units,
        )  # fmt: skip
        with simulated_fleetd(etcd.endpoint) as url:
            api_fast, api_slow = both("api driver", lambda t: ApiDriver(url, throttle=t))
    measured = [
        Measurement(f"submit {n:,} units, etcd driver (limit lifted)", tuple(etcd_fast),
                    target=TARGET if n >= TARGET_UNITS else None,
                    extra={"writes": 3 * n, "reads": 0, "in flight": DEFAULT_WORKERS}),
        Measurement(f"submit {n:,} units, etcd driver one at a time (limit lifted)",
                    tuple(one_by_one), extra={"writes": 3 * n, "reads": 0}),
        Measurement(f"submit {n:,} units, etcd driver (default limit)", tuple(etcd_slow),
                    extra={"writes": 3 * n, "limit": limit}),
        Measurement(f"submit {n:,} units, api driver (limit lifted)", tuple(api_fast),
                    extra={"writes": n, "reads": n}),
        Measurement(f"submit {n:,} units, api driver (default limit)", tuple(api_slow),
                    extra={"writes": n, "limit": limit}),
    ]  # fmt: skip
    return [m for m in measured if m.samples]  # --throttled-runs 0: no limited rows


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--units", type=int, default=TARGET_UNITS, help="fleet units (default 1000)")
    p.add_argument(
        "--throttled-runs",
        type=int,
        default=1,
        help="runs with the default write limit (default 1: 15 s each, set by the limit)",
    )


def main(argv: list[str] | None = None) -> int:
    doc = (__doc__ or "").splitlines()[0]
    return bench_main(doc, run, configure, argv, prog="python -m bench.fleet_submit")


if __name__ == "__main__":
    raise SystemExit(main())
