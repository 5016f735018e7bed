"""Reading 10,000 unit files: a cold read, then a commit that touches one of them.

Timing bounds here are loose (a loaded CI machine must not fail them); the numbers are
printed (``pytest -s``) and the real guarantee is checked exactly: after a one-file
commit, exactly one file is parsed again. The commits are made with ``git fast-import``:
writing 10,000 files to a work tree would take longer than the reads being measured.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from kaylee_sync.source import GitSource, SourceSettings
from tests.gitrepo import GIT_ENV, GitRepo, unit_yaml

FILES = 10_000


def fast_import(repo: GitRepo, files: dict[str, str], message: str, parent: bool) -> str:
    """Commit ``files`` (path -> text) on main, on top of main when ``parent``."""
    chunks = [b"commit refs/heads/main\n", b"committer T <t@example.invalid> 1700000000 +0000\n"]
    chunks.append(b"data %d\n%s\n" % (len(message), message.encode()))
    if parent:
        chunks.append(b"from refs/heads/main^0\n")
    for path, text in files.items():
        data = text.encode()
        chunks.append(b"M 100644 inline %s\ndata %d\n%s\n" % (path.encode(), len(data), data))
    subprocess.run(
        ["git", "fast-import", "--quiet"],
        input=b"".join(chunks),
        cwd=repo.path,
        env={**os.environ, **GIT_ENV},
        check=True,
    )
    return repo.head("main")


@pytest.mark.slow
def test_ten_thousand_units_cold_then_one_changed(tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "repo", bare=True)
    units = {
        f"units/team-{i % 50}/svc-{i:05d}.yaml": unit_yaml(f"svc-{i:05d}") for i in range(FILES)
    }
    first = fast_import(repo, units, "10k units", parent=False)

    with GitSource(SourceSettings(str(repo.path), path="units")) as source:
        started = time.perf_counter()
        cold = source.desired(source.resolve())
        cold_s = time.perf_counter() - started
        assert cold.commit == first
        assert len(cold.units) == FILES and cold.problems == ()

        changed = {"units/team-7/svc-00007.yaml": unit_yaml("svc-00007", "example.com/app:2")}
        second = fast_import(repo, changed, "one change", parent=True)
        parsed = source.parsed_files
        started = time.perf_counter()
        warm = source.desired(source.resolve())
        incremental_s = time.perf_counter() - started

        assert warm.commit == second
        assert source.parsed_files - parsed == 1
        assert warm.units["svc-00007"].spec.apps[0].image == "example.com/app:2"
        print(f"\n{FILES} files: cold {cold_s:.2f} s, one-file commit {incremental_s:.3f} s")
        assert cold_s < 15
        assert incremental_s < 1.5
