"""Random histories against ``--verify-signatures``: the safety claim, as repeatable trials.

Each trial (one seed) builds a random history — commits signed by the allowed key, by
another key or not at all, resets to older commits and brand-new unrelated histories —
and syncs at random points. An oracle that knows how each commit was made (never asking
the code under test) says what must happen at each sync:

- every commit the sync would bring in (the head, and every commit reachable from it but
  not from the last synced commit) was signed by the allowed key → the sync succeeds and
  etcd holds the head;
- otherwise → the sync is refused, names one of the bad commits, and etcd is unchanged.

``SIGNATURE_TRIALS=<n>`` runs more trials than the default few (docs/reliability.md
records a long run).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaylee_sync.settings import EtcdSettings
from kaylee_sync.source import GitSource, SourceSettings
from kaylee_sync.source.signatures import SignaturePolicy
from kaylee_sync.store import Store
from kaylee_sync.sync.actual import read_actual
from kaylee_sync.sync.syncer import Syncer, SyncSettings
from tests.gitrepo import GitRepo, unit_yaml
from tests.test_signatures import SshKey, signed, snapshot, ssh_key

TRIALS = int(os.environ.get("SIGNATURE_TRIALS", "4"))
STEPS = 12


class History:
    """A repository whose every commit is recorded with how it was signed."""

    def __init__(self, path: Path, alice: SshKey, mallory: SshKey, rng: random.Random) -> None:
        self.repo = GitRepo(path)
        self.alice, self.mallory, self.rng = alice, mallory, rng
        self.good: set[str] = set()  # signed by alice: the only allowed key
        self.commits: list[str] = []
        self._n = 0

    def commit(self) -> str:
        self._n += 1
        self.repo.write("units/web.yaml", unit_yaml("web", f"example.com/web:{self._n}"))
        kind = self.rng.choice(["alice", "alice", "alice", "mallory", "none"])
        if kind == "none":
            sha = self.repo.commit(f"unsigned {self._n}")
        else:
            sha = signed(self.repo, self.alice if kind == "alice" else self.mallory, str(self._n))
        if kind == "alice":
            self.good.add(sha)
        self.commits.append(sha)
        return sha

    def step(self) -> None:
        move = self.rng.choice(["commit", "commit", "commit", "reset", "orphan"])
        if move == "reset" and self.commits:
            self.repo.git("reset", "-q", "--hard", self.rng.choice(self.commits))
        elif move == "orphan":
            self.repo.git("checkout", "-q", "--orphan", "fresh")
            self.commit()
            self.repo.git("branch", "-q", "-M", "fresh", "main")
        else:
            self.commit()

    def incoming(self, last: str | None) -> set[str]:
        """What a sync from ``last`` brings in (git's ancestry; our own signature record)."""
        head = self.repo.head()
        if last is None:
            return {head}
        return {head, *self.repo.git("rev-list", head, f"^{last}", "--").split()}


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[tuple[SshKey, SshKey, Path]]:
    alice, mallory = ssh_key(tmp_path, "alice"), ssh_key(tmp_path, "mallory")
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"alice@example.invalid {alice.public}\n")
    yield alice, mallory, allowed


def run_trial(
    seed: int, root: Path, endpoint: str, prefix: str, keys: tuple[SshKey, SshKey, Path]
) -> tuple[int, int]:
    """One random history; (syncs accepted, syncs refused). AssertionError on a violation."""
    alice, mallory, allowed = keys
    rng = random.Random(seed)
    history = History(root / f"repo-{seed}", alice, mallory, rng)
    history.commit()
    accepted = refused = 0
    settings = EtcdSettings(endpoints=(endpoint,), prefix=f"{prefix}/trial-{seed}")
    with (
        Store(settings) as store,
        GitSource(SourceSettings(repo=str(history.repo.path), path="units")) as source,
    ):
        syncer = Syncer(source, store, SyncSettings(signatures=SignaturePolicy(allowed)))
        for _ in range(STEPS):
            inventory = read_actual(store).inventory
            last = inventory.commit if inventory is not None else None
            expected = history.incoming(last)
            before = snapshot(store)
            result = syncer.sync_once()
            head = history.repo.head()
            where = f"seed {seed}, head {head[:12]}, last {last and last[:12]}"
            if expected <= history.good:
                assert result.ok, f"{where}: a fully signed range was refused: {result.error}"
                after = read_actual(store).inventory
                assert after is not None and after.commit == head, where
                accepted += 1
            else:
                assert not result.ok and result.stage == "signature", f"{where}: deployed"
                assert snapshot(store) == before, f"{where}: etcd changed"
                named = {c[:12] for c in expected - history.good}
                assert any(f"commit {c}:" in result.error for c in named), where
                refused += 1
            history.step()
    return accepted, refused


@pytest.mark.parametrize("seed", range(TRIALS))
def test_a_random_history_deploys_exactly_the_fully_signed_ranges(
    seed: int,
    tmp_path: Path,
    etcd_endpoint: str,
    etcd_prefix: str,
    keys: tuple[SshKey, SshKey, Path],
) -> None:
    accepted, refused = run_trial(seed, tmp_path, etcd_endpoint, etcd_prefix, keys)
    print(f"trial {seed}: {accepted} syncs accepted, {refused} refused")  # for long runs (-s -n 0)
    assert accepted + refused == STEPS
