"""Parsing a batch of unit files in worker processes gives what parsing in-process gives.

Every comparison is against :func:`parse_file` (or a :class:`GitSource` that never
starts a worker) on the same bytes, field for field, for valid files and for every kind
of invalid one. The fallback tests start broken workers (``worker_command``): one that
cannot start, dies, never answers, answers a pickle that would run a command, or
answers about other files; each time every file must still get its in-process result.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from pathlib import Path

import pytest

from bench.fixtures import unit_relpath
from bench.fixtures import unit_yaml as bench_unit_yaml
from kaylee_sync.plan.model import DesiredUnit, FileProblem
from kaylee_sync.settings import EtcdSettings
from kaylee_sync.source import GitSource, SourceSettings
from kaylee_sync.source.files import is_unit_name
from kaylee_sync.source.parsepool import BatchSettings, BatchStats, parse_batch, worker_count
from kaylee_sync.source.units import LFS_POINTER, git_blob_id, parse_file
from kaylee_sync.spec import to_json
from kaylee_sync.store import Store, keys
from kaylee_sync.sync.syncer import Syncer
from tests.gitrepo import GitRepo, unit_yaml

SAMPLE_REPO = Path(__file__).resolve().parent.parent / "sample-repo"
PREFIX = "k2"
# One worker whatever the machine's CPUs, small chunks: every test crosses processes.
BATCH = BatchSettings(min_files=1, workers=1, chunk_files=3)

_BOMB = "\n".join(
    ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    + ["name: bomb", "apps: [{image: x}]", ""]
)
_LONG_ARGS = "".join(f"      - --flag-{i}={'x' * 90}\n" for i in range(25))

# Invalid unit files, one of each kind of problem the loader and the checks report.
INVALID: dict[str, bytes] = {
    "bad/syntax.yaml": b"name: a\napps: [\n",
    "bad/tab.yaml": b"name: a\n\tapps: []\n",
    "bad/duplicate-key.yaml": b"name: a\nname: b\napps: [{image: x}]\n",
    "bad/unknown-field.yaml": b"name: a\nimage: x\napps: [{image: x}]\n",
    "bad/wrong-types.yaml": b"name: a\nreplicas: two\napps: {image: x}\n",
    "bad/yes-is-a-boolean.yaml": b"name: a\nglobal: yes\nreplicas: 0o17\napps: [{image: x}]\n",
    "bad/on-key.yaml": b"name: a\non: 1\napps: [{image: x}]\n",
    "bad/octal.yaml": b"name: a\nreplicas: 010\nmachineId: 0x1f\napps: [{image: x}]\n",
    "bad/bomb.yaml": _BOMB.encode(),
    "bad/deep.yaml": b"name: a\napps: " + b"[" * 40 + b"x" + b"]" * 40 + b"\n",
    "bad/nul.yaml": b"name: a\x00\n",
    "bad/latin1.yaml": b"name: caf\xe9\napps: [{image: x}]\n",
    "bad/empty.yaml": b"",
    "bad/null.yaml": b"~\n",
    "bad/two-documents.yaml": b"name: a\napps: [{image: x}]\n---\nname: b\n",
    "bad/merge-key.yaml": b"name: a\nbase: &b {net: host}\n<<: *b\napps: [{image: x}]\n",
    "bad/timestamp.yaml": b"name: a\nnet: 2024-01-01\napps: [{image: x}]\n",
    "bad/tagged.yaml": b"name: !!python/object:os.system a\napps: [{image: x}]\n",
    "bad/too-long-for-fleet.yaml": (
        f"name: long\napps:\n  - image: example.com/long:1\n    args:\n{_LONG_ARGS}".encode()
    ),
    "bad/lfs.yaml": LFS_POINTER + b"\noid sha256:0\nsize 1\n",
    "bad/surrogates.json": b'{"name": "a", "apps": [{"image": "x\\ud83d\\ude00 \\udc00"}]}',
    "bad/huge-number.yaml": b"name: a\nreplicas: " + b"9" * 5000 + b"\napps: [{image: x}]\n",
    "ok/policy.yaml": (
        b"name: rolled\nreplicas: 3\napps: [{image: x}]\nrollout: {canary: 1, maxParallel: 2}\n"
    ),
    "ok/emoji.json": b'{"name": "e", "apps": [{"image": "x", "args": ["\\ud83d\\ude00"]}]}',
}


def in_process(files: list[tuple[str, str, bytes]]) -> list[DesiredUnit | FileProblem]:
    return [parse_file(path, blob, data, PREFIX) for path, blob, data in files]


def batch(
    files: list[tuple[str, str, bytes]], settings: BatchSettings = BATCH
) -> tuple[list[DesiredUnit | FileProblem], BatchStats]:
    return parse_batch(iter(files), lambda p, b, d: parse_file(p, b, d, PREFIX), PREFIX, settings)


def as_files(contents: dict[str, bytes]) -> list[tuple[str, str, bytes]]:
    return [(path, git_blob_id(data), data) for path, data in contents.items()]


def assert_same(
    got: list[DesiredUnit | FileProblem], want: list[DesiredUnit | FileProblem]
) -> None:
    assert got == want  # dataclass equality: every field, issues in order
    for mine, theirs in zip(got, want, strict=True):
        assert type(mine) is type(theirs)
        if isinstance(mine, DesiredUnit):
            assert isinstance(theirs, DesiredUnit)
            assert to_json(mine.spec) == to_json(theirs.spec) == mine.value == theirs.value
        else:
            assert [str(issue) for issue in mine.issues] == [str(i) for i in theirs.issues]


def sample_files() -> dict[str, bytes]:
    return {
        str(path.relative_to(SAMPLE_REPO)): path.read_bytes()
        for path in sorted(SAMPLE_REPO.rglob("*"))
        if path.suffix in (".yaml", ".yml", ".json")
    }


def test_the_sample_repository_parses_the_same_in_workers() -> None:
    files = as_files(sample_files())
    assert len(files) >= 6
    got, stats = batch(files)
    assert_same(got, in_process(files))
    assert stats.in_workers >= 2 * BATCH.chunk_files and stats.failures == ()
    assert all(isinstance(result, DesiredUnit) for result in got)


def test_every_kind_of_invalid_file_gets_the_same_issues_in_workers() -> None:
    files = as_files(INVALID)
    want = in_process(files)
    got, stats = batch(files)
    assert_same(got, want)
    assert stats.in_workers >= 2 * BATCH.chunk_files and stats.failures == ()
    problems = {r.path: r for r in want if isinstance(r, FileProblem)}
    assert len(problems) == len(INVALID) - 2  # the two ok/ files are units
    assert any("aliases expand" in i.reason for i in problems["bad/bomb.yaml"].issues)
    assert problems["bad/bomb.yaml"].name == "bomb"


def test_a_yaml_bomb_in_a_worker_fails_fast_with_the_same_problem() -> None:
    # The bomb is first: it lands in a worker's first chunk, not the parent's share.
    files = as_files({"units/bomb.yaml": _BOMB.encode(), **sample_files()})
    got, stats = batch(files, BatchSettings(min_files=1, workers=1, chunk_files=1))
    assert stats.in_workers >= 2 and stats.failures == ()
    assert_same(got, in_process(files))
    bomb = got[0]
    assert isinstance(bomb, FileProblem) and bomb.path == "units/bomb.yaml"
    assert [i.reason for i in bomb.issues] == ["YAML aliases expand to too many nodes"]


def test_the_benchmark_files_parse_the_same_in_workers() -> None:
    files = as_files({unit_relpath(i): bench_unit_yaml(i).encode() for i in range(400)})
    got, stats = batch(files, BatchSettings(min_files=1, workers=2, chunk_files=25))
    assert_same(got, in_process(files))
    assert stats.in_workers >= 2 * 25 and stats.workers == 2 and stats.failures == ()


def test_a_worker_does_not_import_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A checkout of the unit repository may hold a yaml.py: the worker must not run it.
    marker = tmp_path / "imported"
    (tmp_path / "yaml.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    files = as_files(sample_files())
    got, stats = batch(files)
    assert stats.in_workers > 0 and stats.failures == ()
    assert_same(got, in_process(files))
    assert not marker.exists()


# -- fallback: broken workers ------------------------------------------------------------

_READ_ONE = """
import os, pickle, sys
requests, answers = sys.stdin.buffer, sys.stdout.buffer
files = pickle.loads(requests.read(int.from_bytes(requests.read(8), "big")))
def answer(results):
    payload = pickle.dumps(results)
    answers.write(len(payload).to_bytes(8, "big") + payload)
    answers.flush()
"""
_DIES_AFTER_ONE_ANSWER = (
    _READ_ONE
    + """
from kaylee_sync.source.units import parse_file
answer([parse_file(path, blob, data, sys.argv[1]) for path, blob, data in files])
os.kill(os.getpid(), 9)
"""
)
_ANSWERS_A_COMMAND = (
    _READ_ONE
    + """
class Command:
    def __reduce__(self):
        return os.system, ("touch " + os.environ["KAYLEE_TEST_MARKER"],)
answer([Command() for _ in files])
requests.read()
"""
)
_ANSWERS_ABOUT_OTHER_FILES = (
    _READ_ONE
    + """
from kaylee_sync.source.units import parse_file
answer([parse_file("other/" + path, blob, data, sys.argv[1]) for path, blob, data in files])
requests.read()
"""
)
_NEVER_ANSWERS = "import sys; sys.stdin.buffer.read()"


def broken(script: str, **changes: float) -> BatchSettings:
    settings = BatchSettings(
        min_files=1, workers=1, chunk_files=3, worker_command=(sys.executable, "-c", script)
    )
    return BatchSettings(**{**settings.__dict__, **changes})


@pytest.mark.parametrize(
    ("settings", "workers_answered"),
    [
        (broken("import sys; sys.exit(3)"), 0),
        (broken(_DIES_AFTER_ONE_ANSWER), 3),
        (broken(_ANSWERS_ABOUT_OTHER_FILES), 0),
        (broken(_NEVER_ANSWERS, stall_timeout=0.5), 0),
        (BatchSettings(min_files=1, workers=1, worker_command=("/nonexistent/python",)), 0),
    ],
    ids=["exits-at-once", "dies-after-one-answer", "answers-other-files", "hangs", "no-binary"],
)
def test_a_broken_worker_leaves_its_files_to_the_parent(
    settings: BatchSettings, workers_answered: int
) -> None:
    files = as_files({**INVALID, **sample_files()})
    got, stats = batch(files, settings)
    assert_same(got, in_process(files))
    assert stats.in_workers == workers_answered
    assert len(stats.failures) == 1, stats.failures


def test_an_answer_that_would_run_a_command_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "ran"
    monkeypatch.setenv("KAYLEE_TEST_MARKER", str(marker))
    files = as_files(sample_files())
    got, stats = batch(files, broken(_ANSWERS_A_COMMAND))
    assert_same(got, in_process(files))
    assert stats.in_workers == 0
    assert "may not contain" in stats.failures[0]
    assert not marker.exists()


# -- through GitSource ----------------------------------------------------------------


def desired_both_ways(repo: GitRepo, batch_settings: BatchSettings) -> tuple[GitSource, ...]:
    sources = []
    for parse in (batch_settings, BatchSettings(workers=0)):
        settings = SourceSettings(str(repo.path), path="units", unit_prefix=PREFIX, parse=parse)
        sources.append(GitSource(settings))
    return tuple(sources)


def big_repo(path: Path) -> tuple[GitRepo, str]:
    """600 benchmark units (over the default threshold of 500: the defaults decide), every
    kind of invalid file, the sample repository and a duplicate name, in one commit."""
    repo = GitRepo(path)
    for i in range(600):
        repo.write(unit_relpath(i), bench_unit_yaml(i))
    for path_in_units, data in {**INVALID, **sample_files()}.items():
        repo.write(f"units/{path_in_units}", data)
    repo.write("units/dup/web-00000.yaml", bench_unit_yaml(0))
    return repo, repo.commit()


def test_a_cold_read_in_workers_equals_the_in_process_read(tmp_path: Path) -> None:
    repo, commit = big_repo(tmp_path / "repo")
    workers, alone = desired_both_ways(repo, BatchSettings(workers=1))
    with workers, alone:
        got, want = workers.desired(commit), alone.desired(commit)
        assert got == want
        assert [str(i) for p in got.problems for i in p.issues] == [
            str(i) for p in want.problems for i in p.issues
        ]
        assert {n: u.value for n, u in got.units.items()} == {
            n: u.value for n, u in want.units.items()
        }
        assert len(got.units) > 600 - 2 and len(got.problems) > len(INVALID) - 2
        unit_files = 600 + len([p for p in {**INVALID, **sample_files()} if is_unit_name(p)]) + 1
        assert workers.parsed_files == alone.parsed_files == unit_files
        stats = workers._parser.last_batch
        assert stats is not None and stats.in_workers > 0 and stats.failures == ()
        assert alone._parser.last_batch is None
        # the results are cached like in-process ones: reading again parses nothing
        assert workers.desired(commit) == got and workers.parsed_files == alone.parsed_files


def test_a_small_change_is_parsed_in_process(tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "repo")
    repo.write("units/web.yaml", unit_yaml("web"))
    commit = repo.commit()
    settings = SourceSettings(str(repo.path), path="units", parse=BatchSettings(workers=1))
    with GitSource(settings) as source:
        assert set(source.desired(commit).units) == {"web"}
        assert source._parser.last_batch is None and source._parser.parsed_in_workers == 0


def test_the_sample_repository_reads_the_same_through_git_in_workers(tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "repo")
    shutil.copytree(SAMPLE_REPO, repo.path / "units")
    commit = repo.commit()
    workers, alone = desired_both_ways(repo, BATCH)
    with workers, alone:
        got, want = workers.desired(commit), alone.desired(commit)
        assert got == want and len(got.units) >= 6 and got.problems == ()
        assert workers._parser.parsed_in_workers >= 2 * BATCH.chunk_files


def test_a_sync_parsed_in_workers_writes_what_an_in_process_one_writes(
    tmp_path: Path, etcd_endpoint: str, etcd_prefix: str
) -> None:
    repo, commit = big_repo(tmp_path / "repo")
    written = []
    for suffix, parse in (
        ("workers", BatchSettings(workers=1)),
        ("alone", BatchSettings(workers=0)),
    ):
        source_settings = SourceSettings(str(repo.path), path="units", parse=parse)
        etcd = EtcdSettings(endpoints=(etcd_endpoint,), prefix=f"{etcd_prefix}-{suffix}")
        with GitSource(source_settings) as source, Store(etcd) as store:
            result = Syncer(source, store).sync_once()
            assert result.ok and result.commit == commit
            assert (source.parsed_in_workers > 0) == (suffix == "workers")
            written.append(
                {
                    area: {s.key: s.value for s in store.get_prefix(area)}
                    for area in (keys.UNITS, keys.POLICY, keys.OWNED, keys.INVENTORY)
                }
            )
    assert written[0] == written[1]
    assert len(written[0][keys.UNITS]) > 600 - 2 and written[0][keys.POLICY]


def test_workers_are_left_unstarted_on_a_busy_machine() -> None:
    cpus = len(os.sched_getaffinity(0))
    assert worker_count(BatchSettings(max_load=0.0)) == 0  # the load is always >= 0
    assert worker_count(BatchSettings(max_load=math.inf)) == min(cpus - 1, 8)
    assert worker_count(BatchSettings(workers=3, max_load=0.0)) == 3  # asked for: started
    assert worker_count(BatchSettings(workers=0)) == 0
