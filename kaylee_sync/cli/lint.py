"""``kaylee-sync validate`` and ``kaylee-sync schema``: checking unit files before a commit.

``validate`` reads files from disk with the very rules the daemon applies to a commit
(``kaylee_sync.source``: symlinks, submodules, LFS pointers, 1 MiB, duplicate names,
fleet's line limit), so a file it accepts is a file the daemon deploys. It is what the
pre-commit hook runs (``.pre-commit-hooks.yaml``), with the staged file names as args.
``schema`` prints the JSON Schema for editors (yaml-language-server).

The lead registers both on the ``kaylee-sync`` group: ``cli.add_command(validate)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from kaylee_sync.cli.common import echo_json, format_option, unit_prefix_option
from kaylee_sync.errors import UsageError
from kaylee_sync.plan.model import DesiredUnit, FileProblem
from kaylee_sync.source import (
    DiskFile,
    GitSource,
    SourceSettings,
    UnitParser,
    assemble,
    find_worktree,
    read_disk,
    walk_directory,
)
from kaylee_sync.spec import unit_schema


@click.command()
@click.argument("paths", nargs=-1, metavar="[PATH]...", type=click.Path(path_type=Path))
@click.option(
    "--path",
    "unit_path",
    envvar="KAYLEE_PATH",  # the Git option's variable: the same directory
    default="",
    show_default=True,
    help="Without PATH arguments: the unit directory inside the git repository around the "
    'current directory ("" = the repository root).',
)
@format_option("text", "json")
@unit_prefix_option()
def validate(paths: tuple[Path, ...], unit_path: str, fmt: str, unit_prefix: str) -> None:
    """Check unit files on disk: files, or directories searched for *.yaml and *.yml.

    Without PATH, checks the unit directory (--path) of the git repository around the
    current directory: the files git would commit (tracked, and untracked but not
    ignored), or every unit file below the current directory outside a repository.
    Prints every problem as FILE:LINE: FIELD: REASON, a summary on stderr, and exits 1
    if any file is invalid. Nothing is read from or written to etcd.

    \b
    Examples:
      kaylee-sync validate
      kaylee-sync validate units/web.yaml units/db.yaml
      kaylee-sync validate --format json units/ | jq '.problems'
    """
    try:
        files = _explicit_files(paths) if paths else _default_files(unit_path)
        results = read_disk(files, UnitParser(unit_prefix))
    except OSError as exc:  # a name too long, a directory that may not be listed
        name = str(exc.filename or "")[:200]
        raise UsageError(f"cannot read {name}: {exc.strerror}") from None
    units, problems = assemble(results)
    if fmt == "json":
        echo_json(_document(len(results), units, problems))
    else:
        for found in problems:
            for issue in found.issues:
                click.echo(str(issue))
    checked = len(results)
    click.echo(
        f"{checked} file{'' if checked == 1 else 's'} checked, {len(problems)} invalid", err=True
    )
    if problems:
        raise click.exceptions.Exit(1)


@click.command()
def schema() -> None:
    """Print the JSON Schema of a unit file, for editors and linters.

    \b
    Examples:
      kaylee-sync schema > unit.schema.json
      # then, first line of a unit file, for yaml-language-server:
      # yaml-language-server: $schema=./unit.schema.json
    """
    echo_json(unit_schema())


def _explicit_files(paths: tuple[Path, ...]) -> list[DiskFile]:
    """Named files are checked whatever their name; directories are searched."""
    files: list[DiskFile] = []
    seen: set[str] = set()
    cwd = Path.cwd()
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            found = walk_directory(path, str(path))
        else:
            found = [DiskFile(str(path), path, cwd, explicit=True)]
        for file in found:
            # "validate units units/web.yaml" checks web.yaml once, not as its own duplicate.
            key = os.path.abspath(file.location)
            if key not in seen:
                seen.add(key)
                files.append(file)
    return files


def _default_files(unit_path: str) -> list[DiskFile]:
    cwd = Path.cwd()
    root = find_worktree(cwd)
    if root is None:
        directory = cwd / unit_path
        if not directory.is_dir():
            raise UsageError(f"unit directory '{unit_path}' does not exist in {cwd}")
        return walk_directory(directory, unit_path or ".")
    settings = SourceSettings(str(root), path=unit_path)
    if not (root / settings.path).is_dir():
        raise UsageError(f"unit directory '{settings.path}' does not exist in {root}")
    with GitSource(settings) as source:
        listed = source.worktree_files()
    # Names relative to the current directory, as an editor or a terminal wants them.
    return [DiskFile(os.path.relpath(root / rel, cwd), root / rel, root) for rel in listed]


def _document(
    checked: int, units: dict[str, DesiredUnit], problems: tuple[FileProblem, ...]
) -> dict[str, Any]:
    return {
        "files": checked,
        "valid": sorted(unit.path for unit in units.values()),
        "problems": [
            {"file": i.file, "line": i.line, "field": i.field, "reason": i.reason}
            for found in problems
            for i in found.issues
        ],
    }
