"""Small builders for plan tests: desired states (a commit) and actual states (etcd).

Plain data only; the plan layer is pure, so its tests need no server. ``worlds`` draws
random pairs of them for the property tests.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from hypothesis import strategies as st

from kaylee_sync.errors import Issue
from kaylee_sync.plan.model import (
    ActualState,
    ActualUnit,
    DesiredState,
    DesiredUnit,
    FileProblem,
    Inventory,
    InventoryEntry,
    Suspension,
)
from kaylee_sync.plan.prune import PruneLimits
from kaylee_sync.spec import App, UnitSpec, to_json
from tests.strategies import unit_specs

COMMIT = "1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d"
REPO = "https://git.example.com/team/units.git"
NOW = 1_700_000_000.0


def spec(name: str, image: str = "docker://web:1", replicas: int = 0, **kw: object) -> UnitSpec:
    return UnitSpec(name=name, apps=(App(image),), replicas=replicas, **kw)  # type: ignore[arg-type]


def blob_of(value: str) -> str:
    return hashlib.sha1(value.encode()).hexdigest()


def unit(s: UnitSpec, path: str | None = None) -> DesiredUnit:
    value = to_json(s)
    return DesiredUnit(s.name, path or f"units/{s.name}.yaml", blob_of(value), s, value)


def desired(
    *specs: UnitSpec | DesiredUnit, problems: Iterable[FileProblem] = (), commit: str = COMMIT
) -> DesiredState:
    units = [s if isinstance(s, DesiredUnit) else unit(s) for s in specs]
    return DesiredState(
        repo=REPO,
        branch="main",
        path="units",
        commit=commit,
        units={u.name: u for u in units},
        problems=tuple(sorted(problems, key=lambda p: p.path)),
        committed_at=NOW - 60,
    )


def problem(path: str, name: str | None = None, reason: str = "must be a string") -> FileProblem:
    return FileProblem(path, blob_of(path), (Issue(path, 3, "apps[0].image", reason),), name)


def actual(
    values: Mapping[str, str | UnitSpec],
    inventory: Mapping[str, tuple[str, str]] | None = None,
    suspended: Iterable[Suspension] = (),
    source: str = "etcd",
) -> ActualState:
    """etcd holding ``values`` (name → JSON or spec), with ``inventory`` name → (path, blob)."""
    units = {}
    for rev, (name, value) in enumerate(sorted(values.items()), start=10):
        text = to_json(value) if isinstance(value, UnitSpec) else value
        units[name] = ActualUnit(name, text, rev)
    inv = None
    if inventory is not None:
        entries = {n: InventoryEntry(p, b) for n, (p, b) in inventory.items()}
        inv = Inventory(REPO, "main", "units", "0" * 40, entries)
    return ActualState(
        units=units,
        inventory=inv,
        inventory_revision=7 if inv else 0,
        suspended={s.name: s for s in suspended},
        state_index="idx-1",
        source=source,
    )


def synced(state: DesiredState, **kw: object) -> ActualState:
    """etcd exactly as a sync of ``state`` left it (every unit managed, nothing to do)."""
    return actual(
        {n: u.value for n, u in state.units.items()},
        {n: (u.path, u.blob) for n, u in state.units.items()},
        **kw,  # type: ignore[arg-type]
    )


def suspension(name: str, until: float | None = None) -> Suspension:
    return Suspension(name, "alice", "hotfix for INC-42", NOW - 3600, until)


# -- random worlds for property tests ------------------------------------------------------

_NAMES = ["a", "b", "api", "web", "db-1", "z.z"]
_ODD_PATHS = ["", " |x", "`y`", "<b>&", "\x1b[31m"]  # pipes, backticks, HTML, ESC


@st.composite
def worlds(draw: st.DrawFn) -> tuple[DesiredState, ActualState, dict[str, Any]]:
    """A commit, an etcd, and make_plan's options: every combination the rules distinguish."""
    units: list[DesiredUnit] = []
    problems: list[FileProblem] = []
    values: dict[str, str] = {}
    inventory: dict[str, tuple[str, str]] = {}
    suspended: list[Suspension] = []
    for name in draw(st.lists(st.sampled_from(_NAMES), unique=True, max_size=len(_NAMES))):
        path = f"units/{name}{draw(st.sampled_from(_ODD_PATHS))}.yaml"
        wanted = dataclasses.replace(draw(unit_specs()), name=name)
        # Drawing a second spec per name would double the (slow) generation: vary this one.
        other = draw(
            st.sampled_from(
                [
                    dataclasses.replace(wanted, replicas=wanted.replicas + 1),
                    dataclasses.replace(wanted, apps=spec(name, "docker://other:2").apps),
                    dataclasses.replace(wanted, global_=not wanted.global_),
                ]
            )
        )
        git = draw(st.sampled_from(["valid", "valid", "named-invalid", "unparsable", "absent"]))
        if git == "valid":
            units.append(unit(wanted, path))
        elif git != "absent":
            problems.append(problem(path, name if git == "named-invalid" else None, "bad <x>"))
        etcd = draw(st.sampled_from(["same", "other", "garbage", "absent"]))
        if etcd != "absent":
            text = {"same": to_json(wanted), "other": to_json(other), "garbage": "{oops"}[etcd]
            values[name] = text
        inv = draw(st.sampled_from(["same", "stale", "absent"]))
        if inv != "absent":
            inventory[name] = (path, blob_of(to_json(wanted)) if inv == "same" else "0" * 40)
        until = draw(st.sampled_from([None, NOW + 10, NOW - 10, "none", "none"]))
        if until != "none":
            suspended.append(suspension(name, until))  # type: ignore[arg-type]
    if draw(st.booleans()):
        problems.append(problem("units/zz-unknown.yaml"))
    state = desired(*units, problems=problems, commit=draw(st.sampled_from([COMMIT, ""])))
    etcd_state = actual(values, inventory if draw(st.booleans()) or inventory else None, suspended)
    options: dict[str, Any] = {
        "now": NOW,
        "prune": PruneLimits(
            max_count=draw(st.none() | st.integers(0, 3)),
            max_percent=draw(st.none() | st.sampled_from([0.0, 10.0, 50.0])),
            allow=draw(st.booleans()),
        ),
        "generations": draw(st.dictionaries(st.sampled_from(_NAMES), st.integers(0, 3))),
    }
    return state, etcd_state, options
