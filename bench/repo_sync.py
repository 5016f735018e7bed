"""Benchmark: planning and syncing a repository of 10,000 unit files.

Four numbers, each through the real APIs the daemon uses:

- **cold plan** (target < 2 s, issue 14): a new :class:`GitSource` (empty parse cache) reads every
  unit file of the head commit (``desired``), ``read_actual`` reads an empty etcd
  prefix, ``make_plan`` plans 10,000 creates. What a new leader, ``kaylee-sync plan`` or
  ``--once`` pays on its first sync. (The OS page cache is warm: git's objects were just
  written; a cold disk adds its own read time.)
- **full apply** (target < 1 s): ``apply_plan`` of those 10,000 creates to an empty
  etcd prefix, fenced on ``master`` as the daemon's are — 79 transactions of 127 puts and
  the inventory, each fsynced by etcd.
- **full apply / floor** (target ≤ 2×): the full apply against the same values put in
  transactions of 128 puts with nothing else (no guards, fence or inventory), run by run.
- **one-file sync** (target < 20 ms, issue 14): a commit that changes one file, then
  :meth:`Syncer.sync_once` as the daemon runs it, incrementally after a sync that worked:
  resolve, diff the last synced tree (one file parsed), learn etcd's changes from the
  view's watch (up to a fenced mark), plan the touched unit, write it, one inventory
  shard and the header, record the status. The commit itself is not timed; a warm-up
  sync first reads back the 10,000 keys the first (full) sync wrote (and opens the
  watch).

The repository (``units/team-NNNN/<name>.yaml``, 8 files per directory) is generated in
a temporary directory with one commit; see ``bench/fixtures.py``.

A cold read of 10,000 files parses them in worker processes as well as in the benchmark's
own (``kaylee_sync.source.parsepool``); ``--parse-workers 0`` measures it without them.

    python -m bench.repo_sync [--units 10000] [--runs 5] [--profile] [--parse-workers N]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Measurement, bench_main, median, private_etcd, progress, timed
from bench.fixtures import UNIT_DIR, UnitRepo, store_at
from kaylee_sync.gcpause import collector_paused
from kaylee_sync.plan.compute import make_plan
from kaylee_sync.plan.model import Action, Plan
from kaylee_sync.source import GitSource, SourceSettings
from kaylee_sync.source.parsepool import BatchSettings
from kaylee_sync.store import Compare, Op, Store, keys
from kaylee_sync.store.txn import ETCD_MAX_TXN_OPS
from kaylee_sync.sync.actual import read_actual
from kaylee_sync.sync.apply import apply_plan
from kaylee_sync.sync.syncer import Syncer, SyncSettings

TARGET_UNITS = 10_000  # the targets are for this many units; other sizes are context
IDENTITY = "bench:1:leader"


def cold_plan(settings: SourceSettings, store: Store) -> tuple[Plan, dict[str, float]]:
    """A new source's first plan against ``store``; the plan and each step's seconds."""
    steps: dict[str, float] = {}
    cpu0 = _cpu()
    t0 = time.perf_counter()
    # the cyclic collector paused, as the daemon's sync and `kaylee-sync plan` pause it
    with collector_paused(), GitSource(settings) as source:
        desired = source.desired(source.resolve())
        t1 = time.perf_counter()
        actual = read_actual(store)
        t2 = time.perf_counter()
        plan = make_plan(desired, actual, now=time.time())
        t3 = time.perf_counter()
        in_workers = source.parsed_in_workers
    steps.update(desired=t1 - t0, read_actual=t2 - t1, make_plan=t3 - t2)
    # CPU of this process and of its children (the parse workers): the work done, which
    # other load on the machine stretches less than the wall time
    steps.update(cpu=_cpu() - cpu0, parsed_in_workers=in_workers)
    return plan, steps


def _cpu() -> float:
    mine = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return mine.ru_utime + mine.ru_stime + children.ru_utime + children.ru_stime


def floor(store: Store, values: list[tuple[str, str | None]]) -> None:
    """The same unit values put in transactions of 128 puts, nothing else: no compares,
    no fence, no inventory. What writing them costs from Python at the least."""
    ops = [Op.put(keys.unit_key(name), value or "") for name, value in values]
    for start in range(0, len(ops), ETCD_MAX_TXN_OPS):
        store.txn([], ops[start : start + ETCD_MAX_TXN_OPS])


def lead(store: Store) -> Compare:
    """Hold ``master`` as the daemon's leader would, and the fence its writes carry."""
    store.put(keys.MASTER, IDENTITY)
    return Compare.value_equals(keys.MASTER, IDENTITY)


def run(args: argparse.Namespace) -> list[Measurement]:
    units = args.units
    target = (lambda t: t) if units >= TARGET_UNITS else (lambda t: None)
    size = {"units": units}
    with tempfile.TemporaryDirectory(prefix="kaylee-bench-repo-") as tmp, private_etcd() as etcd:
        progress(f"setup: generating a repository of {units} unit files")
        repo, made = timed(lambda: UnitRepo(Path(tmp) / "repo", units))
        progress(f"setup: repository committed in {made.wall:.1f} s")
        parse = BatchSettings(workers=args.parse_workers)
        settings = SourceSettings(repo=str(repo.path), path=UNIT_DIR, parse=parse)

        plans, steps = [], []
        for i in range(args.runs):
            with store_at(etcd.endpoint, f"/cold-{i}") as store:
                (plan, split), t = timed(lambda: cold_plan(settings, store))
            if (creates := plan.count(Action.CREATE)) != units:
                raise SystemExit(f"cold plan: expected {units} creates, got {creates}")
            progress(f"cold plan {i + 1}/{args.runs}: {t.wall:.3f} s ({_steps(split)})")
            plans.append(t.wall)
            steps.append(split)
        if args.profile:
            with store_at(etcd.endpoint, "/profile") as store:
                _profile(lambda: cold_plan(settings, store))

        # Each run applies, then writes the floor right after, so that a ratio compares
        # two numbers of one moment; both with the collector paused, as the daemon's
        # sync applies.
        applies, floors, batches = [], [], 0
        values = [(e.name, e.new_value) for e in plan.entries if e.action == Action.CREATE]
        for i in range(args.runs):
            with store_at(etcd.endpoint, f"/apply-{i}") as store:
                actual = read_actual(store)
                fence = lead(store)
                with collector_paused():
                    done, t = timed(
                        lambda: apply_plan(store, plan, actual.inventory, fence=fence)  # noqa: B023
                    )
                if done.created != units or len(store.get_prefix(keys.UNITS)) != units:
                    raise SystemExit(f"full apply: expected {units} units, got {done}")
            batches = done.batches
            progress(f"full apply {i + 1}/{args.runs}: {t.wall:.3f} s ({batches} transactions)")
            applies.append(t.wall)
            with store_at(etcd.endpoint, f"/floor-{i}") as store, collector_paused():
                _, t = timed(lambda: floor(store, values))
            progress(f"floor {i + 1}/{args.runs}: {t.wall:.3f} s")
            floors.append(t.wall)

        incremental, inventory_bytes, shard_bytes = [], 0, 0
        with store_at(etcd.endpoint, "/incremental") as store, GitSource(settings) as source:
            # no periodic full sync inside the measurement (the daemon: every --resync)
            syncer = Syncer(source, store, SyncSettings(full_every=None), identity=IDENTITY)
            lead(store)
            first = syncer.sync_once()
            if not first.ok:
                raise SystemExit(f"first sync failed: {first.error}")
            shards = [len(s.value) for s in store.get_prefix(keys.OWNED)]
            header = store.get(keys.INVENTORY)
            inventory_bytes = sum(shards) + (len(header.value) if header else 0)
            shard_bytes = max(shards, default=0)  # what one changed unit rewrites, at most
            # The first sync after a full one reads back the keys that one wrote (all
            # 10,000: the view learns their revisions); the daemon pays it once per term.
            repo.change(units - 1)
            warm = syncer.sync_once()
            if not warm.ok:
                raise SystemExit(f"warm-up sync failed: {warm.error}")
            fulls = syncer.view.full_reads
            for i in range(args.runs):
                repo.change((i * 997) % units)  # a different file each time, not timed
                result, t = timed(syncer.sync_once)
                applied = result.applied
                if not (result.ok and applied and applied.updated == 1 and not applied.created):
                    raise SystemExit(f"one-file sync did not update one unit: {result}")
                progress(f"one-file sync {i + 1}/{args.runs}: {t.wall * 1000:.1f} ms")
                incremental.append(t.wall)
            if syncer.view.full_reads != fulls:
                raise SystemExit("a one-file sync read all of etcd: it was not incremental")
            if syncer.view.watched_reads < args.runs:
                raise SystemExit("a one-file sync read a range of etcd instead of its watch")

    split = {k: round(median([s[k] for s in steps]), 3) for k in steps[0]}
    return [
        Measurement(f"cold plan ({units:,} units)", tuple(plans), target=target(2.0),
                    extra={**size, **split}),
        Measurement(f"full apply ({units:,} units, empty etcd)", tuple(applies),
                    target=target(1.0), extra={**size, "transactions": batches}),
        Measurement(f"full apply / floor ({units:,} units)",
                    tuple(a / f for a, f in zip(applies, floors, strict=True)), unit="x",
                    target=target(2.0), extra={**size, "floor_s": round(median(floors), 3)}),
        Measurement(f"one-file sync ({units:,} units, warm)", tuple(incremental),
                    target=target(0.020), extra={**size, "inventory_bytes": inventory_bytes,
                           "largest_shard_bytes": shard_bytes}),
    ]  # fmt: skip


def _steps(split: dict[str, float]) -> str:
    return ", ".join(
        f"{k} {v:g}" if k == "parsed_in_workers" else f"{k} {v:.3f} s" for k, v in split.items()
    )


def _profile(fn: object) -> None:
    profile = cProfile.Profile()
    profile.runcall(fn)  # type: ignore[arg-type]
    pstats.Stats(profile, stream=sys.stderr).sort_stats("cumulative").print_stats(30)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--units", type=int, default=TARGET_UNITS, help="unit files (default 10000)")
    p.add_argument("--profile", action="store_true", help="cProfile one more cold plan (stderr)")
    p.add_argument(
        "--parse-workers", type=int, default=None,
        help="worker processes of a cold read (default: one fewer than the CPUs; 0: none)",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    doc = (__doc__ or "").splitlines()[0]
    return bench_main(doc, run, configure, argv, prog="python -m bench.repo_sync")


if __name__ == "__main__":
    raise SystemExit(main())
