"""Where the unit files come from: one repository, one branch, one directory in it.

A frozen dataclass like the other settings (see ``kaylee_sync.settings``): command-line
options and ``KAYLEE_*`` variables only fill it in, ``__post_init__`` validates it, so a
settings object built in a test is checked exactly like one built from flags.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path

from kaylee_sync.errors import UsageError
from kaylee_sync.render import DEFAULT_UNIT_PREFIX
from kaylee_sync.source.credentials import (
    GitCredentials,
    redact,
    register_secret,
    split_url_credentials,
)
from kaylee_sync.source.parsepool import DEFAULT_BATCH, BatchSettings

# scp-like syntax ("git@host:org/repo.git", "host:repo"): a colon before any slash.
_SCP_LIKE = re.compile(r"^[^/:]+:")
# What ``git check-ref-format --branch`` refuses, roughly; git itself has the last word.
_BAD_BRANCH = re.compile(r"(^[-/.])|(\.\.)|([\x00-\x20\x7f~^:?*\[\\])|(@\{)|([/.]$)|(\.lock$)")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/kaylee-sync/repos`` (``~/.cache/…`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kaylee-sync" / "repos"


def is_remote(repo: str) -> bool:
    """True for a URL (``https://``, ``ssh://``, ``file://``, scp-like); False for a path."""
    if "://" in repo:
        return True
    # git's own rule: "host:path" is ssh unless a slash comes before the colon — and a
    # path that exists ("./a:b" or "a:b" on disk) stays a path.
    return bool(_SCP_LIKE.match(repo)) and not os.path.exists(repo)


def normalise_unit_path(path: str) -> str:
    """``"units/"``, ``"./units"`` → ``"units"``; ``""`` and ``"."`` mean the whole tree."""
    if path.startswith("/") or "\\" in path or "\0" in path:
        raise UsageError(f"unit path '{path}' must be relative to the repository root, with '/'")
    clean = posixpath.normpath(path) if path else "."
    if clean == ".." or clean.startswith("../"):
        raise UsageError(f"unit path '{path}' must stay inside the repository")
    return "" if clean == "." else clean


@dataclass(frozen=True)
class SourceSettings:
    """The repository that holds the unit files, and how to read it."""

    repo: str
    """URL (``https://``, ``ssh://``, ``git@host:path``, ``file://``) — cloned into
    ``cache_dir`` and fetched — or the path of a local repository, read in place."""

    branch: str | None = None
    """Branch to follow. None: the remote's default branch (its HEAD), or the branch a
    local repository has checked out when kaylee-sync starts."""

    path: str = ""
    """Directory of the unit files inside the repository, searched recursively for
    ``*.yaml`` and ``*.yml``. "" (default): the whole tree."""

    cache_dir: Path = field(default_factory=default_cache_dir)
    """Where remote repositories are cloned (one bare clone per URL). Kept between runs
    so that a restart, or a standby taking over, only fetches what is new."""

    credentials: GitCredentials = field(default_factory=GitCredentials)
    """SSH key / known_hosts / HTTPS token for the remote."""

    timeout: float = 120.0
    """Seconds a clone or fetch may take before it is killed. Default 120 s: a first clone
    of a large repository over a slow link, not a hung connection forever."""

    unit_prefix: str = DEFAULT_UNIT_PREFIX
    """Prefix of the fleet unit names; only used to check that a unit renders (fleet's
    line limit depends on the unit names)."""

    parse: BatchSettings = DEFAULT_BATCH
    """When a batch of unit files (a cold read: a new leader, ``plan``, ``--once``) is
    parsed in worker processes, and how many (see :mod:`.parsepool`)."""

    def __post_init__(self) -> None:
        if not self.repo or self.repo.startswith("-") or any(c in self.repo for c in "\r\n\0"):
            raise UsageError(f"invalid repository '{redact(self.repo)}'")
        # The URL's password is a secret from now on, even in a repr or a traceback.
        register_secret(split_url_credentials(self.repo)[2])
        if self.branch is not None and (not self.branch or _BAD_BRANCH.search(self.branch)):
            raise UsageError(f"invalid branch name '{self.branch}'")
        object.__setattr__(self, "path", normalise_unit_path(self.path))
        if not self.timeout > 0:
            raise UsageError(f"the git timeout must be positive, not {self.timeout}")

    def __repr__(self) -> str:
        return (
            f"SourceSettings(repo={redact(self.repo)!r}, branch={self.branch!r}, "
            f"path={self.path!r}, cache_dir={self.cache_dir!r}, "
            f"credentials={self.credentials!r}, timeout={self.timeout!r}, "
            f"unit_prefix={self.unit_prefix!r}, parse={self.parse!r})"
        )

    @property
    def is_remote(self) -> bool:
        return is_remote(self.repo)
