"""The exit codes of docs/cli.md's table, and the pull-request jobs of docs/gitops.md.

A usage or configuration error must exit 1 — never 2, which ``plan`` uses for "there
are changes" — so that a CI job cannot pass on a typo. The PR jobs are run as the
documentation prints them (their shell, from the YAML), against a real git repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from kaylee_sync.cli.kaylee import cli as kaylee_cli
from kaylee_sync.cli.sync import cli as sync_cli

from .gitrepo import GIT_ENV, GitRepo, unit_yaml

ROOT = Path(__file__).resolve().parents[1]
GITOPS_DOC = ROOT / "docs" / "gitops.md"
CLI_DOC = ROOT / "docs" / "cli.md"
PROGRAMS: dict[str, click.Group] = {"kaylee-sync": sync_cli, "kaylee": kaylee_cli}
BIN = Path(sys.executable).parent  # kaylee-sync's entry point, installed beside python


@pytest.mark.parametrize(
    ("program", "args", "env", "says"),
    [
        ("kaylee-sync", ["--bogus"], {}, "No such option '--bogus'"),
        ("kaylee-sync", ["plan", "--bogus"], {}, "No such option '--bogus'"),
        ("kaylee-sync", ["plan", "--format", "xml"], {}, "'xml' is not one of"),
        ("kaylee-sync", ["render", "--format", "xml", __file__], {}, "'xml' is not one of"),
        ("kaylee-sync", ["plna"], {}, "No such command 'plna'"),
        ("kaylee-sync", ["status"], {"KAYLEE_STATUS_FORMAT": "xml"}, "KAYLEE_STATUS_FORMAT"),
        ("kaylee-sync", ["status"], {"KAYLEE_ETCD_TIMEOUT": "soon"}, "KAYLEE_ETCD_TIMEOUT"),
        ("kaylee-sync", ["--repo", "."], {"KAYLEE_INTERVAL": "often"}, "KAYLEE_INTERVAL"),
        ("kaylee-sync", ["plan"], {"KAYLEE_ALLOW_PRUNE_ALL": "maybe"}, "KAYLEE_ALLOW_PRUNE_ALL"),
        ("kaylee-sync", [], {}, "Usage: "),  # no --repo: the daemon cannot start
        ("kaylee", ["--bogus", "ls"], {}, "No such option '--bogus'"),
        ("kaylee", ["ls", "--format", "xml"], {}, "'xml' is not one of"),
        ("kaylee", ["lst"], {}, "No such command 'lst'"),
        ("kaylee", ["ls"], {"FLEETCTL_DRIVER": "carrier-pigeon"}, "FLEETCTL_DRIVER"),
        ("kaylee", ["server"], {"KAYLEE_LEASE_TTL": "1"}, "KAYLEE_LEASE_TTL"),
        ("kaylee", ["run"], {}, "Missing argument"),
    ],
)
def test_usage_and_configuration_errors_exit_1(
    program: str, args: list[str], env: dict[str, str], says: str
) -> None:
    result = CliRunner().invoke(PROGRAMS[program], args, env=env)
    assert result.exit_code == 1, result.output
    assert says in result.output
    assert "Traceback" not in result.output


def test_a_bug_exits_70_with_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("kaylee_sync.cli.lint.unit_schema", broken)
    result = CliRunner().invoke(sync_cli, ["schema"])
    assert result.exit_code == 70
    assert "internal error" in result.output and "RuntimeError: a bug" in result.output


def test_the_table_in_docs_cli_md_lists_every_code_the_code_uses() -> None:
    text = CLI_DOC.read_text(encoding="utf-8")
    table = text.split("| code | meaning | commands |", 1)[1].split("\n\n", 1)[0]
    codes = [int(line.split("|")[1]) for line in table.splitlines()[2:]]
    assert codes == [0, 1, 2, 70, 130, 141]


# -- the pull-request jobs of docs/gitops.md, run as printed --------------------------------


def doc_yaml_after(marker: str) -> dict[str, object]:
    text = GITOPS_DOC.read_text(encoding="utf-8")
    block = text.split(marker, 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    loaded = yaml.safe_load(block)
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture
def pr_repo(tmp_path: Path) -> GitRepo:
    """A pull request's repository: origin/main is the base, HEAD the change to plan."""
    repo = GitRepo(tmp_path / "repo")
    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:1"))
    base = repo.commit("base")
    repo.git("update-ref", "refs/remotes/origin/main", base)
    return repo


def bash(script: str, repo: GitRepo, env: dict[str, str]) -> int:
    """Run ``script`` as a CI runner would: bash -e, in the checkout, kaylee-sync on PATH."""
    environ = {**os.environ, **GIT_ENV, **env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-e", "-c", script], cwd=repo.path, env=environ, timeout=120)
    return done.returncode


def github_job(repo: GitRepo, bogus: bool) -> int:
    steps = doc_yaml_after("**GitHub Actions**")["jobs"]["plan"]["steps"]  # type: ignore[index]
    plan = next(s for s in steps if s.get("id") == "plan")
    last = steps[-1]
    assert "steps.plan.outputs.code" in last["env"]["CODE"]
    script = plan["run"]
    if bogus:
        script = script.replace("kaylee-sync plan", "kaylee-sync plan --bogus")
    output = repo.path.parent / "github-output"
    output.write_text("")
    assert bash(script, repo, {"BASE": "main", "GITHUB_OUTPUT": str(output)}) == 0
    code = output.read_text().strip().removeprefix("code=")
    return bash(last["run"], repo, {"CODE": code})


def gitlab_job(repo: GitRepo, bogus: bool) -> int:
    script = doc_yaml_after("**GitLab CI**")["kaylee-sync-plan"]["script"]  # type: ignore[index]
    # not here: installing, fetching (origin/main is made by the fixture), posting the note
    lines = [
        line
        for line in script
        if not line.startswith(("pip install", "git fetch")) and "curl" not in line
    ]
    text = "\n".join(lines)
    if bogus:
        text = text.replace("kaylee-sync plan", "kaylee-sync plan --bogus")
    return bash(text, repo, {"CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "main"})


@pytest.mark.parametrize("job", [github_job, gitlab_job], ids=["github", "gitlab"])
def test_documented_pr_jobs_pass_on_changes_and_fail_on_invalid_files_and_typos(
    pr_repo: GitRepo, job: object
) -> None:
    run = job  # (repo, bogus) -> exit code of the job's last step
    assert callable(run)
    pr_repo.commit("no change at all")
    assert run(pr_repo, False) == 0
    pr_repo.write("units/web.yaml", unit_yaml("web", "example.com/web:2"))
    pr_repo.commit("a change")
    assert run(pr_repo, False) == 0
    assert (pr_repo.path / "plan.md").read_text().strip()  # there was a comment to post
    assert run(pr_repo, True) != 0  # plan --bogus
    pr_repo.write("units/web.yaml", "name: web\nreplicas: many\n")
    pr_repo.commit("an invalid file")
    assert run(pr_repo, False) != 0
