"""A plan as a stable, versioned JSON document, and back (docs/plan.md has the schema).

``kaylee-sync plan --out FILE`` saves a plan and ``apply FILE`` loads it and applies
exactly what was reviewed, so the round trip must lose nothing: every field of the Plan,
including the commit's units (apply writes the inventory from them) and the mod
revisions its transactions compare. Values are kept as the exact strings etcd gets, not
re-encoded, because apply writes those bytes.

Loading distrusts the file: a missing or mistyped field is a one-line UsageError naming
it, and every unit value is validated again as a spec (``parse_stored``), so a
hand-edited plan cannot write what ``plan`` would have refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kaylee_sync.errors import Issue, SpecError, UsageError
from kaylee_sync.plan.model import (
    Action,
    DesiredState,
    DesiredUnit,
    FileProblem,
    FleetEffect,
    Plan,
    PlanEntry,
    PruneHold,
)
from kaylee_sync.plan.prune import hold_from_doc, hold_to_doc
from kaylee_sync.plan.summary import counts
from kaylee_sync.spec import parse_stored, parse_stored_policy

VERSION = 1


def plan_to_json(plan: Plan) -> dict[str, Any]:
    """The plan as JSON-ready data (``json.dumps`` it as it is)."""
    d = plan.desired
    doc: dict[str, Any] = {
        "version": VERSION,
        "commit": d.commit,
        "repo": d.repo,
        "branch": d.branch,
        "path": d.path,
        "committed_at": d.committed_at,
        "against": plan.against,
        "state_index": plan.state_index,
        "inventory_revision": plan.inventory_revision,
        "summary": counts(plan),
        "entries": [_entry(e) for e in plan.entries],
        "units": {
            name: {"path": u.path, "blob": u.blob, "value": u.value}
            | ({"policy": u.policy} if u.policy else {})
            for name, u in d.units.items()
        },
        "problems": [_problem(p) for p in plan.problems],
        "prune_refused": plan.prune_refused,
        "prune_hold": None if plan.prune_hold is None else hold_to_doc(plan.prune_hold),
        "prune_overridden": plan.prune_overridden,
        "prune_released": plan.prune_released,
        "expired_suspensions": list(plan.expired_suspensions),
    }
    if d.problems != plan.problems:
        # make_plan copies one into the other; a plan built otherwise still round-trips.
        doc["desired_problems"] = [_problem(p) for p in d.problems]
    return doc


def _entry(e: PlanEntry) -> dict[str, Any]:
    effect = None
    if e.effect is not None:
        effect = {
            "summary": e.effect.summary,
            "old_units": list(e.effect.old_units),
            "new_units": list(e.effect.new_units),
        }
    return {
        "name": e.name,
        "action": e.action.value,
        "path": e.path,
        "reason": e.reason,
        "old_value": e.old_value,
        "new_value": e.new_value,
        "mod_revision": e.mod_revision,
        "diff": e.diff,
        "effect": effect,
        "issues": [_issue(i) for i in e.issues],
    } | (
        # Only with a rollout policy, so that plans of units without one read as before.
        {
            "old_policy": e.old_policy,
            "new_policy": e.new_policy,
            "policy_revision": e.policy_revision,
        }
        if e.old_policy or e.new_policy
        else {}
    )


def _issue(i: Issue) -> dict[str, Any]:
    return {"file": i.file, "line": i.line, "field": i.field, "reason": i.reason}


def _problem(p: FileProblem) -> dict[str, Any]:
    return {"path": p.path, "blob": p.blob, "name": p.name, "issues": [_issue(i) for i in p.issues]}


def plan_from_json(doc: Mapping[str, Any], *, source: str = "plan") -> Plan:
    """The Plan ``doc`` holds; ``source`` (e.g. the file name) names it in errors.

    Raises UsageError for a document that is not a version-1 plan or is inconsistent,
    SpecError for a unit value that is not a valid spec.
    """
    r = _Reader(source)
    if not isinstance(doc, Mapping):
        raise UsageError(f"{source}: not a kaylee-sync plan (expected a JSON object)")
    version = doc.get("version")
    if version != VERSION:
        raise UsageError(
            f"{source}: plan format version {version!r} is not supported "
            f"(this kaylee-sync reads version {VERSION})"
        )
    units = {
        name: r.unit(name, r.mapping(data, f"units.{name}"))
        for name, data in r.mapping(doc.get("units"), "units").items()
    }
    problems = tuple(r.problem(p, f"problems[{k}]") for k, p in enumerate(r.items(doc, "problems")))
    desired_problems = problems
    if "desired_problems" in doc:
        desired_problems = tuple(
            r.problem(p, f"desired_problems[{k}]")
            for k, p in enumerate(r.items(doc, "desired_problems"))
        )
    desired = DesiredState(
        repo=r.text(doc, "repo"),
        branch=r.text(doc, "branch"),
        path=r.text(doc, "path"),
        commit=r.text(doc, "commit"),
        units=units,
        problems=desired_problems,
        committed_at=r.number_or_none(doc, "committed_at"),
    )
    entries = tuple(r.entry(e, f"entries[{k}]") for k, e in enumerate(r.items(doc, "entries")))
    for entry in entries:
        # apply writes new_value and the inventory from units: they must agree.
        if entry.action in (Action.CREATE, Action.UPDATE, Action.POLICY) and (
            entry.name not in units
            or units[entry.name].value != entry.new_value
            or units[entry.name].policy != entry.new_policy
        ):
            raise UsageError(f"{source}: entry {entry.name!r} does not match units.{entry.name}")
    return Plan(
        desired=desired,
        against=r.text(doc, "against"),
        entries=entries,
        problems=problems,
        prune_refused=r.text(doc, "prune_refused"),
        prune_hold=r.hold(doc.get("prune_hold")),
        # Absent in plans saved before the hold existed: those overrode and released nothing.
        prune_overridden=r.text(doc, "prune_overridden") if "prune_overridden" in doc else "",
        prune_released=r.text(doc, "prune_released") if "prune_released" in doc else "",
        state_index=r.text(doc, "state_index"),
        inventory_revision=r.integer(doc, "inventory_revision"),
        expired_suspensions=tuple(
            r.text_item(v, "expired_suspensions") for v in r.items(doc, "expired_suspensions")
        ),
    )


class _Reader:
    """Typed field access that names the offending field in a one-line UsageError."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, expected: str) -> UsageError:
        return UsageError(f"{self.source}: {where}: expected {expected}")

    def mapping(self, value: Any, where: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(where, "an object")
        return value

    def items(self, doc: Mapping[str, Any], key: str, where: str = "") -> list[Any]:
        value = doc.get(key)
        if not isinstance(value, list):
            raise self.fail(f"{where}{key}", "a list")
        return value

    def text(self, doc: Mapping[str, Any], key: str, where: str = "") -> str:
        return self.text_item(doc.get(key), f"{where}{key}")

    def text_item(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise self.fail(where, "a string")
        return value

    def text_or_none(self, doc: Mapping[str, Any], key: str, where: str = "") -> str | None:
        value = doc.get(key)
        return None if value is None else self.text(doc, key, where)

    def integer(self, doc: Mapping[str, Any], key: str, where: str = "") -> int:
        value = doc.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(f"{where}{key}", "an integer")
        return value

    def number_or_none(self, doc: Mapping[str, Any], key: str) -> float | None:
        value = doc.get(key)
        if value is None:
            return None
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self.fail(key, "a number or null")
        return value

    def hold(self, value: Any) -> PruneHold | None:
        if value is None:
            return None
        try:
            return hold_from_doc(value)
        except ValueError as exc:
            raise UsageError(f"{self.source}: prune_hold: {exc}") from None

    def unit(self, name: str, data: Mapping[str, Any]) -> DesiredUnit:
        where = f"units.{name}."
        value = self.text(data, "value", where)
        return DesiredUnit(
            name=name,
            path=self.text(data, "path", where),
            blob=self.text(data, "blob", where),
            # Validated again: this is what apply writes to units/<name>.
            spec=parse_stored(value, f"{self.source}: units.{name}", name),
            value=value,
            policy=self.policy(data, "policy", f"{where}policy"),
        )

    def policy(self, data: Mapping[str, Any], key: str, where: str) -> str:
        """A stored policy ("" when absent), validated again: apply writes it as it is."""
        value = self.text(data, key, where.removesuffix(key)) if key in data else ""
        if value:
            try:
                parse_stored_policy(value, f"{self.source}: {where}")
            except SpecError as exc:
                raise UsageError(str(exc).splitlines()[0]) from None
        return value

    def issue(self, value: Any, where: str) -> Issue:
        data = self.mapping(value, where)
        where += "."
        return Issue(
            file=self.text(data, "file", where),
            line=self.integer(data, "line", where),
            field=self.text(data, "field", where),
            reason=self.text(data, "reason", where),
        )

    def issues(self, data: Mapping[str, Any], where: str) -> tuple[Issue, ...]:
        items = self.items(data, "issues", where)
        return tuple(self.issue(v, f"{where}issues[{k}]") for k, v in enumerate(items))

    def problem(self, value: Any, where: str) -> FileProblem:
        data = self.mapping(value, where)
        where += "."
        return FileProblem(
            path=self.text(data, "path", where),
            blob=self.text_or_none(data, "blob", where),
            issues=self.issues(data, where),
            name=self.text_or_none(data, "name", where),
        )

    def entry(self, value: Any, where: str) -> PlanEntry:
        data = self.mapping(value, where)
        where += "."
        action = self.text(data, "action", where)
        try:
            parsed = Action(action)
        except ValueError:
            raise self.fail(f"{where}action", f"one of {[a.value for a in Action]}") from None
        return PlanEntry(
            name=self.text(data, "name", where),
            action=parsed,
            path=self.text_or_none(data, "path", where),
            reason=self.text(data, "reason", where),
            old_value=self.text_or_none(data, "old_value", where),
            new_value=self.text_or_none(data, "new_value", where),
            mod_revision=self.integer(data, "mod_revision", where),
            diff_source=self.text(data, "diff", where),
            effect=self.effect(data.get("effect"), f"{where}effect"),
            issues=self.issues(data, where),
            old_policy=self.policy(data, "old_policy", f"{where}old_policy"),
            new_policy=self.policy(data, "new_policy", f"{where}new_policy"),
            policy_revision=self.integer(data, "policy_revision", where)
            if "policy_revision" in data
            else 0,
        )

    def effect(self, value: Any, where: str) -> FleetEffect | None:
        if value is None:
            return None
        data = self.mapping(value, where)
        where += "."
        return FleetEffect(
            summary=self.text(data, "summary", where),
            old_units=tuple(self.text_item(v, where) for v in self.items(data, "old_units", where)),
            new_units=tuple(self.text_item(v, where) for v in self.items(data, "new_units", where)),
        )
