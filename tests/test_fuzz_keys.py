"""Every etcd key kaylee reads, filled with garbage: reported, never a crash, never a loss.

For each key (a unit, the inventory's header and a shard, the status, a suspension, a
restart generation, the leader) and each garbage value, the views that show it
(``kaylee-sync status``, ``kaylee ls``, ``kaylee-sync plan``) and one sync (``kaylee-
sync --once``, the daemon's sync) must give a one-line error or skip and report — never
a traceback, never exit 70, never a raw escape sequence from the value on the terminal —
and delete nothing. Once the key is repaired (or, for a unit, by the sync itself), the
next sync converges: etcd holds Git's units again and the status says ok.

The counts of cases run are recorded in docs/reliability.md ("Hostile input").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kaylee_sync.cli.kaylee import cli as kaylee_cli
from kaylee_sync.cli.sync import cli as sync_cli
from kaylee_sync.store import Store, keys
from kaylee_sync.sync.inventory import shard_of
from tests.gitrepo import GitRepo, unit_json, unit_yaml

INTERNAL_ERROR = 70

GENERIC = [
    b"", b"\xff\xfe\x00", b"null", b"[]", b"{}", b"1e400", b"NaN", b"\x1b[2J\x1b[31m",
    b"x" * 100_000, b'"a string"', b"[" * 5_000,
]  # fmt: skip


def status_doc(**attempt: object) -> bytes:
    record = {
        "time": 1_700_000_000.0, "commit": "abc", "ok": True, "error": "", "counts": {},
        "problems": [], "problems_omitted": 0, "prune_refused": "", "duration_seconds": 0.1,
        "leader": "x", **attempt,
    }  # fmt: skip
    return json.dumps({"v": 1, "attempt": record, "last_success": record}).encode()


def suspension_doc(**fields: object) -> bytes:
    doc = {"who": "alice", "reason": "r", "since": 1_700_000_000.0, "until": None, **fields}
    return json.dumps(doc).encode()


SPECIFIC: dict[str, list[bytes]] = {
    keys.unit_key("web"): [b'{"name":"web","replicas":1e400}', b'{"name":"other"}'],
    keys.INVENTORY: [b'{"v":1,"files":null}', b'{"v":99}', b'{"v":2,"repo":"r"}'],
    keys.owned_key(shard_of("web")): [
        b'{"v":2,"path":"units","units":{"api":"x"}}',  # a unit in the wrong shard
        b'{"v":2,"path":"units","units":{"web":null}}', b'{"v":1}',
    ],
    keys.STATUS: [
        status_doc(time=1e300), status_doc(time=float("nan")), status_doc(time=-1),
        status_doc(time="soon"), status_doc(duration_seconds=float("inf")),
        status_doc(problems=[None]), status_doc(problems=[{"file": "f"}]),
        status_doc(counts={"create": -1}), status_doc(ok="yes"), status_doc(commit=None),
        status_doc(problems_omitted=1e400), b'{"v":1,"attempt":null}',
    ],
    keys.suspended_key("web"): [
        suspension_doc(until=1e12), suspension_doc(until=float("inf")),
        suspension_doc(since=float("nan")), suspension_doc(until="tomorrow"),
        suspension_doc(who=5), suspension_doc(until=-5), suspension_doc(since=1e300),
    ],
    keys.restart_key("web"): [b"-1", b"1e400", b"99999999999999999999999999999", b"abc"],
    keys.MASTER: [],
}  # fmt: skip

CASES = [(key, value) for key, specific in SPECIFIC.items() for value in [*GENERIC, *specific]]


def _id(case: tuple[str, bytes]) -> str:
    key, value = case
    return f"{key}={value[:24]!r}"


def run(program: object, args: list[str]) -> Result:
    # color=True: keep escape sequences, as a terminal would receive them.
    return CliRunner().invoke(program, args, color=True)  # type: ignore[arg-type]


def judge(what: str, result: Result) -> str:
    """ "" when ``result`` keeps the promises, else what went wrong."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return f"{what}: raised {type(result.exception).__name__}: {result.exception}"[:300]
    if "Traceback" in result.output or result.exit_code == INTERNAL_ERROR:
        return f"{what}: a traceback / exit 70: {result.output[-300:]!r}"
    if "\x1b" in result.output:
        return f"{what}: a raw escape sequence in {result.output[:300]!r}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    if result.exit_code == 1 and what != "sync" and not errors and not result.stdout:
        return f"{what}: failed without a word"
    if len(errors) > 2:
        return f"{what}: {len(errors)} error lines"
    return ""


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    repo = GitRepo(tmp_path / "repo")
    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:1"))
    repo.write("units/api.yaml", unit_yaml("api", "example.com/api:1"))
    repo.commit("two units")
    return repo


def git_units() -> dict[str, bytes]:
    return {
        keys.unit_key("web"): unit_json("web", "example.com/web:1").encode(),
        keys.unit_key("api"): unit_json("api", "example.com/api:1").encode(),
    }


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_garbage_in_a_key_is_reported_deletes_nothing_and_heals(
    case: tuple[str, bytes], repo: GitRepo, etcd_args: list[str], store: Store
) -> None:
    key, garbage = case
    sync = [*etcd_args, "--repo", str(repo.path), "--path", "units", "--once", "--no-scheduler"]
    plan = ["plan", "--repo", str(repo.path), "--path", "units", *etcd_args]
    assert run(sync_cli, sync).exit_code == 0
    store.put(key, garbage)

    failures = [
        judge("status", run(sync_cli, ["status", *etcd_args])),
        judge("status --format json", run(sync_cli, ["status", "--format", "json", *etcd_args])),
        judge("ls", run(kaylee_cli, [*etcd_args, "ls", "--no-fleet"])),
        judge("plan", run(sync_cli, plan)),
        judge("sync", run(sync_cli, sync)),
    ]
    assert not [f for f in failures if f], failures
    # Nothing deleted: every unit Git has is still there (a garbage unit is repaired).
    units = {s.key: s.value for s in store.get_prefix(keys.UNITS)}
    assert set(git_units()) <= set(units)

    if key != keys.unit_key("web"):
        store.delete(key)
    healed = run(sync_cli, sync)
    assert healed.exit_code == 0, healed.output
    assert {s.key: s.value for s in store.get_prefix(keys.UNITS)} == git_units()
    status = run(sync_cli, ["status", "--format", "json", *etcd_args])
    assert status.exit_code == 0 and json.loads(status.stdout)["attempt"]["ok"] is True
