"""The sample repository is a working set of unit files, and it shows what it claims to.

``sample-repo/`` is what a newcomer points ``kaylee-sync --dev`` at and what the README
renders first, so every file must load and render, and between them the files must
cover the unit kinds its README promises (checked on the loaded specs, not file names).
The dev cluster's machine layout documented there must be able to run all of it.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from kaylee_sync.daemon import dev
from kaylee_sync.daemon.dev import machine_id
from kaylee_sync.fleetsim.requirements import Requirements
from kaylee_sync.fleetsim.scheduling import Job, Machine, plan
from kaylee_sync.render import render_issues, render_units
from kaylee_sync.source.localfile import load_unit_file
from kaylee_sync.spec import to_json
from kaylee_sync.spec.model import UnitSpec

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample-repo"
UNIT_SUFFIXES = (".yaml", ".yml")  # what the Git source reads as unit files
FILES = sorted(p for p in SAMPLE.rglob("*") if p.is_file() and p.suffix in UNIT_SUFFIXES)
MOUNT_SERVICE = "systemd-mountservice-"

# The machines `kaylee-sync --dev` starts, which sample-repo/README.md lists.
DEV_MACHINES = [Machine(machine_id(name), dict(metadata)) for name, metadata in dev.MACHINES]


def rel(path: Path) -> str:
    return path.relative_to(SAMPLE).as_posix()


def load_all() -> dict[str, UnitSpec]:
    return {rel(path): load_unit_file(path, rel(path)) for path in FILES}


def test_sample_repo_has_unit_files_and_keeps_countly_where_the_readme_renders_it() -> None:
    assert len(FILES) >= 5
    assert (SAMPLE / "countly.yaml") in FILES


def test_sample_repo_holds_only_unit_files_and_its_readme() -> None:
    # A .json (or .yml.txt) file here would look like a unit but never be deployed.
    others = [rel(p) for p in SAMPLE.rglob("*") if p.is_file() and p not in FILES]
    assert others == ["README.md"]


@pytest.mark.parametrize("path", FILES, ids=[rel(p) for p in FILES])
def test_every_sample_file_loads_and_renders_without_issues(path: Path) -> None:
    spec = load_unit_file(path, rel(path))
    assert render_issues(spec, rel(path)) == []
    assert len(render_units(spec)) == spec.instance_count


@pytest.mark.parametrize("path", FILES, ids=[rel(p) for p in FILES])
def test_each_file_is_named_after_its_unit(path: Path) -> None:
    # The repository's convention (sample-repo/README.md): <group>/<name>.yaml, so
    # the file that owns unit X is found by name alone.
    assert load_unit_file(path).name == path.stem


def test_unit_names_are_unique_across_the_repo() -> None:
    counts = Counter(spec.name for spec in load_all().values())
    assert [name for name, n in counts.items() if n > 1] == []


def test_repo_has_a_replicated_web_service_with_a_per_host_limit_and_environment() -> None:
    web = [
        s
        for s in load_all().values()
        if s.replicas > 1
        and 1 <= s.max_replicas_per_host < s.replicas
        and s.env
        and s.env_files
        and not s.global_
    ]
    assert web, "no replicated service with maxReplicasPerHost, env and envFiles"


def test_repo_has_a_global_agent() -> None:
    agents = [s for s in load_all().values() if s.global_]
    assert agents
    assert all(s.replicas <= 1 and not s.machine_id for s in agents)


def test_repo_has_databases_pinned_by_metadata_that_conflict_with_each_other() -> None:
    specs = {s.name: s for s in load_all().values()}
    pinned = [s for s in specs.values() if s.machine and s.conflicts and not s.is_replica_unit]
    assert pinned, "no non-replica unit with machine metadata and conflicts"
    # The conflicts name units that exist here, and hold in both directions.
    pairs = [(s.name, c) for s in pinned for c in s.conflicts]
    for name, other in pairs:
        assert other in specs, f"{name} conflicts with {other}, which is not in the repo"
        assert name in specs[other].conflicts, f"{other} does not conflict back with {name}"


def test_repo_uses_every_volume_kind() -> None:
    volumes = [v for s in load_all().values() for v in s.volumes]
    kinds = {
        "host": [v for v in volumes if not v.driver],
        "mount service": [v for v in volumes if v.driver.startswith(MOUNT_SERVICE)],
        "plugin": [v for v in volumes if v.driver and not v.driver.startswith(MOUNT_SERVICE)],
    }
    assert {kind: bool(found) for kind, found in kinds.items()} == dict.fromkeys(kinds, True)
    assert any(v.options for v in kinds["plugin"]), "no plugin volume passes options"


def test_countly_is_still_the_original_readme_sample() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    stored = to_json(load_unit_file(SAMPLE / "countly.yaml"))
    assert stored.startswith('{"name":"countly","replicas":4,"maxReplicasPerHost":2,')
    assert stored in readme, "README.md shows a different stored JSON for countly.yaml"


def test_sample_readme_describes_every_unit_file() -> None:
    readme = (SAMPLE / "README.md").read_text(encoding="utf-8")
    missing = [rel(p) for p in FILES if f"`{rel(p)}`" not in readme]
    assert missing == []


def test_sample_readme_gives_the_dev_and_production_commands() -> None:
    readme = (SAMPLE / "README.md").read_text(encoding="utf-8")
    for command in (
        "kaylee-sync --dev --repo . --path sample-repo",
        "kaylee ls",
        "kaylee-sync plan --repo . --path sample-repo",
        "kaylee-sync --repo https://git.example.com/ops/units.git --path units",
    ):
        assert command in readme, command


def test_readme_machine_table_matches_the_dev_cluster() -> None:
    readme = (SAMPLE / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d) \| `role=(\w+)`, `ssd=(\w+)` \|", readme, re.M)
    documented = [(role, ssd) for count, role, ssd in rows for _ in range(int(count))]
    assert documented == [(m.metadata["role"], m.metadata["ssd"]) for m in DEV_MACHINES]


def test_the_dev_cluster_can_run_every_sample_unit() -> None:
    jobs = []
    for spec in load_all().values():
        for unit in render_units(spec):
            jobs.append(
                Job(unit.name, "launched", Requirements.from_options(unit.name, unit.options))
            )
    placed = {d.job: d.machine_id for d in plan(jobs, DEV_MACHINES) if d.action == "schedule"}
    unplaced = [j.name for j in jobs if not j.requirements.is_global and j.name not in placed]
    assert unplaced == []

    def hosts(unit: str) -> list[str]:
        return [m for job, m in placed.items() if job.startswith(f"k2:{unit}:")]

    primary, standby = hosts("postgres-primary"), hosts("postgres-standby")
    assert len(primary) == len(standby) == 1
    assert primary != standby
    storefront = Counter(hosts("storefront"))
    assert sum(storefront.values()) == 6
    assert max(storefront.values()) <= 2
