"""The source layer on a remote: a bare clone in the cache, forced and pruning fetches."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kaylee_sync.errors import NotFoundError
from kaylee_sync.source import (
    GitCredentials,
    GitSource,
    SourceError,
    SourceSettings,
    SourceUnavailable,
)
from kaylee_sync.source.settings import is_remote
from tests.gitrepo import GitRepo, unit_yaml

OpenSource = Callable[..., GitSource]


@pytest.fixture
def remote(tmp_path: Path) -> GitRepo:
    return GitRepo(tmp_path / "remote.git", bare=True)


@pytest.fixture
def work(tmp_path: Path, remote: GitRepo) -> GitRepo:
    """A clone of ``remote`` that pushes to it."""
    work = GitRepo(tmp_path / "work")
    work.git("remote", "add", "origin", str(remote.path))
    return work


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def open_source(cache: Path) -> Iterator[OpenSource]:
    opened: list[GitSource] = []

    def make(repo: str, **kwargs: object) -> GitSource:
        kwargs.setdefault("cache_dir", cache)
        source = GitSource(SourceSettings(repo, **kwargs))  # type: ignore[arg-type]
        opened.append(source)
        return source

    yield make
    for source in opened:
        source.close()


def url(repo: GitRepo) -> str:
    return f"file://{repo.path}"


def publish(work: GitRepo, *files: str, message: str = "change") -> str:
    for name in files:
        work.write(f"units/{name}.yaml", unit_yaml(name))
    sha = work.commit(message)
    work.git("push", "-q", "origin", "HEAD:main")
    return sha


def test_the_first_fetch_clones_into_the_cache_and_finds_the_default_branch(
    remote: GitRepo, work: GitRepo, cache: Path, open_source: OpenSource
) -> None:
    sha = publish(work, "web")
    source = open_source(url(remote), path="units")
    assert source.local_path is None
    assert source.branch == ""  # not known before the remote has been asked

    assert source.fetch() == sha
    assert source.branch == "main"
    (clone,) = cache.iterdir()
    assert clone.name.startswith("remote-") and (clone / "HEAD").is_file()
    assert not (clone / ".git").exists()  # a bare clone: no working tree to go stale
    state = source.desired(sha)
    assert set(state.units) == {"web"}
    assert state.repo == url(remote) and state.branch == "main"


def test_the_default_branch_is_the_remotes_head(
    remote: GitRepo, work: GitRepo, open_source: OpenSource
) -> None:
    publish(work, "web")
    work.write("units/db.yaml", unit_yaml("db"))
    trunk = work.commit()
    work.git("push", "-q", "origin", "HEAD:trunk")
    remote.git("symbolic-ref", "HEAD", "refs/heads/trunk")
    source = open_source(url(remote), path="units")
    assert source.fetch() == trunk
    assert source.branch == "trunk"


def test_a_named_branch_is_followed_and_a_missing_one_is_not_found(
    remote: GitRepo, work: GitRepo, open_source: OpenSource
) -> None:
    main = publish(work, "web")
    work.write("units/db.yaml", unit_yaml("db"))
    release = work.commit()
    work.git("push", "-q", "origin", "HEAD:release")
    assert open_source(url(remote), branch="release").fetch() == release
    assert open_source(url(remote), branch="main").fetch() == main
    with pytest.raises(NotFoundError, match="branch 'nope'"):
        open_source(url(remote), branch="nope").fetch()


def test_a_fetch_brings_new_commits_and_follows_a_force_push(
    remote: GitRepo, work: GitRepo, open_source: OpenSource
) -> None:
    first = publish(work, "web")
    source = open_source(url(remote), path="units")
    assert source.fetch() == first
    second = publish(work, "db")
    assert source.resolve() == first  # nothing moves until the next fetch
    assert source.fetch() == second

    # History rewritten upstream: second is gone, third replaces it.
    work.git("reset", "-q", "--hard", first)
    work.write("units/cache.yaml", unit_yaml("cache"))
    third = work.commit()
    with pytest.raises(subprocess.CalledProcessError):
        work.git("push", "-q", "origin", "HEAD:main")  # not a fast-forward
    work.git("push", "-q", "--force", "origin", "HEAD:main")
    assert source.fetch() == third
    assert set(source.desired(third).units) == {"web", "cache"}


def test_deleted_branches_are_pruned_and_tags_follow_the_remote(
    remote: GitRepo, work: GitRepo, open_source: OpenSource
) -> None:
    first = publish(work, "web")
    work.git("push", "-q", "origin", "HEAD:feature")
    work.git("tag", "v1")
    work.git("push", "-q", "origin", "v1")
    source = open_source(url(remote))
    source.fetch()
    assert source.resolve("feature") == first
    assert source.resolve("origin/feature") == first
    assert source.resolve("v1") == first

    second = publish(work, "db")
    work.git("push", "-q", "origin", ":feature")
    work.git("tag", "-f", "v1")
    work.git("push", "-q", "--force", "origin", "v1")
    source.fetch()
    with pytest.raises(NotFoundError):
        source.resolve("feature")
    assert source.resolve("v1") == second


def test_a_restarted_source_reuses_its_clone(
    remote: GitRepo, work: GitRepo, open_source: OpenSource
) -> None:
    sha = publish(work, "web")
    open_source(url(remote), branch="main").fetch()
    again = open_source(url(remote), branch="main")
    assert again.resolve() == sha  # from the cache, before any fetch
    assert set(again.desired(sha).units) == {"web"}


def test_nothing_can_be_read_before_the_first_fetch(
    remote: GitRepo, work: GitRepo, open_source: OpenSource
) -> None:
    publish(work, "web")
    source = open_source(url(remote))
    with pytest.raises(SourceError, match="not been fetched"):
        source.resolve()
    with pytest.raises(SourceError, match="not been fetched"):
        source.desired("main")


def test_an_unreachable_remote_is_unavailable_and_shows_no_credentials(
    tmp_path: Path, open_source: OpenSource
) -> None:
    token = "tok-4f1c9e2b7d5a"
    for repo in (
        "https://alice:hunter2-secret@127.0.0.1:1/team/units.git",
        f"file://bob:pw-0123456789@{tmp_path}/missing.git",
    ):
        source = open_source(repo, credentials=GitCredentials(https_token=token))
        assert "hunter2" not in source.display_repo and "pw-0123" not in source.display_repo
        assert "hunter2" not in repr(source.settings)
        with pytest.raises(SourceUnavailable) as failed:
            source.fetch()
        message = str(failed.value)
        assert message.startswith(f"cannot fetch {source.display_repo}: ")
        for secret in (token, "hunter2-secret", "alice", "pw-0123456789", "bob"):
            assert secret not in message
        assert failed.value.__cause__ is not None


def test_a_remote_that_never_answers_times_out(open_source: OpenSource) -> None:
    with socket.socket() as server:  # accepts connections (backlog) but never replies
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        source = open_source(f"http://127.0.0.1:{port}/units.git", timeout=0.5)
        with pytest.raises(SourceUnavailable, match=r"no answer within 0\.5 s"):
            source.fetch()


def test_each_url_gets_its_own_clone(
    tmp_path: Path, remote: GitRepo, work: GitRepo, cache: Path, open_source: OpenSource
) -> None:
    publish(work, "web")
    other = GitRepo(tmp_path / "other" / "remote.git", bare=True)
    work.git("push", "-q", str(other.path), "HEAD:main")
    open_source(url(remote)).fetch()
    open_source(url(other)).fetch()
    assert len(list(cache.iterdir())) == 2


@pytest.mark.parametrize(
    ("repo", "remote"),
    [
        ("https://example.com/r.git", True),
        ("ssh://git@example.com/r.git", True),
        ("git@example.com:team/r.git", True),
        ("file:///srv/r.git", True),
        ("/srv/r.git", False),
        ("./team:r", False),
        ("relative/dir", False),
    ],
)
def test_urls_are_cloned_and_paths_are_read_in_place(repo: str, remote: bool) -> None:
    assert is_remote(repo) is remote
