"""The Git source: clone and fetch a remote, resolve refs, read unit files from commits.

Commits are truth: :meth:`GitSource.desired` reads a commit's tree objects, never a
working tree, so a half-finished checkout or an uncommitted edit is never deployed. Only
:meth:`GitSource.worktree_desired` (``plan --worktree``, pre-commit) reads files on disk.

A remote is mirrored into a bare clone under ``cache_dir`` and refreshed with a forced,
pruning fetch: a force-pushed branch is simply followed, nothing is ever merged. A local
repository is read in place, and its refs are read anew on every call, so a commit made
a moment ago is seen at once.

Reading a commit of 10,000 files costs one ``git ls-tree -r`` (no ``--long``: the size
of a loose object costs a decompression) plus the blobs the parse cache has not seen;
the result is also remembered by the unit directory's tree id, so a commit that changes
nothing below the unit path costs two object lookups.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import git

from kaylee_sync.errors import NotFoundError, UsageError
from kaylee_sync.plan.model import DesiredState
from kaylee_sync.source.claims import Claims
from kaylee_sync.source.credentials import GitAuth, redact, split_url_credentials
from kaylee_sync.source.errors import SourceError, SourceUnavailable
from kaylee_sync.source.files import (
    MODE_GITLINK,
    MODE_LINK,
    DiskFile,
    Target,
    below,
    is_hidden,
    is_unit_name,
    link_target,
    read_disk,
    submodule_problem,
    symlink_problem,
)
from kaylee_sync.source.gitcmd import GitCommands, init_clone, open_repo
from kaylee_sync.source.netcmd import NetworkCommands
from kaylee_sync.source.settings import SourceSettings
from kaylee_sync.source.units import Result, UnitParser, assemble, oversize
from kaylee_sync.spec.loader import MAX_BYTES

_MEMO_TREES = 8  # the last few unit trees: the branch head, a plan's --against, a retry
_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
_REF_SAFE = re.compile(r"^[^\s\x00-\x1f\x7f-][^\s\x00-\x1f\x7f]*$")
_ABSENT = "000000"  # git diff-tree's mode of a file that is not there
_DIFF_UNSURE = frozenset({MODE_LINK, MODE_GITLINK})  # a diff alone cannot judge these


class GitSource:
    """One repository, branch and unit path. Its methods hold a lock: one caller at a time."""

    def __init__(
        self, settings: SourceSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self._clock = clock
        # the URL without its credentials (an ssh user name stays: it is an address)
        self.display_repo = redact(split_url_credentials(settings.repo)[0])
        self._lock = threading.RLock()
        self._parser = UnitParser(settings.unit_prefix, batch=settings.parse)
        # unit-path tree id -> (root tree id when symlinks mattered, the tree's claims)
        self._memo: OrderedDict[str, tuple[str | None, Claims]] = OrderedDict()
        # commit id -> (unit-path tree id or None, root tree id), for the last few commits
        self._commit_trees: OrderedDict[str, tuple[str | None, str]] = OrderedDict()
        self._git: GitCommands | None = None
        self._auth: GitAuth | None = None
        self._net: NetworkCommands | None = None
        # the last fetch's failure: (message, seconds it took, when it ended); None: it worked
        self._failed: tuple[str, float, float] | None = None
        for label, file in (
            ("SSH key", settings.credentials.ssh_key_file),
            ("known_hosts", settings.credentials.known_hosts_file),
        ):
            if file is not None and not os.path.isfile(file):
                raise UsageError(f"{label} file {file} does not exist")
        self.local_path: Path | None
        if settings.is_remote:
            self.local_path = None
            url, user, password = split_url_credentials(settings.repo)
            self._url = url
            self._auth = GitAuth(settings.credentials, user, password, min(settings.timeout, 30))
            self._clone_dir = settings.cache_dir / _cache_name(url)
            self._net = NetworkCommands(str(self._clone_dir), self.display_repo)
            self.branch = settings.branch or ""  # the remote's HEAD, known after a fetch
        else:
            self.local_path = Path(settings.repo).absolute()
            self._git = GitCommands(self._open_local(self.local_path), self.display_repo)
            self.branch = settings.branch or self._git.current_branch()

    def fetch(self) -> str:
        """Bring the remote's branches and tags in (forced, pruned); the branch head.

        One deadline (``settings.timeout``) covers the whole fetch. A fetch that failed
        after T seconds is not tried again for T seconds: a call within that time fails
        at once with the same reason, so that a remote which accepts connections and
        never answers costs one timeout, not one per caller (the standby's fetch, then
        the new leader's sync), before the failure is recorded.
        """
        with self._lock:
            if self.local_path is None:
                self._fetch_remote()
            return self.resolve()

    def cancel(self) -> None:
        """Stop a fetch in progress and refuse every later one: the process is stopping.

        Callable from any thread, and it never waits for the source's lock, which the
        hung fetch holds; the fetch then fails at once (SourceUnavailable).
        """
        if self._net is not None:
            self._net.cancel()

    def _fetch_remote(self) -> None:
        assert self._auth is not None and self._net is not None
        if self._failed is not None:
            message, took, ended = self._failed
            wait = took - (self._clock() - ended)
            if wait > 0 and not self._net.cancelled:
                raise SourceUnavailable(f"{message} (next attempt in {math.ceil(wait)} s)")
        started = self._clock()
        deadline = started + self.settings.timeout
        env = self._auth.environment
        try:
            self._clone()
            self._network(
                deadline,
                "fetch",
                "--quiet",
                "--prune",
                "origin",
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
                env=env,
            )
            if not self.branch:
                heads = self._network(deadline, "ls-remote", "--symref", "origin", "HEAD", env=env)
                self.branch = self._default_branch(heads)
        except SourceUnavailable as exc:
            ended = self._clock()
            self._failed = (str(exc), ended - started, ended)
            raise
        except OSError as exc:  # the cache directory: not writable, full, out of fds
            raise SourceError(
                f"cannot fetch {self.display_repo} into {self._clone_dir}: {exc.strerror or exc}"
            ) from exc
        self._failed = None

    def _network(self, deadline: float, *args: str, env: dict[str, str]) -> str:
        assert self._net is not None
        left = deadline - self._clock()
        timeout = self.settings.timeout
        if left <= 0:
            raise SourceUnavailable(
                f"cannot {args[0]} {self.display_repo}: no answer within {timeout:g} s"
            )
        return self._net.run(args, env=env, timeout=left, limit=timeout)

    def resolve(self, ref: str | None = None) -> str:
        """The full commit id of ``ref`` (branch, ``origin/x``, tag, sha); None: the branch."""
        with self._lock:
            commands = self._commands()
            if ref is None:
                candidates = [self._branch_ref()]
                what = f"branch '{self.branch}'"
            else:
                if not _REF_SAFE.match(ref):
                    raise NotFoundError(f"'{ref}' is not a valid branch, tag or commit")
                # For a remote, a branch name means the remote's branch.
                remote = self.local_path is None and not _FULL_SHA.match(ref)
                candidates = [f"refs/remotes/origin/{ref}", ref] if remote else [ref]
                what = f"'{ref}'"
            for candidate in candidates:
                sha = commands.rev_parse(candidate)
                if sha:
                    return sha
            raise NotFoundError(f"{what} is not a branch, tag or commit in {self.display_repo}")

    def desired(self, commit: str) -> DesiredState:
        """Every unit file below the unit path at ``commit``, read from its tree objects."""
        return self.desired_since(None, commit)[0]

    def desired_since(
        self, since: str | None, commit: str
    ) -> tuple[DesiredState, frozenset[str] | None]:
        """:meth:`desired` of ``commit``, and the names of the units whose file results
        may differ from those at the commit ``since`` (None: not known, so all may).

        The difference comes from ``git diff-tree`` of the two unit trees: only changed
        files are read, and a tree read is remembered by its id, so a commit that
        changes one of 10,000 files costs one diff and one parse. Anything a diff cannot
        settle alone — a symlink or submodule on either side (their verdicts depend on
        other paths), a unit path that appears or disappears, a tree not remembered —
        is read whole, and the names are then None.
        """
        with self._lock:
            commands = self._commands()
            sha = self.resolve(commit)
            try:
                head = git.Commit(commands.repo, bytes.fromhex(sha))
                read, touched = None, None
                if since is not None:
                    read, touched = self._read_change(commands, since, head)
                if read is None:
                    read = self._read_commit(commands, head)
                committed_at = float(head.committed_date)
            except OSError as exc:  # GitPython's own git processes could not start
                raise SourceError(
                    f"cannot read {sha[:12]} in {self.display_repo}: {exc.strerror or exc}"
                ) from exc
            state = DesiredState(
                repo=self.display_repo,
                branch=self.branch,
                path=self.settings.path,
                commit=sha,
                units=read.units.copy(),
                problems=read.problems,
                committed_at=committed_at,
            )
            return state, touched

    def worktree_files(self) -> list[str]:
        """Repo-relative paths below the unit path that git would consider (tracked, and
        untracked but not ignored) — files, links and submodules; hidden ones left out."""
        with self._lock:
            commands = self._worktree()
            args = ["ls-files", "-z", "--cached", "--others", "--exclude-standard", "--full-name"]
            if self.settings.path:
                args += ["--", f":(top,literal){self.settings.path}"]
            paths = set()
            for raw in commands.run(*args, stdout_as_string=False).split(b"\0"):
                # An untracked nested repository is listed once, as "dir/".
                path = os.fsdecode(raw).rstrip("/")
                rel = below(path, self.settings.path) if path else None
                if rel and not is_hidden(rel):
                    paths.add(path)
            return sorted(paths)

    def worktree_desired(self) -> DesiredState:
        """Like :meth:`desired`, but from the files on disk (``plan --worktree``)."""
        with self._lock:
            commands = self._worktree()
            root = Path(str(commands.repo.working_tree_dir))
            files = [DiskFile(rel, root / rel, root) for rel in self.worktree_files()]
            units, problems = assemble(read_disk(files, self._parser))
            return DesiredState(
                repo=self.display_repo,
                branch=self.branch,
                path=self.settings.path,
                commit=commands.rev_parse("HEAD"),
                units=units,
                problems=problems,
            )

    def watch_paths(self) -> list[Path]:
        """Files whose change means the branch moved (local repositories; [] for remotes).

        Git replaces them by renaming a ``.lock`` file over them: watch their directories.
        """
        with self._lock:
            if self._git is None or self.local_path is None:
                return []
            git_dir = Path(self._git.repo.git_dir)
            common = Path(self._git.repo.common_dir)
            paths = [git_dir / "HEAD", common / "packed-refs"]
            if self.branch != "HEAD":
                paths.append(common / "refs" / "heads" / self.branch)
            return paths

    def git_commands(self) -> GitCommands:
        """The repository's git commands, for :mod:`.signatures` (issue 15)."""
        with self._lock:
            return self._commands()

    def close(self) -> None:
        self.cancel()
        with self._lock:
            if self._git is not None:
                self._git.repo.close()  # ends GitPython's persistent cat-file processes
            if self._auth is not None:
                self._auth.close()

    def __enter__(self) -> GitSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def parsed_files(self) -> int:
        """How many unit files were parsed so far (not served from the cache)."""
        return self._parser.parsed

    @property
    def parsed_in_workers(self) -> int:
        """How many of those were parsed by worker processes (a cold read's batch)."""
        return self._parser.parsed_in_workers

    # -- reading a commit --------------------------------------------------------------

    def _unit_tree(self, commit: git.Commit) -> Any:
        """The unit path's tree at ``commit``; None if there is none."""
        unit_path = self.settings.path
        root = commit.tree
        try:
            tree = root / unit_path if unit_path else root
        except KeyError:
            return None  # no unit directory at this commit: it holds no units
        if tree.type != "tree":
            raise SourceError(
                f"unit path '{unit_path}' is not a directory at commit {commit.hexsha[:12]} "
                f"in {self.display_repo}"
            )
        return tree

    def _tree_ids(self, commit: git.Commit) -> tuple[str | None, str]:
        """The ids of the unit path's tree (None: no such tree) and the root tree at
        ``commit``, remembered for the last few commits: an incremental read needs them
        for the commit before, which the sync before read already."""
        known = self._commit_trees.get(commit.hexsha)
        if known is None:
            tree = self._unit_tree(commit)
            known = (tree.hexsha if tree is not None else None, commit.tree.hexsha)
            self._commit_trees[commit.hexsha] = known
            if len(self._commit_trees) > _MEMO_TREES:
                self._commit_trees.popitem(last=False)
        return known

    def _remembered(self, tree: str, root: str) -> Claims | None:
        """A read of ``tree`` remembered; equal trees, equal results (those that depend
        on a symlink's target also depend on the root tree)."""
        memo = self._memo.get(tree)
        if memo is None or memo[0] not in (None, root):
            return None
        self._memo.move_to_end(tree)
        return memo[1]

    def _remember(self, tree: str, root: str | None, claims: Claims) -> Claims:
        self._memo[tree] = (root, claims)
        if len(self._memo) > _MEMO_TREES:
            self._memo.popitem(last=False)
        return claims

    def _read_commit(self, commands: GitCommands, commit: git.Commit) -> Claims:
        tree, root = self._tree_ids(commit)  # also remembered for the next, incremental, read
        if tree is None:
            return Claims()
        claims = self._remembered(tree, root)
        if claims is not None:
            return claims
        results, has_links = self._tree_results(commands, commit.tree, tree)
        return self._remember(tree, root if has_links else None, Claims.of(results))

    def _read_change(
        self, commands: GitCommands, since: str, commit: git.Commit
    ) -> tuple[Claims | None, frozenset[str] | None]:
        """The read of ``commit`` made from the remembered read of ``since`` and a diff of
        the two unit trees, with the names it touches; (None, None) if it cannot be."""
        if not _FULL_SHA.match(since):
            return None, None
        tree, root = self._tree_ids(commit)
        old_tree, _ = self._tree_ids(git.Commit(commands.repo, bytes.fromhex(since)))
        if tree is None or old_tree is None:
            return None, None
        old = self._memo.get(old_tree)
        if old is None or old[0] is not None:  # not remembered, or symlinks mattered
            return None, None
        before = old[1]
        if tree == old_tree:
            return self._remembered(tree, root) or before, frozenset()
        changed: list[tuple[str, str]] = []  # (path, blob; "" when the file is gone)
        for old_mode, new_mode, oid, rel in commands.diff_trees(old_tree, tree):
            if old_mode in _DIFF_UNSURE or new_mode in _DIFF_UNSURE:
                return None, None
            if not is_hidden(rel) and is_unit_name(rel):
                path = f"{self.settings.path}/{rel}" if self.settings.path else rel
                changed.append((path, "" if new_mode == _ABSENT else oid))
        claims = self._remembered(tree, root)
        if claims is None:
            results = self._results([(path, oid) for path, oid in changed if oid], commands)
            claims, _ = before.changed([path for path, _ in changed], results)
            self._remember(tree, None, claims)
        touched = {
            result.name
            for path, _ in changed
            for result in (before.results.get(path), claims.results.get(path))
            if result is not None and result.name is not None
        }
        return claims, frozenset(touched)

    def _tree_results(
        self, commands: GitCommands, root: Any, tree: str
    ) -> tuple[list[Result], bool]:
        """The result of every unit file in ``tree``; True if a symlink was looked at."""
        unit_path = self.settings.path
        has_links = False
        results: list[Result] = []
        candidates: list[tuple[str, str]] = []  # (path, blob) of unit files
        for mode, oid, rel in commands.ls_tree(tree):
            if is_hidden(rel):
                continue
            path = f"{unit_path}/{rel}" if unit_path else rel
            if mode == MODE_GITLINK:
                results.append(submodule_problem(path))
            elif mode == MODE_LINK:
                has_links = True
                results += self._link_problem(commands, root, path, oid)
            elif is_unit_name(rel):
                candidates.append((path, oid))
        return results + self._results(candidates, commands), has_links

    def _results(self, candidates: list[tuple[str, str]], commands: GitCommands) -> list[Result]:
        """The results of the unit files ``(path, blob)``: cached, or read and parsed."""
        results: list[Result] = []
        unread = []
        for key, hit in zip(candidates, self._parser.cached_many(candidates), strict=True):
            if hit is None:
                unread.append(key)
            else:
                results.append(hit)
        return results + self._read_units(commands, unread)

    def _read_units(self, commands: GitCommands, unread: list[tuple[str, str]]) -> list[Result]:
        if not unread:
            return []
        sizes = commands.blob_sizes(sorted({oid for _, oid in unread}))
        results: list[Result] = []
        small: dict[str, list[str]] = {}  # blob -> paths (one blob may sit at many paths)
        for path, oid in unread:
            if sizes[oid] > MAX_BYTES:
                results.append(self._parser.remember(path, oid, oversize(path, oid)))
            else:
                small.setdefault(oid, []).append(path)
        blobs = commands.blob_contents(list(small))
        files = ((path, oid, data) for oid, data in blobs for path in small[oid])
        return results + self._parser.parse_many(files, sum(map(len, small.values())))

    def _link_problem(self, commands: GitCommands, root: Any, path: str, oid: str) -> list[Result]:
        if is_unit_name(path):
            found = symlink_problem(path, Target.FILE, oid, unit_named=True)
        elif commands.blob_sizes([oid])[oid] > 4096:  # no OS has link targets this long
            found = symlink_problem(path, Target.OUTSIDE, oid, unit_named=False)
        else:
            data = dict(commands.blob_contents([oid]))[oid]
            resolved = link_target(path, os.fsdecode(data))
            target = Target.OUTSIDE if resolved is None else _tree_kind(root, resolved)
            found = symlink_problem(path, target, oid, unit_named=False)
        return [found] if found else []

    # -- refs and repositories ---------------------------------------------------------

    def _branch_ref(self) -> str:
        if self.local_path is not None:
            return "HEAD" if self.branch == "HEAD" else f"refs/heads/{self.branch}"
        if not self.branch:
            raise SourceError(f"the default branch of {self.display_repo} is not known yet")
        return f"refs/remotes/origin/{self.branch}"

    def _default_branch(self, ls_remote: str) -> str:
        for line in ls_remote.splitlines():
            ref, _, name = line.partition("\t")
            if ref.startswith("ref: refs/heads/") and name == "HEAD":
                return ref.removeprefix("ref: refs/heads/")
        raise SourceError(
            f"{self.display_repo} has no default branch (its HEAD is missing or detached); "
            "name one with --branch"
        )

    def _commands(self) -> GitCommands:
        """The repository to read: the local one, or the clone once it exists."""
        if self._git is None:
            if not (self._clone_dir / "HEAD").exists():
                raise SourceError(f"{self.display_repo} has not been fetched yet")
            clone = open_repo(self._clone_dir, self.display_repo)
            self._git = GitCommands(clone, self.display_repo)
        return self._git

    def _clone(self) -> GitCommands:
        if self._git is None and not (self._clone_dir / "HEAD").exists():
            init_clone(self._clone_dir, self._url, self.display_repo)
        return self._commands()

    def _worktree(self) -> GitCommands:
        if self._git is None or self.local_path is None or self._git.repo.bare:
            raise UsageError(f"{self.display_repo} has no working tree to read")
        return self._git

    def _open_local(self, path: Path) -> git.Repo:
        repo = open_repo(path, self.display_repo)
        # A sub-directory of a work tree would silently shift the unit path: refuse it.
        top = repo.working_tree_dir if not repo.bare else repo.git_dir
        if top is not None and Path(top).resolve() != path.resolve():
            repo.close()
            raise SourceError(f"{self.display_repo} is inside the repository at {top}; use that")
        return repo


def _tree_kind(root: Any, path: str) -> Target:
    try:
        obj = root / path
    except KeyError:
        return Target.MISSING
    if obj.type == "blob":
        return Target.LINK if obj.mode == 0o120000 else Target.FILE
    return Target.DIRECTORY  # a tree, or a submodule


def _cache_name(url: str) -> str:
    """``<last path component>-<hash>``: readable in ``ls``, unique per URL."""
    tail = re.sub(r"[^A-Za-z0-9._-]", "_", url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1])
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return f"{tail.removesuffix('.git')[:40] or 'repo'}-{digest}"
