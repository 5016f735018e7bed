"""Real git repositories for tests, built in tmp dirs with the git command line.

Author, committer and dates are pinned so commits are reproducible; every test that
needs a repository of unit files uses :class:`GitRepo` rather than inventing its own.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from kaylee_sync.spec import to_json
from kaylee_sync.spec.model import App, UnitSpec

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.invalid",
    "GIT_COMMITTER_NAME": "Test Committer",
    "GIT_COMMITTER_EMAIL": "committer@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
}


def unit_yaml(name: str, image: str = "example.com/app:1", replicas: int | None = 2) -> str:
    """A small valid unit file (:func:`unit_json` is what etcd holds for it)."""
    lines = [f"name: {name}"]
    if replicas is not None:
        lines.append(f"replicas: {replicas}")
    lines += ["apps:", f"  - image: {image}"]
    return "\n".join(lines) + "\n"


def unit_json(name: str, image: str = "example.com/app:1", replicas: int | None = 2) -> str:
    """The canonical JSON that ``unit_yaml(name, image, replicas)`` is stored as."""
    return to_json(UnitSpec(name=name, replicas=replicas or 0, apps=(App(image=image),)))


def two_units(path: Path) -> GitRepo:
    """A repository with units/web.yaml and units/api.yaml (images …/web:1, …/api:1)."""
    repo = GitRepo(path)
    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:1"))
    repo.write("units/api.yaml", unit_yaml("api", "example.com/api:1"))
    repo.commit("two units")
    return repo


class GitRepo:
    """A working repository on branch ``main`` (``bare=True``: a bare one to push to)."""

    def __init__(self, path: Path, *, bare: bool = False) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self._ticks = 0
        self.git("init", "-q", "-b", "main", *(["--bare"] if bare else []))

    def git(self, *args: str) -> str:
        self._ticks += 1
        stamp = f"@{1_700_000_000 + self._ticks} +0000"
        env = {**os.environ, **GIT_ENV, "GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}
        done = subprocess.run(
            ["git", *args], cwd=self.path, env=env, check=True, capture_output=True, text=True
        )
        return done.stdout.strip()

    def write(self, relpath: str, text: str | bytes) -> Path:
        target = self.path / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            target.write_bytes(text)
        else:
            target.write_text(text)
        return target

    def remove(self, relpath: str) -> None:
        self.git("rm", "-q", "-r", relpath)

    def commit(self, message: str = "change", *, add: bool = True) -> str:
        """Commit everything in the working tree; returns the new commit id."""
        if add:
            self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.head()

    def head(self, ref: str = "HEAD") -> str:
        return self.git("rev-parse", ref)
