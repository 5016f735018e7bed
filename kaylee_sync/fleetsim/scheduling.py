"""Placement decisions of fleet's engine and agents, as pure functions over data.

fleet's engine (``engine/reconciler.go``) first re-checks every scheduled job and
unschedules those whose target-state is ``inactive``, whose machine is gone or which no
longer fit there; it then offers every unscheduled, non-inactive job to the machines in
least-loaded order (fewest units, ties by lowest id), taking the first that can run it.
Agents (``agent/reconcile.go``) run the jobs targeted at them plus the global units whose
metadata matches, skipping any that conflict with what they already took.

Keeping this free of I/O lets the tests check placement rules without an etcd, and keeps
the engine thread a thin loop: read the registry, call :func:`plan`, write the decisions.
fleet iterates Go maps (random order); we iterate by name so runs are reproducible.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from kaylee_sync.fleetsim.requirements import Requirements, go_path_match, has_metadata

INACTIVE, LOADED, LAUNCHED = "inactive", "loaded", "launched"


@dataclass(frozen=True)
class Machine:
    """A live machine: its id and its metadata (object's, overlaid by dynamic keys)."""

    id: str
    metadata: Mapping[str, str] = field(default_factory=dict)

    def match_id(self, wanted: str) -> bool:
        return wanted in (self.id, self.id[:8])


@dataclass(frozen=True)
class Job:
    """A submitted unit as the engine sees it; ``target`` is "" while unscheduled."""

    name: str
    target_state: str
    requirements: Requirements
    target: str = ""
    unit_hash: str = ""


@dataclass(frozen=True)
class Decision:
    """One write for the engine: set ``job/<name>/target`` or compare-and-delete it."""

    action: Literal["schedule", "unschedule"]
    job: str
    machine_id: str
    reason: str


@dataclass
class _Agent:
    machine: Machine
    units: dict[str, Job] = field(default_factory=dict)

    def conflicts_with(self, name: str, conflicts: Iterable[str]) -> bool:
        # Symmetric: either side's pattern matching the other's name is a conflict.
        patterns = tuple(conflicts)
        for other in self.units.values():
            if other.name == name:
                continue
            if any(go_path_match(p, name) for p in other.requirements.conflicts):
                return True
            if any(go_path_match(p, other.name) for p in patterns):
                return True
        return False

    def unable_reason(self, job: Job) -> str | None:
        """Why this machine cannot run ``job`` (fleet's ``AbleToRun``), or None."""
        req = job.requirements
        if req.machine_id is not None and not self.machine.match_id(req.machine_id):
            return f"machine id does not match required {req.machine_id!r}"
        if req.metadata and not has_metadata(self.machine.metadata, req.metadata):
            return "machine metadata insufficient"
        for peer in req.peers:
            if peer not in self.units:
                return f"required peer {peer} is not scheduled here"
        if self.conflicts_with(job.name, req.conflicts):
            return "conflicts with a unit scheduled here"
        return None


def _agents(
    jobs: Mapping[str, Job], globals_: Iterable[Job], machines: Iterable[Machine]
) -> dict[str, _Agent]:
    agents = {m.id: _Agent(m) for m in machines}
    for job in jobs.values():
        if job.target and job.target_state != INACTIVE and job.target in agents:
            agents[job.target].units[job.name] = job
    # Globals count towards load wherever they would run, whatever their target-state.
    for g in globals_:
        for agent in agents.values():
            req = g.requirements
            if has_metadata(agent.machine.metadata, req.metadata) and not agent.conflicts_with(
                g.name, req.conflicts
            ):
                agent.units[g.name] = g
    return agents


def plan(all_jobs: Iterable[Job], machines: Iterable[Machine]) -> list[Decision]:
    """The engine's writes for one reconcile pass, in the order they must be made."""
    machine_list = sorted(machines, key=lambda m: m.id)
    ordered = sorted(all_jobs, key=lambda j: j.name)
    globals_ = [j for j in ordered if j.requirements.is_global]
    jobs = {j.name: j for j in ordered if not j.requirements.is_global}
    decisions: list[Decision] = []

    def retarget(name: str, target: str) -> None:
        old = jobs[name]
        jobs[name] = Job(old.name, old.target_state, old.requirements, target, old.unit_hash)

    for name in list(jobs):
        job = jobs[name]
        if not job.target:
            continue
        # Rebuilt per job, as fleet does, so earlier unschedules free their peers/conflicts.
        agent = _agents(jobs, globals_, machine_list).get(job.target)
        if job.target_state == INACTIVE:
            reason: str | None = "target state inactive"
        elif agent is None:
            reason = f"target machine {job.target} went away"
        else:
            reason = agent.unable_reason(job)
        if reason is not None:
            decisions.append(Decision("unschedule", name, job.target, reason))
            retarget(name, "")

    for name in list(jobs):
        job = jobs[name]
        if job.target or job.target_state == INACTIVE:
            continue
        agents = _agents(jobs, globals_, machine_list)
        by_load = sorted(agents.values(), key=lambda a: (len(a.units), a.machine.id))
        chosen = next((a for a in by_load if a.unable_reason(job) is None), None)
        if chosen is not None:
            reason = f"target state {job.target_state} and unit not scheduled"
            decisions.append(Decision("schedule", name, chosen.machine.id, reason))
            retarget(name, chosen.machine.id)
    return decisions


def desired_units(machine: Machine, all_jobs: Iterable[Job]) -> dict[str, Job]:
    """What the agent on ``machine`` should have loaded: its targeted jobs plus globals."""
    agent = _Agent(machine)
    for job in sorted(all_jobs, key=lambda j: j.name):
        req = job.requirements
        if req.is_global:
            if not has_metadata(machine.metadata, req.metadata):
                continue
        elif job.target != machine.id:
            continue
        if agent.conflicts_with(job.name, req.conflicts):
            continue
        agent.units[job.name] = job
    return agent.units
