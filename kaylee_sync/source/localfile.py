"""Reading one unit file from disk, safely: the only place a unit file is opened by path.

The spec layer parses bytes and does no I/O; this is where ``kaylee run FILE``,
``kaylee-sync render FILE``, ``validate`` and ``--worktree`` plans get those bytes. A unit
file is untrusted: a symbolic link is never followed (it could point at /etc/shadow), a
FIFO or device is never opened for reading (it could block forever or never end), and at
most 1 MiB + 1 byte is read whatever the file claims its size is.
"""

from __future__ import annotations

import os
import stat

from kaylee_sync.errors import Issue, SpecError
from kaylee_sync.spec.loader import MAX_BYTES, load_unit_and_policy
from kaylee_sync.spec.model import UnitSpec
from kaylee_sync.spec.policy import UnitPolicy


class NotRegularFile(OSError):
    """What :func:`read_regular` found is not a regular file (any more)."""


def read_regular(path: str | os.PathLike[str]) -> bytes:
    """At most MAX_BYTES + 1 bytes of a regular file, never following a symlink.

    O_NOFOLLOW closes the gap between a caller's lstat and this open (a file swapped for
    a symlink); O_NONBLOCK keeps a swapped-in FIFO from blocking the open.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise NotRegularFile(0, "not a regular file")
        return f.read(MAX_BYTES + 1)


def load_unit_file(path: str | os.PathLike[str], display_name: str | None = None) -> UnitSpec:
    """Read and load a unit file; symlinks, non-regular and over-1-MiB files are refused."""
    return load_unit_file_and_policy(path, display_name)[0]


def load_unit_file_and_policy(
    path: str | os.PathLike[str], display_name: str | None = None
) -> tuple[UnitSpec, UnitPolicy]:
    """:func:`load_unit_file`, with the file's rollout policy (``rollout:``/``health:``)."""
    name = display_name if display_name is not None else os.fspath(path)
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise _refused(name, "is a symbolic link; unit files must be regular files")
        if not stat.S_ISREG(st.st_mode):
            raise _refused(name, "is not a regular file")
        if st.st_size > MAX_BYTES:
            raise _refused(name, f"is larger than {MAX_BYTES} bytes (1 MiB); refusing to read it")
        data = read_regular(path)
    except NotRegularFile:
        raise _refused(name, "is not a regular file") from None
    except OSError as exc:
        raise _refused(name, f"cannot be read: {exc.strerror or exc}") from exc
    return load_unit_and_policy(data, name)


def _refused(filename: str, reason: str) -> SpecError:
    return SpecError([Issue(filename, 0, "", reason)])
