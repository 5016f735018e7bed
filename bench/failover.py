"""Benchmark: how long the scheduler is headless when its leader goes away.

Two ``kaylee server`` processes run against a private etcd; one leads, one stands by.
The leader is then killed (SIGKILL: its lease must expire) or stopped (SIGTERM: it
revokes its lease, so the standby may take over at once). Measured from the signal:

- **elected**: the standby holds ``master``;
- **acting**: the standby has run a scheduler pass and acted on what it found. Just
  before the signal the benchmark deletes one of the unit's fleet jobs behind the
  leader's back (nothing triggers a pass: no watch covers fleet's keys, and ``--resync``
  is long), so the first pass of the new leader must create it again — which it writes
  to fleet's registry, where the benchmark sees it.

Targets: SIGKILL < lease TTL + 1 s (the lease must run out; everything after that is
ours), SIGTERM < 1 s. The fleet unit's state is written directly (``running``) instead
of starting the simulator's agents, so nothing else competes for the two cores.

    python -m bench.failover [--runs 5] [--lease-ttl 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Measurement, bench_main, private_etcd, progress
from bench.fixtures import wait_for
from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.fleetsim.registry import unit_state
from kaylee_sync.render import render_units
from kaylee_sync.settings import EtcdSettings
from kaylee_sync.spec import App, UnitSpec, to_json
from kaylee_sync.store import Store

FLEET_PREFIX = "/_coreos.com/fleet/"
MACHINE = "0" * 31 + "1"
PROBE = UnitSpec(name="probe", apps=(App("docker://probe:1"),))
POLL = 0.002  # seconds between looks while timing (the resolution of the numbers)
SETTLE = 1.0  # seconds a new standby gets to open its watch on master after starting


def kaylee() -> str:
    script = Path(sys.executable).parent / "kaylee"
    return str(script) if script.exists() else "kaylee"


class Servers:
    """The ``kaylee server`` processes, their logs, and which one leads."""

    def __init__(self, endpoint: str, store: Store, lease_ttl: int, logs: Path) -> None:
        self.endpoint, self.store, self.lease_ttl, self.logs = endpoint, store, lease_ttl, logs
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self) -> subprocess.Popen[bytes]:
        log = self.logs / f"server-{len(self.procs)}.log"
        args = [
            kaylee(), "--etcd-endpoints", self.endpoint, "server",
            "--lease-ttl", str(self.lease_ttl), "--resync", "600", "--stable", "1",
            "--listen", "",  # two servers on one host: no probes needed here
        ]  # fmt: skip
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        self.procs[proc.pid] = proc
        wait_for("server start", lambda: b"waiting to become leader" in log.read_bytes(), 30)
        time.sleep(SETTLE)
        return proc

    def leader(self) -> subprocess.Popen[bytes] | None:
        holder = self.store.leader()
        return self.procs.get(int(holder.split(":")[1])) if holder else None

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def one_handover(servers: Servers, fleet: Etcd2Client, sig: signal.Signals) -> tuple[float, float]:
    """Signal the leader; seconds until the standby is elected, and until it acted."""
    leader = servers.leader()
    if leader is None:
        raise SystemExit("benchmark setup failed: no leader")
    old = servers.store.leader()
    job = FLEET_PREFIX + f"job/{render_units(PROBE)[0].name}"
    fleet.delete(job, recursive=True)
    start = time.perf_counter()
    os.kill(leader.pid, sig)
    elected = acted = 0.0
    deadline = start + servers.lease_ttl + 30
    while not (elected and acted) and time.perf_counter() < deadline:
        if not elected and servers.store.leader() not in (None, old):
            elected = time.perf_counter() - start
        if not acted and fleet.get(job + "/object") is not None:
            acted = time.perf_counter() - start
        time.sleep(POLL)
    if not (elected and acted):
        raise SystemExit(f"no handover after {sig.name}; see the logs in {servers.logs}")
    leader.wait(15)
    return elected, acted


def run(args: argparse.Namespace) -> list[Measurement]:
    ttl = args.lease_ttl
    results: dict[signal.Signals, tuple[list[float], list[float]]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="kaylee-bench-logs-") as logs,
        private_etcd() as etcd,
        Store(EtcdSettings(endpoints=(etcd.endpoint,), prefix="/kaylee2")) as store,
        Etcd2Client(etcd.endpoint) as fleet,
    ):
        servers = Servers(etcd.endpoint, store, ttl, Path(logs))
        try:
            unit = render_units(PROBE)[0]
            store.put_unit(PROBE.name, to_json(PROBE))
            servers.start()
            wait_for("leader", store.leader, 30)
            wait_for("probe unit", lambda: fleet.get(FLEET_PREFIX + f"job/{unit.name}/object"), 30)
            state = unit_state("loaded", "active", "running", MACHINE, unit.hash)
            fleet.set(FLEET_PREFIX + f"states/{unit.name}/{MACHINE}", state)
            servers.start()  # the standby
            for sig in (signal.SIGKILL, signal.SIGTERM):
                elected_runs, acted_runs = results.setdefault(sig, ([], []))
                for i in range(args.runs):
                    elected, acted = one_handover(servers, fleet, sig)
                    progress(
                        f"{sig.name} {i + 1}/{args.runs}: elected after {elected:.3f} s, "
                        f"acting after {acted:.3f} s"
                    )
                    elected_runs.append(elected)
                    acted_runs.append(acted)
                    servers.start()  # a new standby for the next run
        finally:
            servers.stop_all()
    kill_elected, kill_acted = results[signal.SIGKILL]
    term_elected, term_acted = results[signal.SIGTERM]
    context = {"lease_ttl": ttl}
    return [
        Measurement("failover after SIGKILL: standby acting", tuple(kill_acted),
                    target=ttl + 1.0, extra=context),
        Measurement("failover after SIGKILL: standby elected", tuple(kill_elected),
                    extra=context),
        Measurement("handover after SIGTERM: standby acting", tuple(term_acted),
                    target=1.0, extra=context),
        Measurement("handover after SIGTERM: standby elected", tuple(term_elected),
                    extra=context),
    ]  # fmt: skip


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lease-ttl",
        type=int,
        default=3,
        help="the servers' --lease-ttl (default 3, the smallest kaylee server allows; "
        "production uses 10, and SIGKILL failover then takes up to 10 s)",
    )


def main(argv: list[str] | None = None) -> int:
    doc = (__doc__ or "").splitlines()[0]
    return bench_main(doc, run, configure, argv, prog="python -m bench.failover")


if __name__ == "__main__":
    raise SystemExit(main())
