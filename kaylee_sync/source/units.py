"""From the bytes of unit files to units and problems — the same for commits and for disk.

:class:`UnitParser` turns one file into a :class:`DesiredUnit` or a :class:`FileProblem`
and remembers the answer by blob id (a bounded LRU), so a commit that touches one of
10,000 files parses one file. :func:`assemble` then applies the rule that needs every
file at once: two files declaring the same unit are both rejected.

A problem still names the unit it declared when that much can be read safely
(:func:`declared_name`), so the planner can leave that unit's etcd entry alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable

from yaml.nodes import MappingNode, ScalarNode

from kaylee_sync.errors import Issue, SpecError
from kaylee_sync.plan.model import DesiredUnit, FileProblem
from kaylee_sync.render import DEFAULT_UNIT_PREFIX, render_issues
from kaylee_sync.source.claims import Claims
from kaylee_sync.source.parsepool import (
    DEFAULT_BATCH,
    BatchSettings,
    BatchStats,
    parse_batch,
    worker_count,
)
from kaylee_sync.spec import load_unit_and_policy, policy_to_json, to_json
from kaylee_sync.spec.codec import json_hash
from kaylee_sync.spec.loader import MAX_BYTES, compose_node
from kaylee_sync.spec.schema import NAME

Result = DesiredUnit | FileProblem

LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"
CACHE_ENTRIES = 100_000  # ~ a few hundred bytes each: tens of MB at worst, never unbounded
_NAME = re.compile(NAME)
_STR = "tag:yaml.org,2002:str"


def problem(
    path: str, reason: str, blob: str | None = None, name: str | None = None
) -> FileProblem:
    """A file-level problem (no line, no field) in one call."""
    return FileProblem(path, blob, (Issue(path, 0, "", reason),), name)


def git_blob_id(data: bytes) -> str:
    """The id git gives ``data`` as a blob, so an unchanged file on disk hits the cache."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def declared_name(data: bytes, filename: str) -> str | None:
    """The top-level ``name:`` string of a file that failed to load, or None.

    Uses the loader's composer (libyaml, size capped by the caller, nesting limited) and
    reads only the top-level keys: aliases are never expanded, so a YAML bomb costs
    nothing here. A name that is not a valid unit name is not returned.
    """
    try:
        root = compose_node(data.decode("utf-8"), filename)
    except (SpecError, UnicodeDecodeError):
        return None
    if not isinstance(root, MappingNode):
        return None
    names = [
        value.value
        for key, value in root.value
        if isinstance(key, ScalarNode)
        and key.tag == _STR
        and key.value == "name"
        and isinstance(value, ScalarNode)
        and value.tag == _STR
    ]
    if len(names) == 1 and _NAME.match(names[0]):
        return str(names[0])
    return None


class UnitParser:
    """Parses unit files, remembering each result by (blob id, path) in a bounded LRU.

    The path is part of the key because issues name the file: the same blob under two
    names gives two results. ``unit_prefix`` feeds the render check (fleet's line limit).
    """

    def __init__(
        self,
        unit_prefix: str = DEFAULT_UNIT_PREFIX,
        max_entries: int = CACHE_ENTRIES,
        batch: BatchSettings = DEFAULT_BATCH,
    ) -> None:
        self.unit_prefix = unit_prefix
        self.max_entries = max_entries
        self.batch = batch
        self.parsed_in_workers = 0  # of ``parsed``: by worker processes (parse_many)
        self.last_batch: BatchStats | None = None  # what the last parse_many in workers did
        self._cache: OrderedDict[tuple[str, str], Result] = OrderedDict()
        self._lock = threading.Lock()
        self.parsed = 0  # files actually parsed (not served from the cache), for tests/metrics

    def cached(self, path: str, blob: str) -> Result | None:
        with self._lock:
            result = self._cache.get((blob, path))
            if result is not None:
                self._cache.move_to_end((blob, path))
            return result

    def cached_many(self, keys: list[tuple[str, str]]) -> list[Result | None]:
        """:meth:`cached` for many ``(path, blob)`` pairs under one lock."""
        cache = self._cache
        found: list[Result | None] = []
        with self._lock:
            for path, blob in keys:
                result = cache.get((blob, path))
                if result is not None:
                    cache.move_to_end((blob, path))
                found.append(result)
        return found

    def remember(self, path: str, blob: str, result: Result) -> Result:
        with self._lock:
            self._cache[(blob, path)] = result
            self._cache.move_to_end((blob, path))
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return result

    def parse(self, path: str, blob: str, data: bytes, label: str | None = None) -> Result:
        """The unit in ``data`` (the file ``path``, blob id ``blob``), or its problems.

        ``label`` is the blob id the result carries when it differs from ``blob``
        (``worktree:<id>`` for files on disk), so a file on disk that equals a
        committed blob is served from the cache.
        """
        result = self.cached(path, blob)
        if result is None:
            self.parsed += 1
            result = self.remember(path, blob, self._parse(path, blob, data))
        if label is not None and label != blob:
            result = dataclasses.replace(result, blob=label)
        return result

    def _parse(self, path: str, blob: str, data: bytes) -> Result:
        return parse_file(path, blob, data, self.unit_prefix)

    def parse_many(self, files: Iterable[tuple[str, str, bytes]], count: int) -> list[Result]:
        """:meth:`parse` of each ``(path, blob, data)``, in order, for files the caller
        found not cached; ``count`` of them. A batch of at least ``batch.min_files`` is
        parsed in worker processes (:mod:`.parsepool`): the same results, sooner."""
        if count < self.batch.min_files or not worker_count(self.batch):
            return [self.parse(path, blob, data) for path, blob, data in files]
        prefix = self.unit_prefix
        results, stats = parse_batch(
            files, lambda path, blob, data: parse_file(path, blob, data, prefix), prefix, self.batch
        )
        self.parsed += len(results)
        self.parsed_in_workers += stats.in_workers
        self.last_batch = stats
        for result in results:
            assert result.blob is not None  # parse_file gives every result its blob
            self.remember(result.path, result.blob, result)
        return results


def parse_file(path: str, blob: str, data: bytes, unit_prefix: str) -> Result:
    """The unit in ``data`` (the file ``path``, blob id ``blob``), or its problems: no
    cache, no state (what a worker process runs, and :meth:`UnitParser.parse`)."""
    if len(data) > MAX_BYTES:
        return oversize(path, blob)
    if data.startswith(LFS_POINTER):
        return problem(
            path,
            "is a Git LFS pointer, not a unit file; keep unit files in Git itself "
            "(exclude them from LFS in .gitattributes)",
            blob,
        )
    try:
        spec, policy = load_unit_and_policy(data, path)
    except SpecError as exc:
        return FileProblem(path, blob, exc.issues, declared_name(data, path))
    canonical = to_json(spec)  # once: the render check needs its hash too
    hash6 = json_hash(canonical)[:6]
    issues = render_issues(spec, path, unit_prefix, hash6=hash6)
    if issues:
        return FileProblem(path, blob, tuple(issues), spec.name)
    stored_policy = "" if policy.is_default else policy_to_json(policy)
    return DesiredUnit(spec.name, path, blob, spec, canonical, stored_policy)


def oversize(path: str, blob: str | None) -> FileProblem:
    return problem(path, f"is larger than {MAX_BYTES} bytes (1 MiB); refusing to read it", blob)


def assemble(results: Iterable[Result]) -> tuple[dict[str, DesiredUnit], tuple[FileProblem, ...]]:
    """Units by name, and every problem sorted by path; duplicate names reject all files
    (the rule is :class:`~kaylee_sync.source.claims.Claims`')."""
    claims = Claims.of(results)
    return claims.units, claims.problems
