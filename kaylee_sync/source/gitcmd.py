"""The git commands the source runs, through GitPython, with git's errors made ours.

Every local command goes through :class:`GitCommands`, which turns a ``GitError`` (or
an ``OSError``: git could not start) into a :class:`SourceError` whose message is the
one line of git's stderr that explains the failure, redacted — never the command line,
which GitPython puts in its own messages. Commands that talk to the remote are not run
here but by :mod:`kaylee_sync.source.netcmd`, which can kill them.

Blobs are read in bulk: one ``cat-file --batch-check`` for sizes (so a blob over 1 MiB
is never read), one ``cat-file --batch`` streaming contents one blob at a time.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import git
from git.exc import GitError

from kaylee_sync.source.credentials import redact
from kaylee_sync.source.errors import SourceError

# What git prints after ssh has said what went wrong; the line before is the useful one.
_GENERIC = (
    "fatal: Could not read from remote repository",
    "Please make sure you have the correct access rights",
    "and the repository exists",
)
_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
_MODE_TREE = "040000"
_ABSENT = "000000"  # git diff-tree's mode of a file that is not there
_NULL_OID = "0" * 40
# A tree object: entries of "<octal mode> <name>\0<20-byte id>", nothing else.
_TREE_ENTRY = re.compile(rb"([0-7]{5,6}) ([^\0]+)\0(.{20})", re.DOTALL)
_TREE = re.compile(rb"(?:[0-7]{5,6} [^\0]+\0.{20})*", re.DOTALL)
# Up to this many blobs are read through GitPython's persistent cat-file processes
# (a commit's few changed files); more are streamed by a batch process of their own.
_FEW_BLOBS = 16


class GitCommands:
    """One repository (``repo``) and the name it is shown by (``display``)."""

    def __init__(self, repo: git.Repo, display: str) -> None:
        self.repo = repo
        self.display = display
        # the raw entries of the trees the last diff_trees read, by tree id
        self._trees: dict[str, set[tuple[bytes, bytes, bytes]]] = {}

    def run(self, *args: str, **kwargs: Any) -> Any:
        try:
            return self.repo.git.execute(["git", *args], **kwargs)
        except (GitError, OSError) as exc:
            raise SourceError(f"git {args[0]} failed for {self.display}: {reason(exc)}") from exc

    def _status(self, *args: str) -> tuple[int, str, str]:
        """``git args…`` → (exit status, stdout, stderr), never raising for a non-zero one."""
        try:
            result: tuple[int, str, str] = self.repo.git.execute(
                ["git", *args], with_extended_output=True, with_exceptions=False
            )
        except (GitError, OSError) as exc:  # git could not even start (EMFILE, ENOMEM)
            raise SourceError(f"git {args[0]} failed for {self.display}: {reason(exc)}") from exc
        return result

    def rev_parse(self, name: str) -> str:
        """The commit ``name`` names, or "" — read from disk every time, never cached."""
        quick = self._commit_in_process(name)
        if quick:
            return quick
        status, out, err = self._status("rev-parse", "--verify", "--quiet", f"{name}^{{commit}}")
        if status == 0:
            return out.strip()
        if err.strip():  # --quiet silences "no such ref": this is git refusing to work
            raise SourceError(f"git rev-parse failed for {self.display}: {reason(err)}")
        return ""

    def _commit_in_process(self, name: str) -> str:
        """``rev_parse`` of a full commit id or a plain ref without starting a git: the
        ref's file (or packed-refs) read by GitPython, the object's type asked of the
        ``cat-file`` process GitPython keeps. "" whenever that is not plainly a commit
        (a tag to peel, a missing object, a ref format it does not read): git decides."""
        try:
            if _FULL_SHA.match(name):
                sha = name
            elif name == "HEAD" or name.startswith("refs/"):
                sha = git.SymbolicReference.dereference_recursive(self.repo, name)
            else:
                return ""
            info = self.repo.odb.info(bytes.fromhex(sha))
        except Exception:  # any doubt at all: git itself decides
            return ""
        return sha if info.type == b"commit" and _FULL_SHA.match(sha) else ""

    def current_branch(self) -> str:
        """The checked-out branch; "HEAD" when detached."""
        status, out, err = self._status("symbolic-ref", "--quiet", "--short", "HEAD")
        if status != 0 and err.strip():  # not a detached HEAD: git refused (ownership, …)
            raise SourceError(f"cannot read {self.display}: {reason(err)}")
        return out.strip() if status == 0 and out.strip() else "HEAD"

    def ls_tree(self, tree: str) -> Iterator[tuple[str, str, str]]:
        """``(mode, blob id, path)`` of every entry below ``tree``, recursively."""
        listing = self.run("ls-tree", "-r", "-z", tree, stdout_as_string=False)
        # One decode for the whole listing: the loop runs once per file of the tree.
        for record in os.fsdecode(listing).split("\0"):
            if record:
                meta, _, path = record.partition("\t")
                mode, _, oid = meta.split(" ")
                yield mode, oid, path

    def diff_tree(self, old: str, new: str) -> list[tuple[str, str, str, str]]:
        """``(old mode, new mode, new blob id, path)`` of every file that differs between
        the trees ``old`` and ``new``, recursively; a mode of ``000000`` means absent."""
        listing = self.run(
            "diff-tree", "-r", "-z", "--no-renames", "--no-commit-id", old, new,
            stdout_as_string=False,
        )  # fmt: skip
        records = os.fsdecode(listing).split("\0")
        changes = []
        for meta, path in zip(records[0::2], records[1::2], strict=False):
            old_mode, new_mode, _, new_oid, _ = meta.lstrip(":").split(" ")
            changes.append((old_mode, new_mode, new_oid, path))
        return changes

    def _blobs_in_process(self, oids: Sequence[str]) -> list[tuple[str, bytes]] | None:
        """A few blobs from GitPython's ``cat-file`` process (no new git); None if any
        is not a readable blob (the batch process then says which)."""
        out = []
        try:
            for oid in oids:
                stream = self.repo.odb.stream(bytes.fromhex(oid))
                data = stream.read()
                if stream.type != b"blob" or len(data) != stream.size:
                    return None
                out.append((oid, data))
        except Exception:  # the batch process below names what is wrong
            return None
        return out

    def diff_trees(self, old: str, new: str) -> list[tuple[str, str, str, str]]:
        """:meth:`diff_tree`, read in-process: tree objects come from GitPython's
        ``cat-file`` process and a subtree whose id is the same on both sides is skipped,
        so the cost is that of the trees on the changed paths. Falls back to
        ``git diff-tree`` if a tree is malformed or unreadable."""
        changes: list[tuple[str, str, str, str]] = []
        # The trees read by the diff before: the next commit's diff starts from them.
        seen, self._trees = self._trees, {}
        try:
            self._diff_trees(old, new, "", changes, seen)
        except Exception:  # whatever went wrong, git's own answer stands
            return self.diff_tree(old, new)
        changes.sort(key=lambda change: os.fsencode(change[3]))  # git's order
        return changes

    def _diff_trees(
        self,
        old: str | None,
        new: str | None,
        prefix: str,
        out: list[tuple[str, str, str, str]],
        seen: dict[str, set[tuple[bytes, bytes, bytes]]],
    ) -> None:
        before, after = self._tree_entries(old, seen), self._tree_entries(new, seen)
        # Entries equal on both sides (the bulk of a large directory) drop out as raw
        # bytes, in C; only what differs is decoded.
        gone, came = before - after, after - before
        was = {name: (_mode(mode), oid.hex()) for mode, name, oid in gone}
        now = {name: (_mode(mode), oid.hex()) for mode, name, oid in came}
        for raw in was.keys() | now.keys():
            if raw in (b".", b"..") or b"/" in raw:  # only git's own reader judges these
                raise ValueError(
                    f"a tree below {prefix or 'the top'} has an entry git would refuse"
                )
            old_entry, new_entry = was.get(raw), now.get(raw)
            path = prefix + os.fsdecode(raw)
            old_tree = old_entry is not None and old_entry[0] == _MODE_TREE
            new_tree = new_entry is not None and new_entry[0] == _MODE_TREE
            if old_tree or new_tree:  # -r: a subtree's files, each on its own
                if old_entry is not None and not old_tree:
                    out.append((old_entry[0], _ABSENT, _NULL_OID, path))
                if new_entry is not None and not new_tree:
                    out.append((_ABSENT, new_entry[0], new_entry[1], path))
                self._diff_trees(
                    old_entry[1] if old_entry is not None and old_tree else None,
                    new_entry[1] if new_entry is not None and new_tree else None,
                    path + "/",
                    out,
                    seen,
                )
            else:
                out.append(
                    (old_entry[0] if old_entry else _ABSENT, new_entry[0] if new_entry else _ABSENT,
                     new_entry[1] if new_entry else _NULL_OID, path)
                )  # fmt: skip

    def _tree_entries(
        self, tree: str | None, seen: dict[str, set[tuple[bytes, bytes, bytes]]]
    ) -> set[tuple[bytes, bytes, bytes]]:
        """The raw ``(mode, name, object id)`` entries of one tree object; none for None.
        ValueError unless the object is a well-formed tree (names are checked by the
        diff, which reads only those that differ)."""
        if tree is None:
            return set()
        entries = seen.get(tree)  # a tree's id names its content: what was read stands
        if entries is None:
            stream = self.repo.odb.stream(bytes.fromhex(tree))
            data = stream.read()
            if stream.type != b"tree" or not _TREE.fullmatch(data):
                raise ValueError(f"{tree} is not a well-formed tree")
            entries = set(_TREE_ENTRY.findall(data))
        self._trees[tree] = entries
        return entries

    def blob_sizes(self, oids: Sequence[str]) -> dict[str, int]:
        if len(oids) <= _FEW_BLOBS:
            try:
                return {oid: self.repo.odb.info(bytes.fromhex(oid)).size for oid in oids}
            except Exception:  # the batch process below names what is wrong
                pass
        with _object_list(oids) as stdin:
            out = self.run("cat-file", "--batch-check", istream=stdin)
        sizes = {}
        for line in out.splitlines():
            fields = line.split(" ")
            if len(fields) == 3:  # "<oid> missing" names a blob that is not there
                sizes[fields[0]] = int(fields[2])
        missing = set(oids) - set(sizes)
        if missing:
            raise SourceError(f"blob {min(missing)} is missing from {self.display}")
        return sizes

    def blob_contents(self, oids: Sequence[str]) -> Iterator[tuple[str, bytes]]:
        """Streams ``(oid, data)``: one blob in memory at a time, whatever their total."""
        if len(oids) <= _FEW_BLOBS:
            read = self._blobs_in_process(oids)
            if read is not None:
                yield from read
                return
        with _object_list(oids) as stdin:
            try:
                proc = self.repo.git.execute(
                    ["git", "cat-file", "--batch"], istream=stdin, as_process=True
                )
            except (GitError, OSError) as exc:
                raise SourceError(f"git cat-file failed for {self.display}: {reason(exc)}") from exc
            assert proc.proc is not None and proc.proc.stdout is not None
            out = proc.proc.stdout
            try:
                for oid in oids:
                    header = out.readline().split()
                    if len(header) != 3:
                        raise SourceError(f"blob {oid} is missing from {self.display}")
                    data = out.read(int(header[2]))
                    out.read(1)  # the newline after each object
                    yield oid, data
                proc.wait()
            except GitError as exc:
                raise SourceError(f"git cat-file failed for {self.display}: {reason(exc)}") from exc
            finally:
                # Closing our end also stops a git we abandon half-way (SIGPIPE).
                out.close()
                if proc.proc is not None and proc.proc.stderr is not None:
                    proc.proc.stderr.close()


def open_repo(path: Path, display: str) -> git.Repo:
    try:
        return git.Repo(path)
    except (GitError, OSError) as exc:
        # GitPython's errors name only the path; the missing part is the reason.
        raise SourceError(f"{display} is not a git repository") from exc


def init_clone(clone_dir: Path, url: str, display: str) -> None:
    """Create the bare clone ``clone_dir`` of ``url`` (empty until fetched), atomically.

    It is initialised next to its final place and renamed, so that a crash half-way
    leaves nothing that looks like a clone; losing the race to another process is fine.
    """
    clone_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = tempfile.mkdtemp(prefix=".init-", dir=clone_dir.parent)
    try:
        repo = git.Repo.init(staging, bare=True)
        repo.git.execute(["git", "config", "remote.origin.url", url])
        repo.close()
        os.rename(staging, clone_dir)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (clone_dir / "HEAD").exists():  # not a concurrent creator: a real fault
            raise
    except GitError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise SourceError(f"cannot create a clone of {display}: {reason(exc)}") from exc


def find_worktree(start: Path) -> Path | None:
    """The top of the git work tree that contains ``start``, or None (not in one)."""
    try:
        repo = git.Repo(start, search_parent_directories=True)
    except (GitError, OSError):
        return None
    try:
        return None if repo.bare or repo.working_tree_dir is None else Path(repo.working_tree_dir)
    finally:
        repo.close()


def reason(exc: GitError | OSError | str) -> str:
    """The line of git's stderr that says what went wrong, redacted; never the command."""
    if isinstance(exc, OSError):  # git did not start: the system said why
        return redact(exc.strerror or str(exc))
    stderr = exc if isinstance(exc, str) else getattr(exc, "stderr", "") or ""
    if isinstance(stderr, bytes):
        stderr = stderr.decode("utf-8", "replace")
    # GitPython wraps stderr as "\n  stderr: '<text>'".
    text = stderr.strip().removeprefix("stderr: '").removesuffix("'")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # ssh explains itself ("connect to host … refused", "Host key verification failed")
    # before git's generic "Could not read from remote repository" and its advice.
    specific = [line for line in lines if not line.startswith(_GENERIC)]
    fatal = [line for line in specific if line.startswith(("fatal:", "error:", "ERROR:"))]
    fallback = "no reason given" if isinstance(exc, str) else type(exc).__name__
    return redact((fatal or specific or lines or [fallback])[0].removeprefix("fatal: "))[:300]


@contextmanager
def _object_list(oids: Sequence[str]) -> Iterator[BinaryIO]:
    """A temporary file of object ids, one a line: the stdin of ``cat-file --batch``.

    A file, not a pipe, so that writing thousands of ids cannot block on a full pipe
    before git starts reading them.
    """
    with tempfile.TemporaryFile() as file:
        file.write("".join(f"{oid}\n" for oid in oids).encode())
        file.seek(0)
        yield file


def _mode(raw: bytes) -> str:
    """A tree entry's mode as diff-tree prints it (trees are stored as "40000")."""
    return raw.decode("ascii").rjust(6, "0")
