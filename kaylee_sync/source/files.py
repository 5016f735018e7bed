"""Which entries of a tree (or a directory on disk) are unit files, and reading them safely.

The rules are the same for a commit's tree and for the working tree, so ``desired``,
``worktree_desired`` and ``kaylee-sync validate`` cannot disagree about a file:

* below the unit path, every ``*.yaml`` / ``*.yml`` is a unit file; entries whose name (or
  a directory's name, below the unit path) starts with "." are not looked at, so
  ``.pre-commit-config.yaml`` and ``.github/`` can live next to units;
* a symbolic link is never followed. One named like a unit file is a problem, and so is
  one to a directory (or outside the repository, where we cannot tell): its units would
  otherwise silently not be deployed. Other symlinks (``README -> ../README``) are ignored;
* a submodule (or a nested repository on disk) is a problem: its files are not read;
* a file over 1 MiB is refused before it is read.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from kaylee_sync.plan.model import FileProblem
from kaylee_sync.source.localfile import read_regular
from kaylee_sync.source.units import Result, UnitParser, git_blob_id, oversize, problem
from kaylee_sync.spec.loader import MAX_BYTES

UNIT_SUFFIXES = (".yaml", ".yml")
MODE_LINK = "120000"
MODE_GITLINK = "160000"


class Target(Enum):
    """What a symbolic link points at."""

    FILE = "file"
    MISSING = "missing"
    DIRECTORY = "directory"
    LINK = "link"  # another symlink (in a tree: not resolved further)
    OUTSIDE = "outside"  # absolute, or out of the repository


def is_unit_name(path: str) -> bool:
    return path.endswith(UNIT_SUFFIXES)


def is_hidden(relpath: str) -> bool:
    """True when a component of ``relpath`` (relative to the unit path) starts with "."."""
    return relpath.startswith(".") or "/." in relpath


def below(path: str, unit_path: str) -> str | None:
    """``path`` relative to ``unit_path`` (both repo-relative), or None when outside it."""
    if not unit_path:
        return path
    if path.startswith(unit_path + "/"):
        return path[len(unit_path) + 1 :]
    return None


def link_target(path: str, target: str) -> str | None:
    """The repo-relative path a symlink at ``path`` points to; None if it leaves the repo."""
    if target.startswith("/"):
        return None
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    return None if joined == ".." or joined.startswith("../") else joined


def symlink_problem(
    path: str, target: Target, blob: str | None, *, unit_named: bool
) -> FileProblem | None:
    if unit_named:
        reason = "is a symbolic link; unit files must be regular files (links are not followed)"
    elif target is Target.DIRECTORY:
        reason = (
            "is a symbolic link to a directory; units are only read from real "
            "directories (links are not followed)"
        )
    elif target is Target.LINK:
        reason = "is a symbolic link to another link; links are not followed"
    elif target is Target.OUTSIDE:
        reason = "is a symbolic link out of the repository; links are not followed"
    else:
        return None  # a link to a file that is not a unit file: none of our business
    return problem(path, reason, blob)


def submodule_problem(path: str, blob: str | None = None) -> FileProblem:
    return problem(
        path,
        "is a submodule (or a nested repository); files inside it are not read — "
        "keep unit files in this repository",
        blob,
    )


@dataclass(frozen=True)
class DiskFile:
    """A file on disk that may be a unit file."""

    path: str  # the name used in results and issues
    location: Path  # where it is
    root: Path  # a symlink resolving outside this directory is "out of the repository"
    explicit: bool = False  # named by the user: read whatever its name, report if missing


def read_disk(files: Iterable[DiskFile], parser: UnitParser) -> list[Result]:
    """Results for the unit files among ``files``, by the same rules as a commit's tree.

    A result's blob is ``worktree:<git blob id>``: not a committed blob, but equal
    contents give equal ids, so an unchanged file is not parsed twice.
    """
    results: list[Result] = []
    for file in files:
        result = _read_one(file, parser)
        if result is not None:
            results.append(result)
    return results


def _read_one(file: DiskFile, parser: UnitParser) -> Result | None:
    unit_named = file.explicit or is_unit_name(file.path)
    try:
        st = os.lstat(file.location)
    except FileNotFoundError:
        return problem(file.path, "does not exist") if file.explicit else None
    except OSError as exc:
        return problem(file.path, f"cannot be read: {exc.strerror or exc}")
    if stat.S_ISLNK(st.st_mode):
        return symlink_problem(file.path, _disk_target(file), None, unit_named=unit_named)
    if stat.S_ISDIR(st.st_mode):
        return submodule_problem(file.path)
    if not unit_named:
        return None
    if not stat.S_ISREG(st.st_mode):
        return problem(file.path, "is not a regular file")
    if st.st_size > MAX_BYTES:
        return oversize(file.path, None)
    try:
        data = read_regular(file.location)
    except OSError as exc:
        return problem(file.path, f"cannot be read: {exc.strerror or exc}")
    blob = git_blob_id(data)
    return parser.parse(file.path, blob, data, label="worktree:" + blob)


def _disk_target(file: DiskFile) -> Target:
    real = os.path.realpath(file.location)
    root = os.path.realpath(file.root)
    if os.path.commonpath([real, root]) != root:
        return Target.OUTSIDE
    if os.path.isdir(real):
        return Target.DIRECTORY
    return Target.FILE if os.path.exists(real) else Target.MISSING


def walk_directory(directory: Path, display: str) -> list[DiskFile]:
    """Every entry below ``directory`` that may be a unit file (for ``validate DIR``).

    Hidden entries are skipped, symlinked directories are listed (not entered) so that
    they are reported; ``display`` is the directory as the user wrote it.
    """
    files: list[DiskFile] = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = os.path.relpath(dirpath, directory)
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(Path(dirpath, d))]:
            if name.startswith("."):
                continue
            shown = os.path.normpath(os.path.join(display, rel, name))
            files.append(DiskFile(shown, Path(dirpath, name), directory))
    return files
