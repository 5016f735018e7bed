"""Incremental and full syncs reach identical etcd state (issue 14).

Two syncers follow the same repository into two prefixes of one etcd: one syncs
incrementally (a diff of the last synced tree, only the etcd keys written since its last
read, only the units either touches planned), the other reads and plans everything at
every sync. Between syncs a random history happens to both: commits that add, edit,
rename, duplicate, break, fix and delete unit files, change only a rollout policy, add a
symlink, delete most of the units (the prune guard refuses), and hand-made writes in
etcd — drift, a deleted unit, ``kaylee run``, suspensions that start, expire and end,
restarts, an inventory shard edited by hand. After every step the two plans must be the
same entry for entry, and the two prefixes must hold the same keys and values.

``INCREMENTAL_TRIALS`` (default 3 histories of 40 steps) sets how many histories run.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from kaylee_sync.plan.model import Plan
from kaylee_sync.settings import EtcdSettings
from kaylee_sync.source import GitSource, SourceSettings
from kaylee_sync.store import Store, keys
from kaylee_sync.sync.inventory import shard_of
from kaylee_sync.sync.suspend import resume, suspend
from kaylee_sync.sync.syncer import Syncer, SyncResult, SyncSettings
from tests.gitrepo import GitRepo, unit_json, unit_yaml

TRIALS = int(os.environ.get("INCREMENTAL_TRIALS", "3"))
STEPS = 40
POLICY = "rollout:\n  canary: 1\n  autoPromote: true\nhealth:\n  etcdKey: /s/${KAYLEE_ID}\n"


class Clock:
    """One clock for both syncers and the hand-made writes: equal times, equal values."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Side:
    store: Store
    source: GitSource
    syncer: Syncer


@pytest.fixture
def sides(
    tmp_path: Path, etcd_endpoint: str, etcd_prefix: str
) -> Iterator[tuple[GitRepo, Clock, Side, Side]]:
    repo = GitRepo(tmp_path / "repo")
    repo.write("README.md", "units below\n")
    repo.commit("start")
    clock = Clock()
    made: list[Side] = []
    for suffix, every in (("inc", None), ("full", 0.0)):
        settings = EtcdSettings(endpoints=(etcd_endpoint,), prefix=f"{etcd_prefix}-{suffix}")
        store = Store(settings)
        source = GitSource(SourceSettings(repo=str(repo.path), path="units"))
        sync = SyncSettings(max_prune=5, max_prune_percent=30.0, full_every=every)
        made.append(Side(store, source, Syncer(source, store, sync, identity=None, clock=clock)))
    yield repo, clock, made[0], made[1]
    for side in made:
        side.source.close()
        side.store.close()


class History:
    """Random steps on one repository and, identically, on both prefixes."""

    def __init__(self, rng: random.Random, repo: GitRepo, clock: Clock, both: tuple[Side, Side]):
        self.rng, self.repo, self.clock, self.both = rng, repo, clock, both
        self.files: dict[str, str] = {}  # path -> unit name declared (valid or not)
        self.serial = 0

    def _new_name(self) -> str:
        self.serial += 1
        return f"u{self.serial}"

    def _path(self, name: str) -> str:
        return f"units/{self.rng.choice(['', 'team-a/', 'team-b/'])}{name}.yaml"

    def _valid(self, name: str, policy: bool = False) -> str:
        image = f"example.com/{name}:{self.rng.randint(1, 4)}"
        return unit_yaml(name, image, self.rng.choice([1, 2, 3])) + (POLICY if policy else "")

    def commit_step(self, late: bool = False) -> str:
        rng, repo = self.rng, self.repo
        files = sorted(self.files)
        kinds = ["add", "add", "edit", "edit", "rename", "delete", "invalid", "fix", "policy"]
        kinds += ["duplicate", "nothing"] + (["mass-delete"] if rng.random() < 0.1 else [])
        # a symlink makes every later sync a full one (a diff cannot judge links): late only
        kinds += ["link"] if late and rng.random() < 0.3 else []
        kind = rng.choice(kinds) if files else "add"
        if kind == "add":
            for _ in range(rng.randint(1, 3)):
                name = self._new_name()
                path = self._path(name)
                repo.write(path, self._valid(name, policy=rng.random() < 0.3))
                self.files[path] = name
        elif kind in ("edit", "fix", "policy"):
            path = rng.choice(files)
            repo.write(path, self._valid(self.files[path], policy=kind == "policy"))
        elif kind == "rename":
            path = rng.choice(files)
            self.serial += 1
            target = self._path(self.files[path]).replace(".yaml", f"-{self.serial}.yaml")
            (repo.path / target).parent.mkdir(parents=True, exist_ok=True)
            repo.git("mv", path, target)
            self.files[target] = self.files.pop(path)
        elif kind == "delete":
            for path in rng.sample(files, min(len(files), rng.randint(1, 2))):
                repo.remove(path)
                del self.files[path]
        elif kind == "invalid":
            path = rng.choice(files)
            broken = rng.choice(["apps: [\n", "replicas: -1\napps:\n  - image: x:1\n"])
            repo.write(path, f"name: {self.files[path]}\n{broken}")
        elif kind == "duplicate":
            path = rng.choice(files)
            self.serial += 1
            copy = path.replace(".yaml", f"-copy{self.serial}.yaml")
            repo.write(copy, (repo.path / path).read_text())
            self.files[copy] = self.files[path]
        elif kind == "link":
            link = repo.path / f"units/link-{self.serial}.yaml"
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to("../README.md")
        elif kind == "mass-delete":
            for path in files[: max(1, len(files) * 2 // 3)]:
                repo.remove(path)
                del self.files[path]
        elif kind == "nothing":
            repo.write("README.md", f"units below ({self.serial})\n")
            self.serial += 1
        repo.commit(kind)
        return kind

    def etcd_step(self) -> str:
        rng = self.rng
        names = sorted(set(self.files.values()))
        kinds = ["drift", "drop", "run", "suspend", "resume", "restart", "time", "disown"]
        kind = rng.choice(kinds)
        if kind != "time" and not names:
            return "none"
        name = rng.choice(names) if names else ""
        until = self.clock.now + rng.choice([30.0, 600.0])  # the same for both sides
        for side in self.both:
            store = side.store
            if kind == "drift":
                store.put_unit(name, unit_json(name, "hand.example/edit:9"))
            elif kind == "drop":
                store.delete_unit(name)
            elif kind == "run":
                store.put_unit(f"run-{len(names)}", unit_json("run", "hand.example/run:1"))
            elif kind == "suspend":
                suspend(store, name, who="ops", reason="test", until=until, now=self.clock.now)
            elif kind == "resume":
                resume(store, name)
            elif kind == "restart":
                store.bump_restart(name)
            elif kind == "disown":  # an inventory shard edited by hand: one unit taken out
                _disown(store, name)
        if kind == "time":
            self.clock.now += 60.0  # suspensions of 30 s run out
        return f"{kind} {name}".strip()


def _disown(store: Store, name: str) -> None:
    key = keys.owned_key(shard_of(name))
    stored = store.get(key)
    if stored is not None:
        doc = json.loads(stored.value)
        doc["units"].pop(name, None)
        doc.get("paths", {}).pop(name, None)
        store.put(key, json.dumps(doc))


def _entries(plan: Plan | None) -> list[object]:
    """The plan's entries without the mod revisions (the prefixes' revisions differ)."""
    if plan is None:
        return []
    return [replace(e, mod_revision=0, policy_revision=0) for e in plan.entries]


def _summary(result: SyncResult) -> tuple[object, ...]:
    plan = result.plan
    return (
        result.ok,
        result.error.replace("-inc", "").replace("-full", ""),
        result.counts,
        _entries(plan),
        plan.problems if plan else (),
        (plan.prune_refused, plan.prune_hold, plan.prune_released) if plan else (),
    )


def _difference(a: SyncResult, b: SyncResult) -> str:
    """What differs between two results, briefly (for the failure message)."""
    one, two = _summary(a), _summary(b)
    if one[3] != two[3]:
        x, y = {e.name: e for e in one[3]}, {e.name: e for e in two[3]}  # type: ignore[attr-defined]
        names = sorted(n for n in x.keys() | y.keys() if x.get(n) != y.get(n))
        return "; ".join(f"{n}: {x.get(n)} != {y.get(n)}" for n in names[:3])
    return " != ".join(str(part) for part in (one, two))


def _held(store: Store) -> dict[str, bytes]:
    """Every key of the prefix but the sync status (it holds durations) and the view's
    mark (only the incremental side writes one), and its value."""
    own = (keys.STATUS, keys.VIEW_MARK)
    return {s.key: s.value for s in store.get_prefix("") if s.key not in own}


@pytest.mark.parametrize("trial", range(TRIALS))
def test_incremental_and_full_syncs_reach_identical_etcd_state(
    trial: int, sides: tuple[GitRepo, Clock, Side, Side]
) -> None:
    repo, clock, inc, full = sides
    history = History(random.Random(1400 + trial), repo, clock, (inc, full))
    for step in range(STEPS):
        late = step >= STEPS - 8
        what = history.commit_step(late) if step % 3 != 2 else history.etcd_step()
        a, b = inc.syncer.sync_once(), full.syncer.sync_once()
        where = f"trial {trial}, step {step} ({what})"
        assert _summary(a) == _summary(b), f"{where}: {_difference(a, b)}"
        assert _held(inc.store) == _held(full.store), where
        assert a.ok, f"{where}: {a.error}"
    # The test means something only if most syncs were incremental, and none of the full ones.
    assert inc.syncer.incremental_syncs >= STEPS // 3, inc.syncer.incremental_syncs
    assert full.syncer.incremental_syncs == 0 and full.syncer.full_syncs == STEPS
    assert inc.syncer.incremental_syncs + inc.syncer.full_syncs == STEPS  # every sync planned
    # ... and most of those learned what changed from the watch, not from a range read.
    assert inc.syncer.view.watched_reads >= STEPS // 4, inc.syncer.view.watched_reads
