"""``python -m bench``: every benchmark, one table (or one JSON document with ``--json``).

A new benchmark adds its module to ``BENCHMARKS``; its options keep their defaults here
(run it on its own to change them). ``--only NAME`` runs a subset.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from bench import (
    commit_latency,
    daemon_rss,
    failover,
    fleet_submit,
    handover_under_load,
    health_check,
    repo_sync,
    rolling_update,
    scheduler_idle,
    signature_check,
    slow_clients,
    webhook_fleet,
)
from bench.common import Measurement, parser, progress, report

Benchmark = tuple[
    Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], list[Measurement]]
]

BENCHMARKS: dict[str, Benchmark] = {
    "scheduler_idle": (scheduler_idle.configure, scheduler_idle.run),
    "failover": (failover.configure, failover.run),
    "handover_under_load": (handover_under_load.configure, handover_under_load.run),
    "repo_sync": (repo_sync.configure, repo_sync.run),
    "commit_latency": (commit_latency.configure, commit_latency.run),
    "fleet_submit": (fleet_submit.configure, fleet_submit.run),
    "rolling_update": (rolling_update.configure, rolling_update.run),
    "daemon_rss": (daemon_rss.configure, daemon_rss.run),
    "health_check": (health_check.configure, health_check.run),
    "slow_clients": (slow_clients.configure, slow_clients.run),
    "signature_check": (signature_check.configure, signature_check.run),
    "webhook_fleet": (webhook_fleet.configure, webhook_fleet.run),
}


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("Run every kaylee-sync benchmark.", prog="python -m bench")
    p.add_argument(
        "--only", action="append", choices=sorted(BENCHMARKS), help="run only this (repeatable)"
    )
    args = p.parse_args(argv)
    results: list[Measurement] = []
    for name, (configure, run) in BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        # Each benchmark's own defaults, plus the shared --runs.
        own = parser(name)
        configure(own)
        options = own.parse_args(["--runs", str(args.runs)])
        progress(f"== {name}")
        results += run(options)
    return report(results, args.json)
