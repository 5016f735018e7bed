"""Git reads without a git process (source/gitcmd.py) give git's own answers.

An incremental sync resolves its commit, diffs two unit trees and reads the few changed
blobs through GitPython's persistent ``cat-file`` processes instead of starting five
``git`` processes. Each such read is held here to the answer of the git command it
replaces, on real repositories: random histories for the tree diff, and every kind of
name for ``rev_parse``.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaylee_sync.errors import SourceError
from kaylee_sync.source.gitcmd import GitCommands, open_repo
from tests.gitrepo import GitRepo

HISTORIES = int(os.environ.get("DIFF_HISTORIES", "6"))
NAMES = ["a", "a.txt", "a-b", "b", "z", "é.yaml", "dir", "dir.yaml"]


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return GitRepo(tmp_path / "repo")


@pytest.fixture
def commands(repo: GitRepo) -> Iterator[GitCommands]:
    repo.write("seed", "seed\n")
    repo.commit("seed")
    opened = open_repo(repo.path, "test repo")
    yield GitCommands(opened, "test repo")
    opened.close()


def _tree(repo: GitRepo, commit: str) -> str:
    return repo.git("rev-parse", f"{commit}^{{tree}}")


def _remove(target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()


def _random_change(rng: random.Random, repo: GitRepo) -> None:
    """Adds, edits, deletes, mode changes, symlinks and file <-> directory swaps, at up
    to three levels, among names whose tree order differs from plain sorting."""
    for _ in range(rng.randint(1, 6)):
        rel = "/".join(rng.choice(NAMES) for _ in range(rng.randint(1, 3)))
        target = repo.path / rel
        for parent in reversed(list(target.relative_to(repo.path).parents)[:-1]):
            if (repo.path / parent).is_symlink() or (repo.path / parent).is_file():
                _remove(repo.path / parent)  # a file becomes a directory
        what = rng.random()
        if what < 0.15:
            _remove(target)
        elif what < 0.25:
            _remove(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(rng.choice(["../x", "a", "/etc/passwd"]))
        elif what < 0.35 and target.is_file() and not target.is_symlink():
            target.chmod(target.stat().st_mode ^ 0o100)
        else:
            _remove(target)  # a directory becomes a file
            repo.write(rel, f"{rel} {rng.random()}\n")
    repo.commit("random change")


@pytest.mark.parametrize("seed", range(HISTORIES))
def test_the_tree_diff_is_git_diff_tree_on_random_histories(
    seed: int, repo: GitRepo, commands: GitCommands
) -> None:
    rng = random.Random(seed)
    commits = [repo.head()]
    for _ in range(12):
        _random_change(rng, repo)
        commits.append(repo.head())
    pairs = list(itertools.pairwise(commits))
    pairs += [(rng.choice(commits), rng.choice(commits)) for _ in range(12)]
    differing = 0
    for old, new in pairs:
        a, b = _tree(repo, old), _tree(repo, new)
        ours, gits = commands.diff_trees(a, b), commands.diff_tree(a, b)
        assert ours == gits, (old, new)
        differing += bool(gits)
    assert differing >= len(pairs) // 2  # the histories do change things


def test_a_tree_git_would_refuse_is_not_read_in_process(
    repo: GitRepo, commands: GitCommands
) -> None:
    repo.write("units/web.yaml", "x\n")
    old = _tree(repo, repo.commit())
    # An entry named "..": git never writes one, but a hostile push can carry it.
    raw = b"100644 ..\0" + bytes.fromhex(repo.git("rev-parse", "HEAD:seed"))
    bad = subprocess.run(
        ["git", "hash-object", "-t", "tree", "-w", "--literally", "--stdin"],
        cwd=repo.path, input=raw, capture_output=True, check=True,
    ).stdout.decode().strip()  # fmt: skip
    with pytest.raises(ValueError, match="refuse"):
        commands._diff_trees(old, bad, "", [], {})
    # git's own diff-tree then decides; whatever it says is what the sync gets
    assert commands.diff_trees(old, bad) == commands.diff_tree(old, bad)


def test_rev_parse_in_process_answers_as_git(repo: GitRepo, commands: GitCommands) -> None:
    first = repo.head()
    repo.write("b", "b\n")
    second = repo.commit("second")
    repo.git("tag", "-a", "-m", "annotated", "v1", first)
    repo.git("tag", "light", second)
    repo.git("branch", "side", first)
    tag_object = repo.git("rev-parse", "v1")
    names = ["HEAD", "refs/heads/main", "refs/heads/side", "refs/tags/v1", "refs/tags/light",
             first, second, tag_object, "refs/heads/nope", "0" * 40, "main", "v1"]  # fmt: skip
    absent = ("refs/heads/nope", "0" * 40)
    expected = {name: repo.git("rev-parse", "--verify", "--quiet", f"{name}^{{commit}}")
                if name not in absent else "" for name in names}  # fmt: skip
    assert {name: commands.rev_parse(name) for name in names} == expected
    assert commands.rev_parse("refs/tags/v1") == first  # an annotated tag: git peels it
    repo.git("pack-refs", "--all")  # refs only in packed-refs now
    assert commands.rev_parse("refs/heads/side") == first
    repo.git("update-ref", "refs/heads/side", second)  # a loose ref again, newer than packed
    assert commands.rev_parse("refs/heads/side") == second


def test_few_blobs_are_read_as_the_batch_reads_them(repo: GitRepo, commands: GitCommands) -> None:
    repo.write("one", "1\n")
    repo.write("two", b"\x00\xff binary\n")
    repo.commit()
    oids = [repo.git("rev-parse", f"HEAD:{name}") for name in ("one", "two", "seed")]
    few = dict(commands.blob_contents(oids))
    assert few == {oids[0]: b"1\n", oids[1]: b"\x00\xff binary\n", oids[2]: b"seed\n"}
    assert commands.blob_sizes(oids) == {oid: len(data) for oid, data in few.items()}
    missing = "1" * 40
    with pytest.raises(SourceError, match=f"blob {missing} is missing"):
        commands.blob_sizes([oids[0], missing])
    with pytest.raises(SourceError, match=f"blob {missing} is missing"):
        dict(commands.blob_contents([missing]))
