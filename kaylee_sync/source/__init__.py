"""The source layer: Git in, :class:`~kaylee_sync.plan.model.DesiredState` out.

Clone or fetch a remote (or read a local repository in place), resolve a ref to a
commit, and read every unit file below the unit path at that commit — from its tree
objects, never from a working tree (except :meth:`GitSource.worktree_desired`).

Public surface: :class:`GitSource`, :class:`SourceSettings`, :class:`GitCredentials`,
:func:`redact`, the file rules shared with ``kaylee-sync validate`` (:func:`read_disk`,
:func:`walk_directory`, :func:`assemble`, :class:`UnitParser`) and the errors
(:class:`SourceError`, :class:`SourceUnavailable`). GitPython never leaves this package.
"""

from kaylee_sync.source.credentials import GitCredentials, redact
from kaylee_sync.source.errors import SourceError, SourceUnavailable
from kaylee_sync.source.files import DiskFile, is_unit_name, read_disk, walk_directory
from kaylee_sync.source.gitcmd import find_worktree
from kaylee_sync.source.gitsource import GitSource
from kaylee_sync.source.settings import SourceSettings, default_cache_dir
from kaylee_sync.source.units import UnitParser, assemble

__all__ = [
    "DiskFile",
    "GitCredentials",
    "GitSource",
    "SourceError",
    "SourceSettings",
    "SourceUnavailable",
    "UnitParser",
    "assemble",
    "default_cache_dir",
    "find_worktree",
    "is_unit_name",
    "read_disk",
    "redact",
    "walk_directory",
]
