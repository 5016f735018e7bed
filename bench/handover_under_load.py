"""Benchmark: how fast a busy leader lets go of leadership on SIGTERM.

A ``kaylee server`` leads a private etcd holding thousands of units that fleet does not
have yet, so its scheduler pass is busy creating them (three registry writes each, at
the throttle's 200 writes/s: half a minute of work). Once the creates are under way —
at least ``--pending`` still to go — it gets SIGTERM. Measured from the signal:

- **released**: ``master`` is gone (the lease revoked: a standby may take over now);
- **exited**: the process has exited.

Target: released < 1 s (issue 10: the pass used to run on for the 30 s thread join
before the lease was resigned); the process must exit well inside systemd's
TimeoutStopSec (30 s). Between runs fleet's keyspace is wiped, so every run starts
with the same backlog.

    python -m bench.handover_under_load [--runs 5] [--units 2500] [--pending 2000]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import Measurement, bench_main, private_etcd, progress
from bench.failover import kaylee
from bench.fixtures import wait_for
from kaylee_sync.fleet.etcd2 import Etcd2Client
from kaylee_sync.settings import EtcdSettings
from kaylee_sync.spec import App, UnitSpec, to_json
from kaylee_sync.store import Op, Store, keys

FLEET_PREFIX = "/_coreos.com/fleet/"
POLL = 0.002


def jobs(fleet: Etcd2Client) -> int:
    node = fleet.get(FLEET_PREFIX + "job")
    return len(node.nodes) if node is not None else 0


def one_stop(endpoint: str, store: Store, fleet: Etcd2Client, logs: Path, args: argparse.Namespace
             ) -> tuple[float, float, int]:  # fmt: skip
    """Start a leader, SIGTERM it mid-pass; seconds to release and to exit, creates left."""
    fleet.delete(FLEET_PREFIX.rstrip("/"), recursive=True)
    log = logs / f"server-{time.monotonic_ns()}.log"
    cmd = [kaylee(), "--etcd-endpoints", endpoint, "server", "--resync", "600", "--stable", "1"]
    cmd += ["--listen", ""]  # no probes needed, and no clash with another server here
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for("leader", store.leader, 30)
        wait_for("creates under way", lambda: jobs(fleet) >= args.started, 60)
        left = args.units - jobs(fleet)
        if left < args.pending:
            raise SystemExit(f"only {left} creates left when stopping; use more --units")
        start = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        released = exited = 0.0
        while not exited and time.perf_counter() - start < 60:
            if not released and store.leader() is None:
                released = time.perf_counter() - start
            if proc.poll() is not None:
                exited = time.perf_counter() - start
                released = released or exited
            time.sleep(POLL)
        if not exited:
            raise SystemExit(f"the server did not exit within 60 s; see {log}")
        return released, exited, left
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run(args: argparse.Namespace) -> list[Measurement]:
    released: list[float] = []
    exited: list[float] = []
    backlog: list[int] = []
    with (
        tempfile.TemporaryDirectory(prefix="kaylee-bench-logs-") as logs,
        private_etcd() as etcd,
        Store(EtcdSettings(endpoints=(etcd.endpoint,), prefix="/kaylee2")) as store,
        Etcd2Client(etcd.endpoint) as fleet,
    ):
        ops = [
            Op.put(keys.unit_key(f"u{i:05d}"), to_json(spec))
            for i in range(args.units)
            if (spec := UnitSpec(name=f"u{i:05d}", apps=(App(f"docker://u:{i}"),)))
        ]
        store.apply_batched(ops, None, batch=100)
        for i in range(args.runs):
            r, e, left = one_stop(etcd.endpoint, store, fleet, Path(logs), args)
            released.append(r)
            exited.append(e)
            backlog.append(left)
            progress(f"run {i + 1}/{args.runs}: {left} creates pending; released {r:.3f} s, "
                     f"exited {e:.3f} s")  # fmt: skip
    extra = {"units": args.units, "pending_min": min(backlog)}
    return [
        Measurement("sigterm under load: leadership released", tuple(released), target=1.0,
                    extra=extra),
        Measurement("sigterm under load: process exited", tuple(exited), target=30.0),
    ]  # fmt: skip


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--units", type=int, default=2500, help="units fleet lacks (default 2500)")
    p.add_argument("--started", type=int, default=100, help="creates done before SIGTERM")
    p.add_argument("--pending", type=int, default=2000, help="creates still to do, at least")


def main() -> int:
    return bench_main(__doc__.split("\n")[0], run, configure, prog="bench.handover_under_load")


if __name__ == "__main__":
    raise SystemExit(main())
