"""Benchmark: a rolling update of 100 units × 4 replicas through the simulated fleet.

The real :class:`Scheduler` (default settings but ``stable`` 0.5 s, the etcd driver with
its default write limit) runs on a thread of this process; the fleet simulator (engine
and ``--machines`` agents, 0.2 s intervals, 0.1 s start delay) runs in a child process,
so that the two do not share an interpreter. Setup deploys ``--units`` specs of
``--replicas`` replicas and waits until every replica runs. Then every spec gets a new
image at once, and the benchmark measures the wall time until every new replica runs and
every old one is gone from fleet, checking fleet's registry every 0.5 s (which
bounds the resolution; checking more often takes CPU from the scheduler).

CPU: ``scheduler cpu`` is the scheduler thread's own CPU time during the update, read
from its POSIX thread clock (``time.pthread_getcpuclockid``): its passes, including the
driver's HTTP calls, and nothing else (not the etcd watch threads, not the benchmark's
polling, not the simulator). ``process cpu`` is this whole process for comparison.

Each update is one run (``--updates``, default 1: a run takes some 30 s); later runs
update the same cluster again.

    python -m bench.rolling_update [--units 100] [--replicas 4] [--updates 1]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bench.common import Measurement, bench_main, private_etcd, progress
from bench.fixtures import store_at, wait_for
from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.fleet.registry import RegistryDriver
from kaylee_sync.render import parse_unit_name
from kaylee_sync.scheduler.decide import Decision
from kaylee_sync.scheduler.runner import Scheduler, SchedulerSettings
from kaylee_sync.spec import App, EnvVar, UnitSpec, spec_hash6, to_json
from kaylee_sync.store import Op, keys

FLEET_PREFIX = "/_coreos.com/fleet/"
SETTINGS = SchedulerSettings(stable=0.5)
TIMEOUT = 600.0  # seconds a deploy or an update may take before the benchmark gives up

_SIMULATOR = """
import sys
from kaylee_sync.fleetsim import SimulatedCluster
endpoint, prefix, machines = sys.argv[1], sys.argv[2], int(sys.argv[3])
with SimulatedCluster(endpoint, prefix, machines=[{}] * machines, engine_interval=0.2,
                      agent_interval=0.2, default_start_delay=0.1):
    print("ready", flush=True)
    sys.stdin.read()
"""


def make_specs(count: int, replicas: int, version: int) -> list[UnitSpec]:
    return [
        UnitSpec(
            name=f"svc-{i:03d}",
            replicas=replicas,
            max_replicas_per_host=2,
            env=(EnvVar("APP_ENV", "production"), EnvVar("SERVICE_NAME", f"svc-{i:03d}")),
            apps=(App(f"docker://registry.example.com/svc-{i:03d}:{version}", args=("-p 80",)),),
            args=("--net=host",),
        )
        for i in range(count)
    ]


class _CountingScheduler(Scheduler):
    """The scheduler, counting its passes."""

    passes = 0

    def run_pass(self) -> list[Decision]:
        self.passes += 1
        return super().run_pass()


@contextmanager
def simulated_fleet(endpoint: str, machines: int) -> Iterator[None]:
    args = [sys.executable, "-c", _SIMULATOR, endpoint, FLEET_PREFIX, str(machines)]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit("the fleet simulator did not start")
        yield
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rolled_out(fleet: RegistryDriver, specs: list[UnitSpec]) -> bool:
    """Every replica of every spec runs with the spec's hash, and nothing else is ours."""
    want = {s.name: spec_hash6(s) for s in specs}
    units, states = fleet.snapshot()
    running = {s.name for s in states if s.sub_state == "running"}
    count = 0
    for unit in units:
        name = parse_unit_name(unit.name)
        if name is None:
            continue
        if want.get(name.unit) != name.hash6 or unit.name not in running:
            return False
        count += 1
    return count == sum(s.instance_count for s in specs)


def thread_cpu(thread: threading.Thread) -> float:
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def run(args: argparse.Namespace) -> list[Measurement]:
    walls: list[float] = []
    cpus: list[float] = []
    process: list[float] = []
    passes: list[int] = []
    replicas = args.units * args.replicas
    with (
        private_etcd() as etcd,
        store_at(etcd.endpoint) as store,
        Etcd2Client(etcd.endpoint, timeout=30) as client,
        simulated_fleet(etcd.endpoint, args.machines),
    ):
        fleet = RegistryDriver(client, FLEET_PREFIX)
        scheduler = _CountingScheduler(store, fleet, SETTINGS)
        stop = threading.Event()
        thread = threading.Thread(target=scheduler.run, args=(stop,), name="scheduler")
        thread.start()
        try:
            for version in range(1, args.updates + 2):
                specs = make_specs(args.units, args.replicas, version)
                before = (time.perf_counter(), thread_cpu(thread), time.process_time())
                first_passes = scheduler.passes
                ops = [Op.put(keys.unit_key(s.name), to_json(s)) for s in specs]
                store.apply_batched(ops, None)
                wait_for("rollout", lambda s=specs: rolled_out(fleet, s), TIMEOUT, step=0.5)  # type: ignore[misc]
                wall = time.perf_counter() - before[0]
                cpu = thread_cpu(thread) - before[1]
                what = "deploy" if version == 1 else f"update {version - 1}/{args.updates}"
                progress(f"{what}: {replicas} replicas in {wall:.1f} s, scheduler cpu {cpu:.2f} s")
                if version > 1:  # the first deploy is setup
                    walls.append(wall)
                    cpus.append(cpu)
                    process.append(time.process_time() - before[2])
                    passes.append(scheduler.passes - first_passes)
        finally:
            stop.set()
            scheduler.trigger()
            thread.join(60)
    context = {"units": args.units, "replicas": replicas, "machines": args.machines,
               "stable": SETTINGS.stable}  # fmt: skip
    label = f"{args.units} units × {args.replicas}"
    return [
        Measurement(f"rolling update, {label}: wall", tuple(walls),
                    extra={**context, "passes": passes[len(passes) // 2]}),
        Measurement(f"rolling update, {label}: scheduler cpu", tuple(cpus),
                    extra={"process_cpu": sorted(process)[len(process) // 2]}),
    ]  # fmt: skip


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--units", type=int, default=100, help="unit specs (default 100)")
    p.add_argument("--replicas", type=int, default=4, help="replicas per unit (default 4)")
    p.add_argument("--machines", type=int, default=5, help="simulated machines (default 5)")
    p.add_argument(
        "--updates", type=int, default=1, help="measured updates (default 1; --runs unused)"
    )


def main(argv: list[str] | None = None) -> int:
    doc = (__doc__ or "").splitlines()[0]
    return bench_main(doc, run, configure, argv, prog="python -m bench.rolling_update")


if __name__ == "__main__":
    raise SystemExit(main())
