"""``kaylee-sync validate`` and ``kaylee-sync schema``, and the pre-commit hook around them."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from kaylee_sync.cli.common import KayleeGroup
from kaylee_sync.cli.lint import schema, validate
from kaylee_sync.render import render_issues
from kaylee_sync.spec import load_unit, unit_schema
from tests.gitrepo import GitRepo, unit_yaml

REPO = Path(__file__).resolve().parents[1]
BAD = "name: api\nreplicas: many\napps:\n  - image: example.com/api:1\n"


@click.group(cls=KayleeGroup)
def cli() -> None:
    """The two commands on a group like kaylee-sync's."""


cli.add_command(validate)
cli.add_command(schema)


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.stdout, result.stderr


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_valid_files_pass_quietly(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", unit_yaml("a"))
    b = write(tmp_path / "b.yml", unit_yaml("b"))
    code, out, err = run("validate", str(a), str(b))
    assert (code, out) == (0, "")
    assert err == "2 files checked, 0 invalid\n"


def test_every_problem_is_printed_as_file_line_field_reason(tmp_path: Path) -> None:
    good = write(tmp_path / "good.yaml", unit_yaml("good"))
    bad = write(tmp_path / "bad.yaml", BAD)
    code, out, err = run("validate", str(good), str(bad))
    assert code == 1
    assert re.fullmatch(rf"{re.escape(str(bad))}:2: replicas: .+\n", out)
    assert err == "2 files checked, 1 invalid\n"


def test_directories_are_searched_recursively_for_yaml_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "units/a.yaml", unit_yaml("a"))
    write(tmp_path / "units/team/b.yml", BAD)
    write(tmp_path / "units/notes.txt", "not a unit")
    write(tmp_path / ".hidden/c.yaml", BAD)
    write(tmp_path / "units/.d.yaml", BAD)
    code, out, err = run("validate", "units")
    assert code == 1
    assert out.startswith("units/team/b.yml:2: replicas: ")
    assert err == "2 files checked, 1 invalid\n"


def test_json_output_is_one_stable_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "a.yaml", unit_yaml("a"))
    write(tmp_path / "bad.yaml", BAD)
    code, out, _ = run("validate", "--format", "json", "a.yaml", "bad.yaml")
    assert code == 1
    doc = json.loads(out)
    assert set(doc) == {"files", "valid", "problems"}
    assert doc["files"] == 2 and doc["valid"] == ["a.yaml"]
    (problem,) = doc["problems"]
    assert problem["file"] == "bad.yaml" and problem["line"] == 2
    assert problem["field"] == "replicas" and problem["reason"]
    assert run("validate", "--format", "json", "a.yaml")[:2] == (
        0,
        json.dumps({"files": 1, "problems": [], "valid": ["a.yaml"]}, indent=2) + "\n",
    )


def test_duplicate_names_across_the_files_given_are_problems(tmp_path: Path) -> None:
    one = write(tmp_path / "one.yaml", unit_yaml("web"))
    two = write(tmp_path / "two.yaml", unit_yaml("web"))
    code, out, err = run("validate", str(one), str(two), str(tmp_path))
    assert code == 1
    assert f"unit 'web' is also declared in {two}" in out
    assert f"unit 'web' is also declared in {one}" in out
    assert err == "2 files checked, 2 invalid\n"  # the directory repeats them, counted once


def test_links_missing_files_and_lfs_pointers_are_problems(tmp_path: Path) -> None:
    real = write(tmp_path / "web.yaml", unit_yaml("web"))
    link = tmp_path / "alias.yaml"
    link.symlink_to(real)
    lfs = write(tmp_path / "lfs.yaml", "version https://git-lfs.github.com/spec/v1\noid x\n")
    code, out, _ = run("validate", str(link), str(tmp_path / "gone.yaml"), str(lfs))
    assert code == 1
    assert f"{link}: is a symbolic link" in out
    assert f"{tmp_path / 'gone.yaml'}: does not exist" in out
    assert f"{lfs}: is a Git LFS pointer" in out


def test_the_unit_prefix_is_used_for_the_line_length_check(tmp_path: Path) -> None:
    long_prefix = "k2-" + "x" * 60
    for size in range(1800, 2100):
        text = f"name: web\napps:\n  - image: example.com/web:1\n    args: [a{'b' * size}]\n"
        spec = load_unit(text.encode(), "web.yaml")
        if not render_issues(spec, "web.yaml", "k2") and render_issues(spec, "w", long_prefix):
            break
    else:
        pytest.fail("no size fits under one prefix and not the other")
    path = write(tmp_path / "web.yaml", text)
    assert run("validate", str(path))[0] == 0
    code, out, _ = run("validate", "--unit-prefix", long_prefix, str(path))
    assert code == 1 and "2048" in out


def test_without_arguments_the_unit_path_of_the_enclosing_repository_is_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = GitRepo(tmp_path / "repo")
    repo.write("units/web.yaml", unit_yaml("web"))
    repo.write("units/ignored.yaml", BAD)
    repo.write(".gitignore", "units/ignored.yaml\n")
    repo.write("other/bad.yaml", BAD)
    repo.commit()
    repo.write("units/new.yaml", BAD)  # untracked, not ignored: git would commit it
    monkeypatch.chdir(repo.path / "other")

    code, out, err = run("validate", "--path", "units")
    assert code == 1
    assert out.startswith("../units/new.yaml:2: replicas: ")  # relative to the cwd
    assert err == "2 files checked, 1 invalid\n"

    monkeypatch.chdir(repo.path)
    code, out, err = run("validate")  # the whole repository
    assert code == 1
    assert {line.split(":")[0] for line in out.splitlines()} == {
        "other/bad.yaml",
        "units/new.yaml",
    }


def test_outside_a_repository_the_current_directory_is_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "plain/a.yaml", unit_yaml("a"))
    write(tmp_path / "plain/sub/b.yaml", unit_yaml("b"))
    monkeypatch.chdir(tmp_path / "plain")
    assert run("validate") == (0, "", "2 files checked, 0 invalid\n")


def test_a_missing_unit_directory_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    GitRepo(tmp_path / "repo")
    monkeypatch.chdir(tmp_path / "repo")
    code, out, err = run("validate", "--path", "nope")
    assert (code, out) == (1, "")
    assert err.startswith("error: unit directory 'nope' does not exist") and err.count("\n") == 1


def test_schema_prints_the_unit_json_schema() -> None:
    code, out, _ = run("schema")
    assert code == 0
    assert json.loads(out) == unit_schema()
    assert out.startswith('{\n  "$id"')


def test_the_pre_commit_hook_runs_validate_on_yaml_files_only() -> None:
    (hook,) = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "kaylee-sync-validate"
    assert hook["entry"] == "kaylee-sync validate"
    assert hook["language"] == "python"
    chosen = [
        name
        for name in ("units/web.yaml", "b.yml", "c.json", ".pre-commit-config.yaml", "u/.x.yml")
        if re.search(hook["files"], name) and not re.search(hook["exclude"], name)
    ]
    assert chosen == ["units/web.yaml", "b.yml"]


def test_validate_reads_files_the_way_the_source_reads_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One set of rules: what validate rejects on disk, the source rejects in a commit."""
    from kaylee_sync.source import GitSource, SourceSettings

    repo = GitRepo(tmp_path / "repo")
    repo.write("units/web.yaml", unit_yaml("web"))
    repo.write("units/copy.yaml", unit_yaml("web"))
    repo.write("units/bad.yaml", BAD)
    os.symlink("web.yaml", repo.path / "units/alias.yml")
    repo.commit()
    monkeypatch.chdir(repo.path)
    _, out, _ = run("validate", "--format", "json", "--path", "units")
    on_disk = {(p["file"], p["field"], p["reason"]) for p in json.loads(out)["problems"]}
    with GitSource(SourceSettings(str(repo.path), path="units")) as source:
        state = source.desired(source.resolve())
    in_commit = {(i.file, i.field, i.reason) for p in state.problems for i in p.issues}
    assert on_disk == in_commit
    assert len(in_commit) == 4
