"""Benchmark: push → etcd through the webhook while 2,000 slow clients hold the daemon's port.

A ``kaylee-sync`` process (its own program, no scheduler, the poll interval an hour so
that only the webhook brings a push in) follows a generated repository as a ``file://``
remote, under an open-file limit of ``--nofile`` (default 65536 as in the shipped
units, capped at the machine's hard limit; the daemon bounds its connections at half of
it, at most 4096 — ``--nofile 1024``, systemd's default, bounds them at 512). For each push the
benchmark commits a new image to one unit file of the remote, POSTs a signed webhook to
``/hooks/git`` and measures until an etcd watch on ``units/`` delivers the new value.

It does so twice: on an idle port, then while ``--clients`` slow clients
(:mod:`bench.slowloris`, loopback only: a request head that never ends, one more header
line a second, reconnecting whatever the daemon drops) hold the listener. Also reported:
the webhook's round trip, how many slow connections the daemon dropped (its connection
bound and deadline at work), and the most file descriptors the daemon had open.

Bounded: ``--pushes`` pushes per phase, each given 30 s, and the slow clients stop with
the phase; the benchmark ends by itself.

    python -m bench.slow_clients [--clients 2000] [--pushes 10] [--units 100] [--nofile 65536]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.commit_latency import arrival, unit_events
from bench.common import Measurement, bench_main, private_etcd, progress
from bench.fixtures import (
    UNIT_DIR,
    UnitRepo,
    console_script,
    percentile,
    store_at,
    terminate,
    unit_name,
)
from bench.fixtures import wait_for as wait_until
from kaylee_sync.store import Store, keys

TIMEOUT = 30.0  # seconds one push may take to reach etcd before the benchmark gives up
SECRET = "bench-webhook-secret"
# Lowers the daemon's open-file limit before it starts (the benchmark itself has threads).
LAUNCH = (
    "import os, resource, sys; "
    "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (min(int(sys.argv[1]), hard), hard)); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


class FdSampler:
    """The most file descriptors ``pid`` had open, sampled every 50 ms on a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.most = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fd-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.most = max(self.most, len(os.listdir(f"/proc/{self.pid}/fd")))
            except OSError:
                return  # the process is gone

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.most


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def cpu_share(pid: int) -> Iterator[dict[str, float]]:
    """Yields a dict that gets ``cpu_share`` (daemon CPU seconds per second, over the
    block) and ``loadavg`` (the machine's 1-minute load at the end: the context)."""
    out: dict[str, float] = {}
    cpu, wall = cpu_seconds(pid), time.monotonic()
    yield out
    out["daemon_cpu_share"] = round((cpu_seconds(pid) - cpu) / (time.monotonic() - wall), 3)
    out["loadavg_1min"] = round(os.getloadavg()[0], 1)


@contextmanager
def daemon(repo: Path, endpoint: str, tmp: Path, nofile: int) -> Iterator[tuple[int, int]]:
    """A kaylee-sync process synced once; yields (pid, listener port). SIGTERM at the end."""
    (tmp / "secret").write_text(SECRET)
    log = tmp / "daemon.log"
    args = [
        console_script("kaylee-sync"), "--repo", f"file://{repo}", "--path", UNIT_DIR,
        "--cache-dir", str(tmp / "cache"), "--no-scheduler", "--interval", "3600",
        "--listen", "127.0.0.1:0", "--webhook-secret-file", str(tmp / "secret"),
        "--etcd-endpoints", endpoint, "--etcd-prefix", "/slow",
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, str(nofile), *args], stdout=out, stderr=out
        )
    try:

        def listening() -> re.Match[str] | None:
            if proc.poll() is not None:
                raise SystemExit(f"the daemon exited with {proc.returncode}; see {log}")
            return re.search(r"HTTP listener on http://127\.0\.0\.1:(\d+)", log.read_text())

        port = int(wait_until("the listener", listening, TIMEOUT).group(1))
        yield proc.pid, port
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited with {proc.returncode}; see {log}")
    finally:
        terminate(proc)
    if "Traceback" in log.read_text():
        raise SystemExit(f"the daemon logged a traceback; see {log}")


@contextmanager
def slowloris(port: int, clients: int) -> Iterator[dict[str, int]]:
    """The slow clients, in a process of their own (their work would slow the measuring
    threads of this one); yields the dict their counts are put in when they stop."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.slowloris", "--port", str(port), "--clients",
         str(clients), "--seconds", "600"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    counts: dict[str, int] = {}
    try:
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit("the slow clients did not start")
        yield counts
    finally:
        proc.stdin.close()  # stops them
        counts.update(json.loads(proc.stdout.readline() or "{}"))
        proc.wait(30)


def push(
    label: str, repo: UnitRepo, store: Store, url: str, pushes: int
) -> tuple[list[float], list[float]]:
    """``pushes`` commits, each announced by a webhook: (push → etcd, webhook round trip)."""
    body = b'{"ref": "refs/heads/main"}'
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    latencies, hooks = [], []
    with (
        unit_events(store, time.perf_counter) as events,
        httpx.Client(base_url=url, timeout=TIMEOUT) as client,
    ):
        for n in range(pushes):
            i = n % repo.count
            repo.change(i)
            pushed = time.perf_counter()
            answer = client.post("/hooks/git", content=body, headers={
                "X-Hub-Signature-256": signature, "Content-Type": "application/json",
            })  # fmt: skip
            hooks.append(time.perf_counter() - pushed)
            if answer.status_code != 202:
                raise SystemExit(f"{label}: the webhook was answered {answer.status_code}")
            key, image = keys.UNITS + unit_name(i), repo.image(i).encode()
            arrived = arrival(events, key, image, f"{label}: push {n + 1}")
            latencies.append(arrived - pushed)
            progress(f"{label} {n + 1}/{pushes}: {latencies[-1] * 1000:.0f} ms")
            time.sleep(0.2)  # pushes a moment apart, as people make them
    return latencies, hooks


def run(args: argparse.Namespace) -> list[Measurement]:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = args.nofile if hard == resource.RLIM_INFINITY else min(args.nofile, hard)
    context = {"units": args.units, "pushes": args.pushes, "nofile": nofile}
    with tempfile.TemporaryDirectory(prefix="kaylee-bench-slow-") as tmp, private_etcd() as etcd:
        progress(f"setup: generating a repository of {args.units} unit files")
        repo = UnitRepo(Path(tmp) / "repo", args.units)
        with (
            store_at(etcd.endpoint, "/slow") as store,
            daemon(repo.path, etcd.endpoint, Path(tmp), args.nofile) as (pid, port),
        ):
            url = f"http://127.0.0.1:{port}"
            wait_until("first sync", lambda: store.get(keys.UNITS + unit_name(0)), TIMEOUT)
            fds = FdSampler(pid)
            with cpu_share(pid) as idle_cpu:
                idle, idle_hooks = push("idle port", repo, store, url, args.pushes)
            idle_fds = fds.stop()
            progress(f"setup: {args.clients} slow clients")
            fds = FdSampler(pid)
            with slowloris(port, args.clients) as counts:
                time.sleep(2.0)  # a couple of header lines each: the port is full now
                with cpu_share(pid) as loaded_cpu:
                    loaded, loaded_hooks = push(
                        f"{args.clients} slow clients", repo, store, url, args.pushes
                    )
            loaded_fds = fds.stop()
            slow_stats = {
                "slow_connects": counts["connects"],
                "slow_dropped_by_daemon": counts["dropped"],
                "slow_connect_failures": counts["failed"],
            }

    def details(samples: list[float], hooks: list[float], **extra: object) -> dict[str, object]:
        return {
            **context,
            **extra,
            "p90": round(percentile(samples, 90), 3),
            "webhook_round_trip_p50": round(percentile(hooks, 50), 4),
        }

    return [
        Measurement("push → etcd via webhook, idle port", tuple(idle),
                    extra=details(idle, idle_hooks, daemon_max_fds=idle_fds, **idle_cpu)),
        Measurement(f"push → etcd via webhook, {args.clients:,} slow clients", tuple(loaded),
                    extra=details(loaded, loaded_hooks, daemon_max_fds=loaded_fds,
                                  clients=args.clients, **slow_stats, **loaded_cpu)),
    ]  # fmt: skip


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, default=2000, help="slow clients (default 2000)")
    p.add_argument("--pushes", type=int, default=10, help="pushes per phase (default 10)")
    p.add_argument("--units", type=int, default=100, help="unit files (default 100)")
    p.add_argument(
        "--nofile", type=int, default=65536, help="the daemon's open-file limit (default 65536)"
    )


def main(argv: list[str] | None = None) -> int:
    doc = (__doc__ or "").splitlines()[0]
    return bench_main(doc, run, configure, argv, prog="python -m bench.slow_clients")


if __name__ == "__main__":
    raise SystemExit(main())
