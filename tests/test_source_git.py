"""The source layer on a local repository: which files are units, read from which commit."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kaylee_sync.errors import NotFoundError, SpecError, UsageError
from kaylee_sync.plan.model import FileProblem
from kaylee_sync.render import render_issues
from kaylee_sync.source import GitSource, SourceError, SourceSettings
from kaylee_sync.spec import load_unit, to_json
from tests.gitrepo import GitRepo, unit_yaml

OpenSource = Callable[..., GitSource]


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return GitRepo(tmp_path / "repo")


@pytest.fixture
def open_source(tmp_path: Path) -> Iterator[OpenSource]:
    """``open_source(repo_path, **settings)``; every source is closed after the test."""
    opened: list[GitSource] = []

    def make(repo: str | Path, **kwargs: object) -> GitSource:
        kwargs.setdefault("cache_dir", tmp_path / "cache")
        source = GitSource(SourceSettings(str(repo), **kwargs))  # type: ignore[arg-type]
        opened.append(source)
        return source

    yield make
    for source in opened:
        source.close()


def problem_at(problems: tuple[FileProblem, ...], path: str) -> FileProblem:
    found = [p for p in problems if p.path == path]
    assert len(found) == 1, [p.path for p in problems]
    return found[0]


def test_units_are_read_from_the_commit_not_the_working_tree(
    repo: GitRepo, open_source: OpenSource
) -> None:
    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:1"))
    repo.write(".gitignore", "units/ignored.yaml\n")
    sha = repo.commit()
    # Uncommitted: an edit, a new file, and an ignored one.
    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:2"))
    repo.write("units/new.yaml", unit_yaml("new"))
    repo.write("units/ignored.yaml", unit_yaml("ignored"))
    source = open_source(repo.path, path="units")

    state = source.desired(source.resolve())
    assert state.commit == sha
    assert set(state.units) == {"web"}
    assert state.units["web"].spec.apps[0].image == "example.com/web:1"

    worktree = source.worktree_desired()
    assert worktree.commit == sha
    assert set(worktree.units) == {"web", "new"}
    assert worktree.units["web"].spec.apps[0].image == "example.com/web:2"
    assert worktree.units["web"].blob.startswith("worktree:")


def test_desired_state_carries_the_commit_its_time_and_canonical_values(
    repo: GitRepo, open_source: OpenSource
) -> None:
    text = unit_yaml("web")
    repo.write("units/web.yaml", text)
    sha = repo.commit()
    source = open_source(repo.path, path="units/")
    state = source.desired(sha)

    assert (state.repo, state.branch, state.path, state.commit) == (
        str(repo.path),
        "main",
        "units",
        sha,
    )
    assert state.committed_at == float(repo.git("show", "-s", "--format=%ct", sha))
    unit = state.units["web"]
    assert unit.path == "units/web.yaml"
    assert unit.blob == repo.git("rev-parse", f"{sha}:units/web.yaml")
    assert unit.value == to_json(load_unit(text.encode(), "x.yaml"))
    assert state.problems == ()


def test_every_yaml_file_below_the_path_is_a_unit_and_nothing_else(
    repo: GitRepo, open_source: OpenSource
) -> None:
    repo.write("units/a.yaml", unit_yaml("a"))
    repo.write("units/team/deep/b.yml", unit_yaml("b"))
    repo.write("units/README.md", "not a unit\n")
    repo.write("units/c.json", "{}")
    repo.write("units/.d.yaml", "hidden: not read\n")
    repo.write("units/.config/e.yaml", "hidden: not read\n")
    repo.write("units-old/f.yaml", unit_yaml("f"))
    repo.write("other/g.yaml", unit_yaml("g"))
    sha = repo.commit()

    state = open_source(repo.path, path="units").desired(sha)
    assert set(state.units) == {"a", "b"}
    assert state.units["b"].path == "units/team/deep/b.yml"
    assert state.problems == ()


def test_the_whole_repository_skips_dot_files_such_as_ci_configs(
    repo: GitRepo, open_source: OpenSource
) -> None:
    repo.write("web.yaml", unit_yaml("web"))
    repo.write(".pre-commit-config.yaml", "repos: []\n")
    repo.write(".github/workflows/ci.yml", "on: push\n")
    state = open_source(repo.path).desired(repo.commit())
    assert set(state.units) == {"web"}
    assert state.problems == ()


def test_a_symlinked_unit_file_is_rejected_not_followed(
    repo: GitRepo, open_source: OpenSource
) -> None:
    repo.write("units/web.yaml", unit_yaml("web"))
    os.symlink("web.yaml", repo.path / "units/alias.yaml")
    state = open_source(repo.path, path="units").desired(repo.commit())

    assert set(state.units) == {"web"}
    found = problem_at(state.problems, "units/alias.yaml")
    assert found.name is None
    assert found.blob == repo.git("rev-parse", "HEAD:units/alias.yaml")
    (issue,) = found.issues
    assert issue.file == "units/alias.yaml"
    assert "symbolic link" in issue.reason


def test_a_symlinked_directory_is_rejected_but_a_link_to_a_file_is_ignored(
    repo: GitRepo, open_source: OpenSource
) -> None:
    repo.write("shared/db.yaml", unit_yaml("db"))
    repo.write("README.md", "docs\n")
    repo.write("units/web.yaml", unit_yaml("web"))
    os.symlink("../shared", repo.path / "units/shared")
    os.symlink("../README.md", repo.path / "units/README")
    os.symlink("/etc", repo.path / "units/etc")
    os.symlink("shared", repo.path / "units/chain")
    state = open_source(repo.path, path="units").desired(repo.commit())

    assert set(state.units) == {"web"}
    assert [p.path for p in state.problems] == ["units/chain", "units/etc", "units/shared"]
    reasons = {p.path: p.issues[0].reason for p in state.problems}
    assert "to a directory" in reasons["units/shared"]
    assert "out of the repository" in reasons["units/etc"]
    assert "another link" in reasons["units/chain"]


def test_a_submodule_below_the_path_is_rejected(repo: GitRepo, open_source: OpenSource) -> None:
    repo.write("units/web.yaml", unit_yaml("web"))
    first = repo.commit()
    # A gitlink entry, as "git submodule add" records it.
    repo.git("update-index", "--add", "--cacheinfo", f"160000,{first},units/vendored")
    state = open_source(repo.path, path="units").desired(repo.commit(add=False))

    found = problem_at(state.problems, "units/vendored")
    assert "submodule" in found.issues[0].reason
    assert set(state.units) == {"web"}


def test_a_git_lfs_pointer_is_rejected(repo: GitRepo, open_source: OpenSource) -> None:
    repo.write(
        "units/big.yaml",
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
        "size 12345\n",
    )
    state = open_source(repo.path, path="units").desired(repo.commit())
    found = problem_at(state.problems, "units/big.yaml")
    assert "Git LFS pointer" in found.issues[0].reason
    assert state.units == {}


def test_a_blob_over_one_mib_is_refused_without_parsing_it(
    repo: GitRepo, open_source: OpenSource
) -> None:
    repo.write("units/huge.yaml", unit_yaml("huge") + "#" * (1 << 20))
    source = open_source(repo.path, path="units")
    state = source.desired(repo.commit())
    found = problem_at(state.problems, "units/huge.yaml")
    assert "larger than 1048576 bytes" in found.issues[0].reason
    assert source.parsed_files == 0


def test_an_invalid_file_reports_every_issue_and_the_name_it_declares(
    repo: GitRepo, open_source: OpenSource
) -> None:
    bad = "name: api\nreplicas: many\napps:\n  - image: ''\n    bogus: 1\n"
    repo.write("units/api.yaml", bad)
    repo.write("units/broken.yaml", "name: [unclosed\n")
    state = open_source(repo.path, path="units").desired(repo.commit())

    with pytest.raises(SpecError) as expected:
        load_unit(bad.encode(), "units/api.yaml")
    api = problem_at(state.problems, "units/api.yaml")
    assert api.issues == expected.value.issues
    assert len(api.issues) >= 3
    assert api.name == "api"
    broken = problem_at(state.problems, "units/broken.yaml")
    assert broken.name is None
    assert "invalid YAML" in broken.issues[0].reason


def test_a_yaml_bomb_still_names_its_unit_without_being_expanded(
    repo: GitRepo, open_source: OpenSource
) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    repo.write("units/bomb.yaml", "\n".join(levels) + "\nname: bomb\n")
    state = open_source(repo.path, path="units").desired(repo.commit())
    found = problem_at(state.problems, "units/bomb.yaml")
    assert found.name == "bomb"
    assert any("aliases" in i.reason for i in found.issues)


def test_a_unit_fleet_would_refuse_is_a_problem(repo: GitRepo, open_source: OpenSource) -> None:
    args = "".join(f"      - --flag-{i}={'x' * 90}\n" for i in range(25))
    text = f"name: long\napps:\n  - image: example.com/long:1\n    args:\n{args}"
    repo.write("units/long.yaml", text)
    state = open_source(repo.path, path="units", unit_prefix="k2").desired(repo.commit())

    found = problem_at(state.problems, "units/long.yaml")
    spec = load_unit(text.encode(), "units/long.yaml")
    assert found.issues == tuple(render_issues(spec, "units/long.yaml", "k2"))
    assert found.issues and "2048" in found.issues[0].reason
    assert found.name == "long"


def test_two_files_declaring_one_unit_are_all_rejected(
    repo: GitRepo, open_source: OpenSource
) -> None:
    repo.write("units/a.yaml", unit_yaml("web"))
    repo.write("units/b.yaml", unit_yaml("web", "example.com/other:1"))
    repo.write("units/c.yaml", "name: web\nreplicas: lots\n")  # invalid, but says "web"
    repo.write("units/db.yaml", unit_yaml("db"))
    state = open_source(repo.path, path="units").desired(repo.commit())

    assert set(state.units) == {"db"}
    assert [p.path for p in state.problems] == ["units/a.yaml", "units/b.yaml", "units/c.yaml"]
    a = state.problems[0]
    assert a.name == "web" and a.blob == repo.git("rev-parse", "HEAD:units/a.yaml")
    assert "units/b.yaml, units/c.yaml" in a.issues[-1].reason
    assert a.issues[-1].field == "name"
    c = state.problems[2]
    assert len(c.issues) > 1  # its own issues, then the duplicate
    assert "units/a.yaml, units/b.yaml" in c.issues[-1].reason


def test_a_commit_touching_one_file_parses_only_that_file(
    repo: GitRepo, open_source: OpenSource
) -> None:
    for i in range(30):
        repo.write(f"units/u{i}.yaml", unit_yaml(f"u{i}"))
    source = open_source(repo.path, path="units")
    first = source.desired(repo.commit())
    assert source.parsed_files == 30

    repo.write("units/u7.yaml", unit_yaml("u7", "example.com/app:2"))
    second = source.desired(repo.commit())
    assert source.parsed_files == 31
    assert second.units["u7"].spec.apps[0].image == "example.com/app:2"
    assert second.units["u8"] == first.units["u8"]

    # A commit outside the unit path, and the same commit again, parse nothing.
    repo.write("docs/readme.md", "hello\n")
    source.desired(repo.commit())
    source.desired(repo.head())
    assert source.parsed_files == 31


def test_the_parse_cache_is_bounded() -> None:
    from kaylee_sync.source import UnitParser

    parser = UnitParser(max_entries=3)
    for i in range(5):
        text = unit_yaml(f"u{i}").encode()
        parser.parse(f"u{i}.yaml", f"blob{i}", text)
    assert parser.cached("u0.yaml", "blob0") is None
    assert parser.cached("u4.yaml", "blob4") is not None


def test_a_new_local_commit_is_seen_at_once(repo: GitRepo, open_source: OpenSource) -> None:
    repo.write("units/web.yaml", unit_yaml("web"))
    first = repo.commit()
    source = open_source(repo.path, path="units")
    assert source.fetch() == first  # nothing to fetch: the branch head
    second = repo.commit("again")
    assert source.resolve() == second
    assert source.fetch() == second


def test_a_local_repository_follows_its_current_branch_or_the_named_one(
    repo: GitRepo, open_source: OpenSource
) -> None:
    repo.write("units/web.yaml", unit_yaml("web"))
    main = repo.commit()
    repo.git("checkout", "-q", "-b", "release")
    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:release"))
    release = repo.commit()

    current = open_source(repo.path, path="units")
    assert (current.branch, current.resolve()) == ("release", release)
    named = open_source(repo.path, path="units", branch="main")
    assert (named.branch, named.resolve()) == ("main", main)

    # The branch is chosen at start: checking out another one does not move the source.
    repo.git("checkout", "-q", "main")
    assert current.resolve() == release
    with pytest.raises(NotFoundError, match="branch 'nope'"):
        open_source(repo.path, branch="nope").resolve()


def test_resolve_accepts_branches_tags_and_shas_and_refuses_the_rest(
    repo: GitRepo, open_source: OpenSource
) -> None:
    repo.write("units/web.yaml", unit_yaml("web"))
    first = repo.commit()
    repo.git("tag", "-a", "-m", "release 1", "v1")
    second = repo.commit("second")
    source = open_source(repo.path)

    assert source.resolve("v1") == first  # an annotated tag, peeled to its commit
    assert source.resolve(first[:10]) == first
    assert source.resolve("main") == second
    assert source.resolve("HEAD~1") == first
    for unknown in ("nope", "--all", "a b", ""):
        with pytest.raises(NotFoundError):
            source.resolve(unknown)
    with pytest.raises(NotFoundError):
        source.desired("0" * 40)


def test_an_older_commit_is_read_as_it_was(repo: GitRepo, open_source: OpenSource) -> None:
    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:1"))
    old = repo.commit()
    repo.remove("units/web.yaml")
    repo.write("units/db.yaml", unit_yaml("db"))
    repo.commit()
    source = open_source(repo.path, path="units")
    assert set(source.desired(old).units) == {"web"}
    assert set(source.desired(source.resolve()).units) == {"db"}


def test_a_missing_unit_path_holds_no_units_and_a_file_there_is_an_error(
    repo: GitRepo, open_source: OpenSource
) -> None:
    repo.write("units", "a file, not a directory\n")
    sha = repo.commit()
    assert open_source(repo.path, path="elsewhere").desired(sha).units == {}
    with pytest.raises(SourceError, match="unit path 'units' is not a directory"):
        open_source(repo.path, path="units").desired(sha)


def test_worktree_desired_reports_links_and_nested_repositories(
    repo: GitRepo, open_source: OpenSource
) -> None:
    repo.write("units/web.yaml", unit_yaml("web"))
    os.symlink("web.yaml", repo.path / "units/alias.yaml")
    GitRepo(repo.path / "units/nested")  # an untracked repository inside the work tree
    source = open_source(repo.path, path="units")
    state = source.worktree_desired()
    assert state.commit == ""  # nothing committed yet
    assert set(state.units) == {"web"}
    assert [p.path for p in state.problems] == ["units/alias.yaml", "units/nested"]
    assert "nested repository" in state.problems[1].issues[0].reason


def test_a_bare_repository_is_read_in_place_but_has_no_worktree(
    tmp_path: Path, repo: GitRepo, open_source: OpenSource
) -> None:
    repo.write("units/web.yaml", unit_yaml("web"))
    sha = repo.commit()
    bare = GitRepo(tmp_path / "bare.git", bare=True)
    repo.git("push", "-q", str(bare.path), "main")
    source = open_source(bare.path, path="units")
    assert source.local_path == bare.path
    assert set(source.desired(source.resolve()).units) == {"web"}
    assert source.resolve() == sha
    with pytest.raises(UsageError, match="no working tree"):
        source.worktree_desired()


def test_watch_paths_name_the_branch_ref_packed_refs_and_head(
    repo: GitRepo, open_source: OpenSource
) -> None:
    repo.commit()
    source = open_source(repo.path)
    git_dir = repo.path / ".git"
    assert set(source.watch_paths()) == {
        git_dir / "HEAD",
        git_dir / "packed-refs",
        git_dir / "refs/heads/main",
    }


def test_a_path_that_is_no_repository_root_is_refused(
    tmp_path: Path, repo: GitRepo, open_source: OpenSource
) -> None:
    repo.write("units/web.yaml", unit_yaml("web"))
    repo.commit()
    (tmp_path / "plain").mkdir()
    with pytest.raises(SourceError, match="not a git repository"):
        open_source(tmp_path / "plain")
    with pytest.raises(SourceError):
        open_source(repo.path / "units")


@pytest.mark.parametrize(
    ("given", "normalised"),
    [("", ""), (".", ""), ("units/", "units"), ("./units//team", "units/team")],
)
def test_unit_paths_are_normalised(given: str, normalised: str) -> None:
    assert SourceSettings("/r", path=given).path == normalised


@pytest.mark.parametrize("bad", ["/abs", "../up", "units/../../up", "a\\b"])
def test_unit_paths_must_stay_inside_the_repository(bad: str) -> None:
    with pytest.raises(UsageError):
        SourceSettings("/r", path=bad)


@pytest.mark.parametrize("bad", ["", "-x", "a..b", "a b", "a~1", "x.lock", "/a"])
def test_invalid_branch_names_are_refused(bad: str) -> None:
    with pytest.raises(UsageError):
        SourceSettings("/r", branch=bad)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the repository to another user")
def test_a_repository_git_refuses_to_read_is_an_error_not_a_missing_branch(
    repo: GitRepo, open_source: OpenSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo.commit()
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)  # no safe.directory exemption
    for path in [repo.path, *repo.path.rglob("*")]:
        os.lchown(path, 12345, 12345)
    with pytest.raises(SourceError, match="dubious ownership"):
        open_source(repo.path)
