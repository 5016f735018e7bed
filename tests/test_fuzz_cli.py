"""Every command of both programs, given hostile flag and environment values.

The command tree is walked (:func:`commands`), so a new command or option is fuzzed
without touching this file. Each value option and argument of each command gets every
hostile value of its kind (:data:`HOSTILE`), once as a flag and once through its
environment variable, on top of a baseline invocation that works against the session
etcd and a real git repository. Whatever the value, a command must:

- never print a traceback and never exit 70 (an internal error);
- if it fails, say so in exactly one ``error:``/``Error:`` line, with no raw control
  character from the value (terminal injection), and write nothing: no etcd key under
  its prefix (the ``master`` lease and the ``sync/status`` report aside) and no file.

The counts of cases run are recorded in docs/reliability.md ("Hostile input").
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import click
import pytest
from click.testing import CliRunner, Result

from kaylee_sync.cli.kaylee import cli as kaylee_cli
from kaylee_sync.cli.sync import cli as sync_cli
from kaylee_sync.errors import StoreError
from kaylee_sync.server import SchedulerServer
from kaylee_sync.store import Store, StoredValue, keys
from kaylee_sync.sync.inventory import assemble
from tests.gitrepo import GitRepo, unit_yaml

INTERNAL_ERROR = 70
PROGRAMS: dict[str, click.Group] = {"kaylee-sync": sync_cli, "kaylee": kaylee_cli}
# Keys that report rather than hold state: a refused sync still records its attempt, and
# commands that lead for a moment (apply, --once) hold the master lease while they run,
# and the scheduler pass of --once records the progress of the rollouts it looked at.
# A refused prune is recorded, not an error to hide: its hold (sync/prune-hold) is what keeps
# the units, and the inventory may record the refused commit as long as it still owns every
# unit (compared by the units it lists, below).
REPORT_KEYS = ("master", "sync/status", "scheduler/rollouts/", "sync/prune-hold")
INVENTORY_KEYS = ("sync/inventory", "sync/owned/")  # compared by what they mean: owned()
# Each hostile value reaches each option once: by its flag or, for every other value of an
# option that has a variable, by that variable (alternating, so both ways meet every kind of
# value and every option). Both paths convert through the same click type; the variable
# cases check that a value arrives that way too. FUZZ_ALL=1 sends every value both ways
# (the suite's fuzz time then grows by about 80 %).
FUZZ_ALL = bool(os.environ.get("FUZZ_ALL"))
# No case may take this long: a read of /dev/zero or a wait on a huge timeout would.
CASE_SECONDS = 60

HOSTILE: dict[str, list[str]] = {
    "number": [
        "-1", "0", "-0.0", "1e400", "-1e400", "nan", "NaN", "inf", "-inf", "1e300",
        "99999999999999999999999999999", "0x10", "1_000", "1e-320",
    ],
    "duration": ["99999999d", "1" + "0" * 400 + "s", "-5m", "0s", "1e400s", "2h-1m"],
    "url": [
        "http://[::1", "http://[::1]:99999", "http://", "ftp://127.0.0.1:1", "unix://",
        "http://user:pw@127.0.0.1:1", "http://127.0.0.1:2379/path?q#f", "http://h:-1",
        "127.0.0.1:2379", ",,,", "http://[::1]:0", "http://127.0.0.1:1" + "/x" * 2000,
    ],
    "path": ["/dev/zero", "/dev/null", "/nonexistent/dir/x", "/etc", ".", "/proc/self/status"],
    "text": [
        "", " ", "-", "--", "\x1b[31mred\x07", "a\nb", "tab\there", "x" * 20_000,
        "\udcff\udcfe", "é✓", "../../etc/passwd", "units/../..", "*", "a" * 300,
    ],
}  # fmt: skip

# Which kinds of hostile values each click type gets ("text" goes to every type).
KINDS: dict[str, tuple[str, ...]] = {
    "Seconds": ("number",),
    "IntRange": ("number",),
    "Duration": ("duration", "number"),
    "Path": ("path",),
    "NewFile": ("path",),
    "Directory": ("path",),
    "Choice": (),
}
# A free-text option gets the text values, plus the kind its name says it holds.
KIND_BY_NAME = {"endpoint": "url", "repo": "url", "listen": "url", "file": "path", "path": "path"}


@dataclass
class Command:
    """One command of the tree, its baseline arguments and what it accepts."""

    program: str
    path: list[str]  # the subcommand names after the program
    command: click.Command
    # the option name (or argument name) → baseline value, for this command alone
    baseline: dict[str, str] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return " ".join([self.program, *self.path])


def commands() -> Iterator[Command]:
    """Every command of both programs (groups included), walked from the roots."""

    def walk(program: str, path: list[str], command: click.Command) -> Iterator[Command]:
        yield Command(program, path, command)
        if isinstance(command, click.Group):
            for name, sub in sorted(command.commands.items()):
                yield from walk(program, [*path, name], sub)

    for program, root in PROGRAMS.items():
        yield from walk(program, [], root)


def value_params(command: click.Command) -> list[click.Parameter]:
    """The parameters that take a value (flags take none; help and version act at once)."""
    return [
        p for p in command.params if not (isinstance(p, click.Option) and (p.is_flag or p.is_eager))
    ]


def envvars(program: str, path: list[str], param: click.Parameter) -> list[str]:
    """The environment variables click reads for ``param``: explicit ones, or the automatic
    ``KAYLEE[_SUBCOMMAND]_OPTION`` of both programs' ``auto_envvar_prefix``."""
    if isinstance(param, click.Argument):
        return []
    explicit = param.envvar
    if explicit:
        return [explicit] if isinstance(explicit, str) else list(explicit)
    parts = ["KAYLEE", *(p.replace("-", "_").upper() for p in path), (param.name or "").upper()]
    return ["_".join(parts)]


def kinds_of(param: click.Parameter) -> list[str]:
    type_name = type(param.type).__name__
    if type_name in KINDS:
        return ["text", *KINDS[type_name]]
    named = {kind for word, kind in KIND_BY_NAME.items() if word in (param.name or "")}
    return ["text", *sorted(named)]


class Hung(BaseException):
    """Raised by the alarm in a case that does not finish (not an Exception: no command
    may catch it and call it an internal error)."""


@dataclass
class World:
    """What the baseline invocations work on: the session etcd and real files."""

    etcd: list[str]  # flags that point at this test's prefix
    prefix: str
    store: Store
    repo: GitRepo
    unit_file: Path
    plan_file: Path
    workdir: Path


def baseline(world: World, cmd: Command) -> tuple[list[str], dict[str, str]]:
    """(positional arguments, option → value) that make ``cmd`` do its real work."""
    etcd = {"--etcd-endpoints": world.etcd[1], "--etcd-prefix": world.prefix}
    fleet = {"--fleet-prefix": world.prefix + "/fleet/"}
    repo = {"--repo": str(world.repo.path), "--path": "units"}
    label = " ".join([cmd.program, *cmd.path])
    table: dict[str, tuple[list[str], dict[str, str]]] = {
        "kaylee-sync": ([], {**repo, **etcd, **fleet, "--listen": ""}),
        "kaylee-sync render": ([str(world.unit_file)], {}),
        "kaylee-sync plan": ([], {**repo, **etcd}),
        "kaylee-sync apply": ([str(world.plan_file)], {**repo, **etcd}),
        "kaylee-sync validate": ([str(world.unit_file)], {}),
        "kaylee-sync schema": ([], {}),
        "kaylee-sync suspend": (["web"], {**etcd, "--reason": "fuzz"}),
        "kaylee-sync resume": (["web"], etcd),
        "kaylee-sync status": ([], etcd),
        "kaylee-sync sync": ([], etcd),
        "kaylee-sync import-v2": (
            [str(world.workdir / "imported")],
            {"--from": world.etcd[1], "--prefix": world.prefix + "/v2"},
        ),
        "kaylee-sync systemd-unit": ([], {}),
        "kaylee": ([], etcd),
        "kaylee run": ([str(world.unit_file)], fleet),
        "kaylee ls": ([], fleet),
        "kaylee restart": (["web"], {}),
        "kaylee rm": (["nosuch"], {}),
        "kaylee server": ([], fleet),
        "kaylee rollout status": (["web"], {}),
        "kaylee rollout promote": (["web"], {}),
        "kaylee rollout pause": (["web"], {}),
        "kaylee rollout resume": (["web"], {}),
    }
    if label not in table:
        pytest.fail(f"{label} is a new command: give it a baseline invocation here")
    return table[label]


def argv(
    world: World, cmd: Command, drop: str = "", value: tuple[str, str] | None = None
) -> list[str]:
    """The argument list for ``cmd``: its baseline, without option ``drop`` (so that its
    environment variable is read), with ``value`` = (option or argument name, value) set."""

    def level(label_cmd: Command, sets: tuple[str, str] | None) -> list[str]:
        positional, options = baseline(world, label_cmd)
        if sets is not None and not sets[0].startswith("-"):
            positional = [sets[1]]
        out = list(positional)
        for key, val in options.items():
            if key != drop and (sets is None or key != sets[0]):
                out += [key, val]
        if sets is not None and sets[0].startswith("-"):
            out += list(sets)
        return out

    if cmd.program == "kaylee-sync":
        if not cmd.path:
            return [*level(cmd, value), "--once"]
        return [*cmd.path, *level(cmd, value)]
    root = Command("kaylee", [], kaylee_cli)
    if not cmd.path:  # the group's own options, exercised through 'kaylee ls --no-fleet'
        ls = Command("kaylee", ["ls"], kaylee_cli.commands["ls"])
        return [*level(root, value), "ls", *level(ls, None), "--no-fleet"]
    return [*level(root, None), *cmd.path, *level(cmd, value)]


# Exit codes that are not failures: plan says "changes" with 2.
SUCCESS = {"kaylee-sync plan": {0, 2}}
# Commands whose exit 1 is a report, not an error message: plan and validate print what
# is invalid (or a refused prune) on stdout; the daemon's one sync logs why it failed; the
# daemon without a repository prints its help (exit 2).
REPORTERS = {"kaylee-sync plan", "kaylee-sync validate", "kaylee-sync"}


def cases(cmd: Command, *, env: bool) -> Iterator[tuple[str, str, str]]:
    """(option or argument, environment variable or "", value) for every hostile case."""
    for index, param in enumerate(value_params(cmd.command)):
        name = param.opts[0] if isinstance(param, click.Option) else (param.name or "")
        variables = envvars(cmd.program, cmd.path, param)
        if env and not variables:
            continue
        for kind in kinds_of(param):
            for position, value in enumerate(HOSTILE[kind]):
                by_variable = bool(variables) and (index + position) % 2 == 1
                if FUZZ_ALL or by_variable == env:  # see FUZZ_ALL
                    yield name, variables[0] if env else "", value


def case_count(*, env: bool) -> int:
    return sum(1 for cmd in commands() for _ in cases(cmd, env=env))


def snapshot(world: World) -> tuple[object, ...]:
    """Everything a refused command must leave alone: its etcd keys and the work dir."""
    everything = world.store.get_prefix("")
    inventory = [s for s in everything if s.key.startswith(INVENTORY_KEYS)]
    stored = tuple(
        [(s.key, s.value) for s in everything if not s.key.startswith(REPORT_KEYS + INVENTORY_KEYS)]
        + [("sync/inventory (owned units)", owned(inventory))]
    )
    files = tuple(sorted(str(p.relative_to(world.workdir)) for p in world.workdir.rglob("*")))
    return stored, files


def owned(inventory: list[StoredValue]) -> object:
    """What an inventory means for safety: the units Git owns (not which commit it names)."""
    header = next((s for s in inventory if s.key == keys.INVENTORY), None)
    try:
        found = assemble(header, [s for s in inventory if s.key.startswith(keys.OWNED)])
    except StoreError:
        return [(s.key, s.value) for s in inventory]
    return sorted(found.units) if found is not None else None


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def changes(before: tuple[object, ...], after: tuple[object, ...]) -> str:
    """What differs between two snapshots, in a few words ("" when nothing does)."""
    if before == after:
        return ""
    keys_then, keys_now = (dict(s[0]) for s in (before, after))  # type: ignore[call-overload]
    touched = sorted(k for k in {*keys_then, *keys_now} if keys_then.get(k) != keys_now.get(k))
    files = sorted(set(after[1]) ^ set(before[1]))  # type: ignore[call-overload]
    return f"wrote {', '.join([*touched, *files])[:200]} although it failed"


def judge(cmd: Command, result: Result, changed: str) -> str:
    """ "" when ``result`` keeps the promises, else what went wrong (one line)."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return f"raised {type(result.exception).__name__}: {result.exception}"[:300]
    if "Traceback" in result.output:
        return "printed a traceback"
    if result.exit_code == INTERNAL_ERROR:
        return "exit 70"
    if result.exit_code in SUCCESS.get(cmd.label, {0}):
        return ""
    if cmd.label in REPORTERS and not result.stderr.lower().startswith("error"):
        if not result.output.strip():
            return "failed without a word"
        return changed
    errors = [line for line in result.stderr.splitlines() if line.lower().startswith("error")]
    if len(errors) != 1:
        return f"{len(errors)} error lines in {result.stderr[:300]!r}"
    if _CONTROL.search(result.stderr):
        return f"a raw control character in {result.stderr[:300]!r}"
    return changed


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise Hung


def run_cases(
    world: World, cmd: Command, *, env: bool, values: Callable[[str], bool] = lambda _: True
) -> tuple[int, list[str]]:
    """Run every hostile case of ``cmd``; (cases run, failures)."""
    program = PROGRAMS[cmd.program]
    failures: list[str] = []
    count = 0
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for name, variable, value in cases(cmd, env=env):
            if not values(value):
                continue
            count += 1
            if env:
                args, environment = argv(world, cmd, drop=name), {variable: value}
            else:
                args, environment = argv(world, cmd, value=(name, value)), {}
            before = snapshot(world)
            signal.alarm(CASE_SECONDS)
            try:
                result = CliRunner().invoke(program, args, env=environment)
            except Hung:
                failures.append(f"{_case(cmd, name, variable, value)}: did not finish")
                continue
            finally:
                signal.alarm(0)
            verdict = judge(cmd, result, changes(before, snapshot(world)))
            if verdict:
                failures.append(f"{_case(cmd, name, variable, value)}: {verdict}")
    finally:
        signal.signal(signal.SIGALRM, previous)
    return count, failures


def _case(cmd: Command, name: str, variable: str, value: str) -> str:
    shown = value if len(value) < 40 else value[:37] + "..."
    where = f"{variable}={shown!r}" if variable else f"{name} {shown!r}"
    return f"{cmd.label}: {where}"


@pytest.fixture
def world(
    tmp_path: Path, etcd_args: list[str], etcd_prefix: str, store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> World:  # fmt: skip
    repo = GitRepo(tmp_path / "repo")
    repo.write("units/web.yaml", unit_yaml("web", "example.com/web:1"))
    repo.write("units/api.yaml", unit_yaml("api", "example.com/api:1"))
    repo.commit("two units")
    workdir = tmp_path / "work"
    workdir.mkdir()
    unit_file = tmp_path / "solo.yaml"
    unit_file.write_text(unit_yaml("solo", "example.com/solo:1"))
    plan_file = tmp_path / "plan.json"
    world = World(etcd_args, etcd_prefix, store, repo, unit_file, plan_file, workdir)
    # The cluster follows the repository, and a saved plan of it exists.
    monkeypatch.chdir(workdir)
    sync = CliRunner().invoke(sync_cli, argv(world, Command("kaylee-sync", [], sync_cli)))
    assert sync.exit_code == 0, sync.output
    saved = CliRunner().invoke(
        sync_cli, ["plan", *argv(world, Command("kaylee-sync", ["plan"], sync_cli))[1:],
                   "--out", str(plan_file)],
    )  # fmt: skip
    assert saved.exit_code == 0, saved.output
    # 'kaylee server' would schedule until stopped: its run returns at once here, after
    # every value has been parsed, checked and turned into settings (and its listening
    # socket is released, as run() would).
    monkeypatch.setattr("kaylee_sync.server.SchedulerServer.run", SchedulerServer.close_listener)
    return world


ALL = list(commands())


@pytest.mark.parametrize("cmd", ALL, ids=[c.label for c in ALL])
def test_a_hostile_flag_value_gets_one_line_and_writes_nothing(world: World, cmd: Command) -> None:
    count, failures = run_cases(world, cmd, env=False)
    assert not failures, f"{len(failures)} of {count} cases failed:\n" + "\n".join(failures[:40])


@pytest.mark.parametrize("cmd", ALL, ids=[c.label for c in ALL])
def test_a_hostile_environment_value_gets_one_line_and_writes_nothing(
    world: World, cmd: Command
) -> None:
    count, failures = run_cases(world, cmd, env=True)
    assert not failures, f"{len(failures)} of {count} cases failed:\n" + "\n".join(failures[:40])


# The values issue 9 found crashing the command line, each with the words its one-line
# error must contain. "{repo}", "{etcd}", "{prefix}" are filled in from the world.
ISSUE_9: list[tuple[list[str], dict[str, str], str]] = [
    (["suspend", "web", "--reason", "r", "--for", "99999999d", "{etcd}"], {}, "at most 3650d"),
    (["suspend", "web", "--reason", "r", "--for", "1" + "0" * 400 + "s", "{etcd}"], {},
     "at most 3650d"),
    (["plan", "--repo", "{repo}", "--out", "/nonexistent/dir/plan.json", "{etcd}"], {},
     "directory does not exist"),
    (["plan", "--repo", "{repo}", "{etcd}"], {"KAYLEE_CACHE_DIR": "/dev/null"},
     "is not a directory"),
    (["--repo", "{repo}", "--once", "{etcd}"], {"KAYLEE_INTERVAL": "inf"},
     "not a finite number"),
    (["status", "--etcd-endpoints", "http://[::1"], {}, "is not a valid URL"),
    (["plan", "--repo", "{repo}", "--https-token-file", "/dev/zero", "{etcd}"], {},
     "larger than 64 KiB"),
    (["plan", "--repo", "https://me:hunter2@git.example.com/u.git", "{etcd}"], {},
     "--https-token-file"),
]  # fmt: skip


def _fill(world: World, args: list[str]) -> list[str]:
    out: list[str] = []
    for arg in args:
        out += world.etcd if arg == "{etcd}" else [str(world.repo.path) if arg == "{repo}" else arg]
    return out


@pytest.mark.parametrize(("args", "env", "message"), ISSUE_9, ids=[c[2] for c in ISSUE_9])
def test_the_values_issue_9_found_get_one_line_and_write_nothing(
    world: World, args: list[str], env: dict[str, str], message: str
) -> None:
    before = snapshot(world)
    result = CliRunner().invoke(sync_cli, _fill(world, args), env=env)
    assert result.exit_code not in (0, INTERNAL_ERROR), result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "hunter2" not in result.output
    assert snapshot(world) == before
