"""Benchmark: the memory of a ``kaylee-sync`` daemon that has synced 1,000 and 10,000 units.

The daemon runs as the program it is, in its own process (``kaylee-sync --repo <repo>
--path units --no-scheduler --listen ""``, a private etcd, a new etcd prefix per run so
that every run syncs everything), on a generated repository (``bench/fixtures.py``).
Once ``sync/status`` records a successful sync of the repository's head (and one more
second, so that the sync has returned: the status is its last write), the benchmark
reads ``VmRSS`` (resident memory now) and ``VmHWM`` (the peak so far, i.e. during the
first sync) from ``/proc/<pid>/status``, then stops the daemon with SIGTERM.

Target: RSS < 150 MB at 10,000 units. What stays resident after a sync is mostly the
parse cache (each unit's parsed spec and canonical JSON, kept so that the next commit
parses only the files it changed) and the interpreter with its libraries (gRPC, GitPython,
APScheduler, watchdog, prometheus_client); the 1,000-unit number shows the latter.

    python -m bench.daemon_rss [--sizes 1000,10000] [--runs 5]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import Measurement, bench_main, private_etcd, progress, timed
from bench.fixtures import UNIT_DIR, UnitRepo, console_script, git, store_at, terminate, wait_for
from kaylee_sync.store import Store
from kaylee_sync.sync.status import read_status

TARGET_MB = 150.0
TARGET_UNITS = 10_000
TIMEOUT = 120.0  # seconds a daemon may take to start and sync before the benchmark gives up
SETTLE = 1.0  # seconds from the status write to the reading: the sync must have returned


def memory(pid: int) -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` of ``pid``, in MB (10^6 bytes)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(value.split()[0]) * 1024 / 1e6, 1)
    return out


def synced(store: Store, commit: str) -> bool:
    status = read_status(store)
    return bool(status and status.last_success and status.last_success.commit == commit)


def one_daemon(repo: Path, endpoint: str, prefix: str, log: Path) -> tuple[dict[str, float], float]:
    """Start a daemon, wait for its first successful sync; its memory, and how long it took."""
    head = git(repo, "rev-parse", "HEAD")
    args = [
        console_script("kaylee-sync"), "--repo", str(repo), "--path", UNIT_DIR,
        "--no-scheduler", "--listen", "", "--interval", "3600",
        "--etcd-endpoints", endpoint, "--etcd-prefix", prefix, "--etcd-timeout", "30",
    ]  # fmt: skip
    with store_at(endpoint, prefix) as store, open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        try:

            def sync_done() -> bool:
                if proc.poll() is not None:
                    raise SystemExit(f"the daemon exited with {proc.returncode}; see {log}")
                return synced(store, head)

            _, took = timed(lambda: wait_for("successful sync", sync_done, TIMEOUT, step=0.05))
            time.sleep(SETTLE)
            return memory(proc.pid), took.wall
        finally:
            terminate(proc)


def run(args: argparse.Namespace) -> list[Measurement]:
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="kaylee-bench-rss-") as tmp, private_etcd() as etcd:
        for size in sizes:
            progress(f"setup: generating a repository of {size} unit files")
            repo = UnitRepo(Path(tmp) / f"repo-{size}", size).path
            rss, peak, startup = [], [], []
            for i in range(args.runs):
                log = Path(tmp) / f"daemon-{size}-{i}.log"
                mem, took = one_daemon(repo, etcd.endpoint, f"/rss-{size}-{i}", log)
                progress(
                    f"{size} units {i + 1}/{args.runs}: synced in {took:.1f} s, "
                    f"RSS {mem['VmRSS']:.1f} MB (peak {mem['VmHWM']:.1f} MB)"
                )
                rss.append(mem["VmRSS"])
                peak.append(mem["VmHWM"])
                startup.append(took)
            results.append(
                Measurement(
                    f"daemon RSS after syncing {size:,} units",
                    tuple(rss),
                    unit="MB",
                    target=TARGET_MB if size >= TARGET_UNITS else None,
                    extra={
                        "peak_MB": sorted(peak)[len(peak) // 2],
                        "start_to_synced_s": round(sorted(startup)[len(startup) // 2], 2),
                    },
                )
            )
    return results


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sizes", default="1000,10000", help="unit counts, comma-separated (default 1000,10000)"
    )


def main(argv: list[str] | None = None) -> int:
    doc = (__doc__ or "").splitlines()[0]
    return bench_main(doc, run, configure, argv, prog="python -m bench.daemon_rss")


if __name__ == "__main__":
    raise SystemExit(main())
