"""Which file declares which unit: the rule that needs every file at once, kept up to date
file by file.

Two files declaring the same unit are both rejected (a file that failed to load still
counts as declaring the name it states: otherwise fixing a typo in a copy of
``web.yaml`` would suddenly take ``web`` away from the original). Whether a file's
result is a unit or a problem therefore depends on the other files, so a sync that
reads one changed file of 10,000 must not re-judge all 10,000: :class:`Claims` keeps
the results by path and by declared name, and a change re-judges only the names it
touches. :func:`kaylee_sync.source.units.assemble` is the same rule applied to a whole
listing at once (a :class:`Claims` built from nothing).
"""

from __future__ import annotations

from collections.abc import Iterable

from kaylee_sync.errors import Issue
from kaylee_sync.plan.model import DesiredUnit, FileProblem

Result = DesiredUnit | FileProblem


class Claims:
    """The results of the files of one tree, and the units and problems they make.

    :meth:`changed` returns a new Claims for a tree that differs in a few paths; the
    original is left as it was (a tree read is remembered by its id and reused).
    """

    def __init__(self) -> None:
        self.results: dict[str, Result] = {}  # by path
        self._claimants: dict[str, tuple[str, ...]] = {}  # declared name -> the paths declaring it
        self.units: dict[str, DesiredUnit] = {}  # by name: the unit of exactly one valid file
        self._problems: dict[str, FileProblem] = {}  # by path
        self._sorted: tuple[FileProblem, ...] | None = ()

    @classmethod
    def of(cls, results: Iterable[Result]) -> Claims:
        claims = cls()
        claims._update([], list(results))
        return claims

    @property
    def problems(self) -> tuple[FileProblem, ...]:
        """Every problem, sorted by path."""
        if self._sorted is None:
            self._sorted = tuple(self._problems[path] for path in sorted(self._problems))
        return self._sorted

    def changed(self, removed: Iterable[str], added: Iterable[Result]) -> tuple[Claims, set[str]]:
        """The claims once the files at ``removed`` are gone and ``added`` are there (a
        path may be in both: a changed file), and the unit names whose unit or problem
        may differ."""
        out = Claims()
        out.results = self.results.copy()
        out._claimants = self._claimants.copy()
        out.units = self.units.copy()
        out._problems = self._problems.copy()
        out._sorted = self._sorted
        touched = out._update(list(removed), list(added))
        return out, touched

    def _update(self, removed: list[str], added: list[Result]) -> set[str]:
        touched: set[str] = set()
        for path in removed:
            old = self.results.pop(path, None)
            if old is not None:
                self._unclaim(old, touched)
        for result in added:
            old = self.results.pop(result.path, None)
            if old is not None:
                self._unclaim(old, touched)
            self.results[result.path] = result
            if result.name is None:
                assert isinstance(result, FileProblem)  # a unit always has a name
                self._set_problem(result.path, result)
            else:
                paths = self._claimants.get(result.name, ())
                self._claimants[result.name] = (*paths, result.path)
                touched.add(result.name)
        for name in touched:
            self._judge(name)
        return touched

    def _unclaim(self, old: Result, touched: set[str]) -> None:
        if old.name is None:
            self._set_problem(old.path, None)
            return
        paths = tuple(p for p in self._claimants[old.name] if p != old.path)
        self._set_problem(old.path, None)
        if paths:
            self._claimants[old.name] = paths
        else:
            del self._claimants[old.name]
        touched.add(old.name)

    def _judge(self, name: str) -> None:
        """Settle ``name``: the unit of its only file, or a problem for every claimant."""
        self.units.pop(name, None)
        paths = self._claimants.get(name, ())
        if len(paths) == 1:
            only = self.results[paths[0]]
            if isinstance(only, DesiredUnit):
                self.units[name] = only
                self._set_problem(only.path, None)
            else:
                self._set_problem(only.path, only)
            return
        for path in paths:
            claim = self.results[path]
            others = ", ".join(sorted(p for p in paths if p != path))
            issue = Issue(
                claim.path,
                0,
                "name",
                f"unit '{name}' is also declared in {others}; each unit needs exactly one file",
            )
            own = claim.issues if isinstance(claim, FileProblem) else ()
            self._set_problem(claim.path, FileProblem(claim.path, claim.blob, (*own, issue), name))

    def _set_problem(self, path: str, problem: FileProblem | None) -> None:
        if problem is None:
            if self._problems.pop(path, None) is not None:
                self._sorted = None
        elif self._problems.get(path) != problem:
            self._problems[path] = problem
            self._sorted = None
