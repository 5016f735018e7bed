"""Benchmark: from a webhook to the first fleet write for the changed unit, through the
real daemon, at 10,000 units.

A :class:`Daemon` with everything a leader runs — the HTTP listener and its webhook
receiver, the sync worker, the election and the scheduler with the etcd registry
driver (its lease guard and default write limit) — runs on a thread of this process
against a private etcd. It follows a generated repository of ``--units`` unit files as a
``file://`` remote with the poll interval an hour, so only the webhook brings a push in.

For each sample the benchmark commits a new image to one replicated unit (a new spec
hash: a rolling replacement, whose first step creates one new fleet unit), POSTs a
signed webhook to ``/hooks/git`` and measures from just before the POST to the moment an
etcd v2 watch on fleet's registry delivers the job object of the unit's new fleet unit
(``job/k2:<name>:<newhash>:…service/object``, the first key that names it). Also
reported: when the v3 watch on ``units/`` delivered the new spec (the sync's part), and
how long the scheduler's pass that made the write had been running (its part).

**The fleet is seeded, not submitted.** Setup syncs the repository once, then writes
fleet's registry keys for every rendered unit directly (unit body, job object, target
state, target machine and a ``running`` state: the keys fleetctl and fleet's agents
write, as ``bench.scheduler_idle`` does), so the daemon's scheduler adopts them as a
new leader and has nothing to do. Submitting them through the scheduler would take
minutes at the write limit (three writes per unit at 200/s).

**A stand-in for fleet's engine and agents.** The fleet simulator
(:mod:`kaylee_sync.fleetsim`) cannot carry 10,000 units: its engine rebuilds every
machine's unit list for every job it checks (as fleet's engine does), which is
quadratic, and each agent reads the whole registry on every wake. So the benchmark's
registry watcher plays them for the units the scheduler creates and stops: a new job
is given a target machine and a ``running`` state, a job set to ``loaded`` reports
``dead``, and a destroyed job's states go. Every rollout then completes, and before
each sample the benchmark waits for a quiet scheduler pass that began after the last
rollout ended: each sample starts from a settled cluster.

Replicas: ``--replicas`` (default 1) replaces the fixture's 2–6 replicas of the
replicated kinds, so 10,000 unit files are ~10,000 fleet units (the 2–6 of the fixture
would be ~32,500, each pass three times the work). ``--stable`` (default 0.5 s) is how
long a new replica must run before an old one goes, so that a rollout ends within a few
passes; neither changes the path measured, which ends at the rollout's first write.

    python -m bench.webhook_fleet [--units 10000] [--samples 20] [--replicas 1] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import hashlib
import hmac
import io
import json
import math
import os
import pstats
import queue
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.commit_latency import arrival, unit_events
from bench.commit_latency import running as synced_once
from bench.common import Measurement, bench_main, private_etcd, progress
from bench.fixtures import UNIT_DIR, UnitRepo, percentile, store_at, unit_name, wait_for
from kaylee_sync.daemon.daemon import Daemon, DaemonSettings
from kaylee_sync.election import ElectionSettings
from kaylee_sync.fleet.etcd2 import Etcd2Client, EventIndexCleared
from kaylee_sync.fleet.registry import RegistryDriver, job_object_json, unit_object_json
from kaylee_sync.fleetsim.registry import unit_state
from kaylee_sync.render import render_units
from kaylee_sync.scheduler.decide import Decision
from kaylee_sync.scheduler.runner import SchedulerSettings
from kaylee_sync.source import GitSource, SourceSettings
from kaylee_sync.spec.loader import parse_stored
from kaylee_sync.store import Store, keys

FLEET_PREFIX = "/_coreos.com/fleet/"
UNIT_PREFIX = "k2"
MACHINES = [f"{i:032x}" for i in range(1, 11)]
SECRET = "bench-webhook-secret"
TARGET = 0.300  # seconds, p50 (issue 14)
TIMEOUT = 120.0  # seconds a sample, or settling, may take before the benchmark gives up
WRITERS = 16  # parallel v2 writers while seeding fleet
REPLICATED = {0, 1, 2, 3, 6, 7}  # i % 8 of the fixture's replicated kinds (not agent, db)


# -- setup: fleet's registry as fleetctl and the agents would have left it ---------------


def seed_fleet(endpoint: str, store: Store) -> set[str]:
    """Write every synced spec's fleet units, all running; their names."""
    values: dict[str, str] = {}
    names: set[str] = set()
    for n, stored in enumerate(store.list_units()):
        name = stored.key.removeprefix(keys.UNITS)
        spec = parse_stored(stored.value, stored.key, expected_name=name)
        for unit in render_units(spec, UNIT_PREFIX):
            machine = MACHINES[n % len(MACHINES)]
            names.add(unit.name)
            values[f"unit/{unit.hash}"] = unit_object_json(unit.text)
            values[f"job/{unit.name}/object"] = job_object_json(unit.name, unit.hash)
            values[f"job/{unit.name}/target-state"] = "launched"
            values[f"job/{unit.name}/target"] = machine
            values[f"states/{unit.name}/{machine}"] = unit_state(
                "loaded", "active", "running", machine, unit.hash
            )
    with Etcd2Client(endpoint, timeout=30) as client, ThreadPoolExecutor(WRITERS) as pool:
        list(
            pool.map(
                lambda kv: client.set(FLEET_PREFIX + kv[0], kv[1]), values.items(), chunksize=256
            )
        )
    return names


# -- the registry watcher: the observer, and a stand-in for fleet's engine and agents ----


@dataclass
class FleetWatch:
    """Watches fleet's registry (etcd v2); reports the first job object of every unit not
    seeded, and plays engine and agent for it (see the module docstring)."""

    endpoint: str
    known: set[str]
    created: queue.Queue[tuple[float, str]] = field(default_factory=queue.Queue)
    destroyed: queue.Queue[tuple[float, str]] = field(default_factory=queue.Queue)
    _stop: threading.Event = field(default_factory=threading.Event)
    _where: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (machine, hash)

    def run(self) -> None:
        prefix = FLEET_PREFIX.rstrip("/")
        with Etcd2Client(self.endpoint, timeout=30) as watch, Etcd2Client(self.endpoint) as act:
            index = watch.index() + 1
            while not self._stop.is_set():
                try:
                    event = watch.watch(prefix, index, recursive=True, timeout=0.5)
                except EventIndexCleared:
                    raise SystemExit("the registry watch fell behind etcd's history") from None
                if event is None:
                    continue
                seen = time.perf_counter()
                index = event.node.modified_index + 1
                rel = event.node.key[len(prefix) + 1 :]
                if rel.startswith("job/"):
                    self._job_event(act, seen, event.action, rel.split("/"), event.node.value)

    def _job_event(
        self, act: Etcd2Client, seen: float, action: str, parts: list[str], value: str | None
    ) -> None:
        name = parts[1]
        leaf = parts[2] if len(parts) > 2 else ""
        if leaf == "object" and action == "create" and name not in self.known:
            self.created.put((seen, name))  # the measured moment, before acting on it
            self.known.add(name)
            unit_hash = bytes(json.loads(value or "{}")["UnitHash"]).hex()
            machine = MACHINES[hash(name) % len(MACHINES)]
            self._where[name] = (machine, unit_hash)
            act.set(f"{FLEET_PREFIX}job/{name}/target", machine)
            state = unit_state("loaded", "active", "running", machine, unit_hash)
            act.set(f"{FLEET_PREFIX}states/{name}/{machine}", state)
        elif leaf == "target-state" and value == "loaded":
            machine, unit_hash = self._where.get(name) or self._seeded_place(act, name)
            state = unit_state("loaded", "inactive", "dead", machine, unit_hash)
            act.set(f"{FLEET_PREFIX}states/{name}/{machine}", state)
        elif not leaf and action == "delete":
            with contextlib.suppress(Exception):
                act.delete(f"{FLEET_PREFIX}states/{name}", recursive=True, dir=True)
            self.known.discard(name)
            self.destroyed.put((seen, name))

    def _seeded_place(self, act: Etcd2Client, name: str) -> tuple[str, str]:
        node = act.get(f"{FLEET_PREFIX}states/{name}", recursive=True)
        child = node.nodes[0] if node is not None and node.nodes else None
        state = json.loads(child.value or "{}") if child is not None else {}
        return state.get("machineState", {}).get("ID", MACHINES[0]), state.get("unitHash", "")

    def stop(self) -> None:
        self._stop.set()


# -- the scheduler's passes, as the benchmark sees them -----------------------------------


@dataclass
class Passes:
    """Start and end of each scheduler pass, and whether it ended quiet (every unit
    steady, nothing done); optionally a cProfile of the passes while ``profiling``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    log: list[tuple[float, float, bool]] = field(default_factory=list)
    started: float | None = None
    profile: cProfile.Profile | None = None
    profiling: bool = False

    def wrap(self, run_pass: Callable[[], list[Decision]]) -> Callable[[], list[Decision]]:
        def measured() -> list[Decision]:
            start = time.perf_counter()
            with self.lock:
                self.started = start
            profile = self.profile if self.profiling else None
            if profile is not None:
                profile.enable()
            try:
                decisions = run_pass()
            finally:
                if profile is not None:
                    profile.disable()
            quiet = bool(decisions) and all(
                not d.actions and d.phase == "steady" for d in decisions
            )
            with self.lock:
                self.log.append((start, time.perf_counter(), quiet))
                self.started = None
            return decisions

        return measured

    def quiet_after(self, moment: float) -> bool:
        with self.lock:
            return any(start > moment and quiet for start, _, quiet in self.log)

    def containing(self, moment: float) -> tuple[float, float] | None:
        """The pass that was running at ``moment`` (start, end)."""
        with self.lock:
            for start, end, _ in self.log:
                if start <= moment <= end:
                    return start, end
        return None


@contextmanager
def leader(
    repo: UnitRepo, store: Store, endpoint: str, cache: Path, stable: float, passes: Passes
) -> Iterator[tuple[Daemon, str]]:
    """The full daemon on a thread; yields it and its listener's URL."""
    source = GitSource(SourceSettings(repo=f"file://{repo.path}", path=UNIT_DIR, cache_dir=cache))
    client = Etcd2Client(endpoint, timeout=30)
    settings = DaemonSettings(
        listen="127.0.0.1:0",
        interval=3600.0,
        webhook_secret=SECRET,
        scheduler=SchedulerSettings(unit_prefix=UNIT_PREFIX, stable=stable),
        election=ElectionSettings(),
    )
    daemon = Daemon(source, store, RegistryDriver(client, FLEET_PREFIX), settings)
    assert daemon.scheduler is not None and daemon.http is not None
    daemon.scheduler.run_pass = passes.wrap(daemon.scheduler.run_pass)  # type: ignore[method-assign]
    thread = threading.Thread(target=daemon.run, name="bench-daemon", daemon=True)
    thread.start()
    try:
        yield daemon, daemon.http.url
    finally:
        daemon.should_exit.set()
        daemon.wake()
        thread.join(60)
        source.close()
        client.close()


# -- the measurement ------------------------------------------------------------------------


@dataclass
class Sample:
    total: float  # webhook POST → the new fleet unit's job object
    sync: float  # webhook POST → the new spec in units/
    into_pass: float  # the writing pass's start → the write
    waited: float  # the new spec in units/ → the writing pass's start
    hook: float  # the webhook's round trip
    full: bool = False  # the sync was a full one (every --resync, 60 s by default)


def sample(
    n: int, i: int, repo: UnitRepo, client: httpx.Client, fleet: FleetWatch, passes: Passes,
    units: queue.Queue[tuple[float, str, bytes]], daemon: Daemon,
) -> Sample:  # fmt: skip
    name = unit_name(i)
    fulls = daemon.syncer.full_syncs  # to label a sample that met a full sync
    repo.change(i)
    body = json.dumps({"ref": "refs/heads/main", "after": f"sample-{n}"}).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-Hub-Signature-256": signature, "Content-Type": "application/json"}
    posted = time.perf_counter()
    answer = client.post("/hooks/git", content=body, headers=headers)
    hook = time.perf_counter() - posted
    if answer.status_code != 202:
        raise SystemExit(f"sample {n}: the webhook was answered {answer.status_code}")
    synced = arrival(units, keys.UNITS + name, repo.image(i).encode(), f"change {name}")
    marker = f"{UNIT_PREFIX}:{name}:"
    while True:
        try:
            written, unit = fleet.created.get(timeout=TIMEOUT)
        except queue.Empty:
            raise SystemExit(
                f"sample {n}: no new fleet unit of {name} in {TIMEOUT:.0f} s"
            ) from None
        if unit.startswith(marker):
            break
    span = passes.containing(written)
    started = span[0] if span else passes.started or written
    full = daemon.syncer.full_syncs != fulls
    return Sample(
        written - posted, synced - posted, written - started, started - synced, hook, full
    )


def settle(fleet: FleetWatch, passes: Passes, name: str) -> None:
    """Until the unit's old fleet unit is destroyed and a later pass found nothing to do."""
    marker = f"{UNIT_PREFIX}:{name}:"
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            gone, unit = fleet.destroyed.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise SystemExit(f"the rollout of {name} did not end in {TIMEOUT:.0f} s") from None
        if unit.startswith(marker):
            break
    wait_for(
        f"a quiet pass after {name}'s rollout", lambda: passes.quiet_after(gone), TIMEOUT, 0.05
    )


def run(args: argparse.Namespace) -> list[Measurement]:
    rng = random.Random(14)
    passes = Passes(profile=cProfile.Profile() if args.profile else None)
    samples: list[Sample] = []
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="kaylee-bench-webhook-") as tmp, private_etcd() as etcd:
        progress(f"setup: generating a repository of {args.units} unit files")
        repo = UnitRepo(Path(tmp) / "repo", args.units, replicas=args.replicas)
        cache = Path(tmp) / "cache"
        with store_at(etcd.endpoint) as store:
            progress("setup: first sync (no scheduler)")
            source = GitSource(
                SourceSettings(repo=f"file://{repo.path}", path=UNIT_DIR, cache_dir=cache)
            )
            with source, synced_once(source, store, interval=3600.0):
                pass
            started = time.perf_counter()
            known = seed_fleet(etcd.endpoint, store)
            progress(
                f"setup: seeded {len(known):,} fleet units in {time.perf_counter() - started:.1f} s"
            )
            fleet = FleetWatch(etcd.endpoint, set(known))
            watcher = threading.Thread(target=fleet.run, name="bench-fleet", daemon=True)
            watcher.start()
            try:
                with (
                    leader(repo, store, etcd.endpoint, cache, args.stable, passes) as (daemon, url),
                    httpx.Client(base_url=url, timeout=TIMEOUT) as client,
                    unit_events(store, time.perf_counter) as units,
                ):
                    progress("setup: the new leader's first passes (adopting every fleet unit)")
                    wait_for(
                        "a synced leader",
                        lambda: daemon.last_result and daemon.last_result.ok,
                        TIMEOUT,
                    )
                    wait_for(
                        "a quiet scheduler pass", lambda: passes.quiet_after(started), 600.0, 0.1
                    )
                    if not fleet.created.empty():
                        raise SystemExit("the scheduler created fleet units while adopting them")
                    choices = [i for i in range(repo.count) if i % 8 in REPLICATED]
                    for n in range(args.samples):
                        time.sleep(rng.uniform(0.2, 0.5))  # a moment apart, and idle
                        i = rng.choice(choices)
                        passes.profiling = True
                        s = sample(n + 1, i, repo, client, fleet, passes, units, daemon)
                        passes.profiling = False
                        samples.append(s)
                        loads.append(os.getloadavg()[0])
                        progress(
                            f"sample {n + 1}/{args.samples}: {s.total * 1000:.0f} ms (sync "
                            f"{s.sync * 1000:.0f} ms, wait {s.waited * 1000:.0f} ms, pass "
                            f"{s.into_pass * 1000:.0f} ms{', full sync' if s.full else ''}), "
                            f"load {loads[-1]:.1f}"
                        )
                        settle(fleet, passes, unit_name(i))
                    durations = [end - start for start, end, _ in passes.log[-10:]]
            finally:
                fleet.stop()
                watcher.join(5)
    if passes.profile is not None:
        out = io.StringIO()
        pstats.Stats(passes.profile, stream=out).sort_stats("cumulative").print_stats(30)
        progress(out.getvalue())

    def p(values: list[float], pct: int) -> float:
        return round(percentile(values, pct), 3)

    totals = [s.total for s in samples]
    incremental = [s.total for s in samples if not s.full] or [math.nan]
    context = {
        "units": args.units,
        "fleet_units": len(known),
        "replicas": args.replicas,
        "p90": p(totals, 90),
        "sync_p50": p([s.sync for s in samples], 50),
        "wait_for_pass_p50": p([s.waited for s in samples], 50),
        "pass_until_write_p50": p([s.into_pass for s in samples], 50),
        "webhook_round_trip_p50": p([s.hook for s in samples], 50),
        "full_syncs": sum(s.full for s in samples),
        "p50_incremental_syncs": p(incremental, 50),
        "idle_pass_median": round(sorted(durations)[len(durations) // 2], 3),
        "loadavg_1min": f"{min(loads):.1f}-{max(loads):.1f}",
    }
    return [
        Measurement(f"webhook → first fleet write ({args.units:,} units)", tuple(totals),
                    target=TARGET, extra=context),
    ]  # fmt: skip


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--units", type=int, default=10_000, help="unit files (default 10000)")
    p.add_argument(
        "--samples", type=int, default=20, help="webhooks measured (default 20; --runs unused)"
    )
    p.add_argument(
        "--replicas", type=int, default=1, help="replicas of the replicated units (default 1)"
    )
    p.add_argument(
        "--stable", type=float, default=0.5, help="the scheduler's stable seconds (default 0.5)"
    )
    p.add_argument("--profile", action="store_true", help="cProfile the passes that wrote")


def main(argv: list[str] | None = None) -> int:
    doc = (__doc__ or "").splitlines()[0]
    return bench_main(doc, run, configure, argv, prog="python -m bench.webhook_fleet")


if __name__ == "__main__":
    raise SystemExit(main())
