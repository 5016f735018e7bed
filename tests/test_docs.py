"""The documentation cannot silently fall behind the code.

Each check is generated from the code itself, so adding a field, a command, an option or a
metric without documenting it fails here, and so does a document that names something that
no longer exists:

- docs/unit-file.md mentions every field of the unit schema;
- docs/cli.md mentions every command and every option of both programs;
- every shell command shown in the docs uses commands and options that exist;
- every ``KAYLEE_*`` variable named in the docs is one the programs read;
- docs/operations.md lists every metric, and the docs name no metric that does not exist;
- every relative link in the docs resolves to a file, and every ``#anchor`` to a heading.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from kaylee_sync.cli.kaylee import cli as kaylee_cli
from kaylee_sync.cli.sync import cli as sync_cli
from kaylee_sync.daemon.metrics import Metrics
from kaylee_sync.spec.schema import unit_schema

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
UNIT_FILE_DOC = DOCS / "unit-file.md"
CLI_DOC = DOCS / "cli.md"
OPERATIONS_DOC = DOCS / "operations.md"
NESTED = ("env", "volumes", "apps")
PROGRAMS: dict[str, click.Group] = {"kaylee-sync": sync_cli, "kaylee": kaylee_cli}

#: every Markdown document a reader can reach: links are followed between them
LINKED_DOCS = sorted(
    [*DOCS.glob("*.md"), ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "sample-repo/README.md"]
)
#: KAYLEE_* names that are not click options, each with the source file that reads or sets it
EXTRA_VARIABLES = {
    "KAYLEE_GIT_TOKEN": "kaylee_sync/cli/gitopts.py",  # an HTTPS token, instead of a file
    "KAYLEE_WEBHOOK_SECRET": "kaylee_sync/cli/daemoncmd.py",  # the webhook secret, ditto
    "KAYLEE_ID": "kaylee_sync/render.py",  # set inside every container, not read by us
    # variables of health-check templates (unit-file.md), not of the environment
    "KAYLEE_UNIT": "kaylee_sync/spec/policy.py",
    "KAYLEE_INDEX": "kaylee_sync/spec/policy.py",
    # how many random rollouts the gated-rollout trial plays (reliability.md)
    "KAYLEE_GATED_TRIALS": "tests/test_scheduler_gated.py",
}


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def documents() -> list[Path]:
    return [p for p in LINKED_DOCS if p.exists()]


# -- unit file fields -------------------------------------------------------------------


def documented_fields() -> list[str]:
    """Every top-level property, then each item property of env, volumes and apps."""
    properties = unit_schema()["properties"]
    fields = list(properties)
    for nested in NESTED:
        fields += [f"{nested}.{name}" for name in properties[nested]["items"]["properties"]]
    return fields


def test_nested_lists_have_item_properties() -> None:
    properties = unit_schema()["properties"]
    for nested in NESTED:
        assert properties[nested]["items"]["properties"], nested


@pytest.mark.parametrize("field", documented_fields())
def test_field_is_documented(field: str) -> None:
    name = field.rsplit(".", 1)[-1]
    assert f"`{name}`" in read(UNIT_FILE_DOC), (
        f"{field} is in unit_schema() but `{name}` is not mentioned in docs/unit-file.md"
    )


# -- commands and options ---------------------------------------------------------------


def commands() -> list[tuple[str, click.Command]]:
    """(``"kaylee-sync plan"``, command) for both programs and each of their subcommands."""
    out: list[tuple[str, click.Command]] = []
    for program, group in PROGRAMS.items():
        out.append((program, group))
        out += [(f"{program} {name}", cmd) for name, cmd in sorted(group.commands.items())]
    return out


def long_options() -> list[tuple[str, str]]:
    """(command, ``--option``) for every long option, --help excepted."""
    out = []
    for path, command in commands():
        for param in command.params:
            if isinstance(param, click.Option):
                out += [(path, opt) for opt in param.opts if opt.startswith("--")]
    return sorted(set(out))


def mentions(text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


@pytest.mark.parametrize("path", [p for p, _ in commands() if " " in p])
def test_every_command_has_a_section_in_cli_md(path: str) -> None:
    headings = [line for line in read(CLI_DOC).splitlines() if line.startswith("#")]
    assert any(f"`{path}`" in h for h in headings), f"docs/cli.md has no heading for `{path}`"


@pytest.mark.parametrize(("path", "option"), long_options())
def test_every_option_is_explained_in_cli_md(path: str, option: str) -> None:
    assert mentions(read(CLI_DOC), option), f"{path} {option} is not mentioned in docs/cli.md"


def test_the_option_check_notices_a_missing_option() -> None:
    assert mentions("use `--max-prune` here", "--max-prune")
    assert not mentions("use `--max-prune-all` here", "--max-prune")
    assert not mentions("use `--max-prune` here", "--max")


# -- shell commands shown in the docs ----------------------------------------------------

SHELL_BLOCKS = {"sh", "bash", "shell", "console"}
SEPARATORS = {"&&", "||", "|", ";", "(", ")", "&", ">", ">>", "<", "|&", ";;", "$("}
PREFIXES = {"sudo", "exec", "time", "then", "do", "!", "env", "$"}


@dataclass(frozen=True)
class Invocation:
    where: str  # file:line
    words: tuple[str, ...]  # the program name first


def code_blocks(text: str) -> Iterator[tuple[str, int, list[str]]]:
    """(info string, first line number, lines) of every fenced code block."""
    info, start, lines = None, 0, []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if info is None and stripped.startswith("```"):
            info, start, lines = stripped[3:].strip(), number + 1, []
        elif info is not None and stripped.startswith("```"):
            yield info, start, lines
            info = None
        elif info is not None:
            lines.append(line)


def shell_lines(path: Path) -> Iterator[tuple[str, str]]:
    """(file:line, command line): every line of a shell block; in other blocks (output,
    YAML), lines that start with ``$ `` or with a program name. Continuations are joined."""
    program_line = re.compile(rf"^(\$ )?({'|'.join(map(re.escape, PROGRAMS))})\s")
    for info, start, lines in code_blocks(read(path)):
        pending, first = "", start
        for offset, line in enumerate(lines):
            text = line.strip()
            if not pending and info not in SHELL_BLOCKS:
                match = program_line.match(text)
                if not match or text.split()[1 if match.group(1) is None else 2].endswith(":"):
                    continue  # prose, or "kaylee-sync --dev: a SIMULATED cluster" (output)
            if not pending:
                first = start + offset
            if text.endswith("\\"):
                pending += text[:-1] + " "
                continue
            yield f"{path.name}:{first}", (pending + text).removeprefix("$ ")
            pending = ""


def invocations(path: Path) -> Iterator[Invocation]:
    """Every ``kaylee-sync``/``kaylee`` command in command position in a shell line."""
    for where, line in shell_lines(path):
        lexer = shlex.shlex(line.removeprefix("$ "), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError:
            continue  # not shell (an unbalanced quote in an example of text)
        current: list[str] | None = None
        at_start = True
        for token in tokens:
            if token in SEPARATORS:
                if current:
                    yield Invocation(where, tuple(current))
                current, at_start = None, True
            elif current is not None:
                current.append(token)
            elif at_start and (token in PREFIXES or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", token)):
                continue
            elif at_start and Path(token).name in PROGRAMS:
                current = [Path(token).name]
            else:
                at_start = False
        if current:
            yield Invocation(where, tuple(current))


def option_table(command: click.Command) -> dict[str, click.Option]:
    table = {opt: p for p in command.params if isinstance(p, click.Option) for opt in p.opts}
    help_option = click.Option(["--help", "-h"], is_flag=True)  # click adds it itself
    for opt in help_option.opts:
        table.setdefault(opt, help_option)
    return table


def check_invocation(words: tuple[str, ...]) -> str | None:
    """Why ``words`` is not a valid command line, or None. Values are not checked."""
    command: click.Command = PROGRAMS[words[0]]
    name = words[0]
    positional = False
    skip = False
    for word in words[1:]:
        if skip:
            skip = False
            continue
        word = word.strip("[]").removesuffix("...")
        if word in ("", "…") or (word.isupper() and not word.startswith("-")):
            continue  # synopsis syntax: [OPTIONS], FILE, [PATH]...
        if word.startswith("-") and word != "-":
            option = option_table(command).get(word.split("=", 1)[0])
            if option is None:
                return f"{name} has no option {word.split('=', 1)[0]}"
            skip = "=" not in word and not option.is_flag and not option.count
        elif isinstance(command, click.Group) and not positional:
            sub = command.commands.get(word)
            if sub is None:
                if command.invoke_without_command:
                    positional = True  # the daemon takes no arguments, but "…" may stand here
                    continue
                return f"{name} has no command {word}"
            command, name = sub, f"{name} {word}"
        else:
            positional = True
    return None


def all_invocations() -> list[Invocation]:
    return [inv for path in documents() for inv in invocations(path)]


@pytest.mark.parametrize("invocation", all_invocations(), ids=lambda inv: inv.where)
def test_commands_in_the_docs_use_real_commands_and_options(invocation: Invocation) -> None:
    problem = check_invocation(invocation.words)
    assert problem is None, f"{invocation.where}: {' '.join(invocation.words)}: {problem}"


def test_the_command_check_finds_commands_and_refuses_unknown_options(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text(
        "```sh\nsudo FOO=1 kaylee-sync plan --repo . \\\n    --format json | jq .\n"
        "ssh-keygen -C kaylee-sync -f key\n```\n```\n$ kaylee --etcd-prefix /k ls --no-fleet\n"
        "kaylee-sync --dev: not a command line\n```\n",
        encoding="utf-8",
    )
    found = [inv.words for inv in invocations(doc)]
    assert found == [
        ("kaylee-sync", "plan", "--repo", ".", "--format", "json"),
        ("kaylee", "--etcd-prefix", "/k", "ls", "--no-fleet"),
    ]
    assert all(check_invocation(words) is None for words in found)
    assert check_invocation(("kaylee-sync", "plan", "--frmat", "json")) is not None
    assert check_invocation(("kaylee", "lst")) == "kaylee has no command lst"
    # an option of the group is not an option of the subcommand
    assert check_invocation(("kaylee-sync", "status", "--interval", "3")) is not None


# -- environment variables -----------------------------------------------------------------


def variables_read() -> set[str]:
    """Every variable the programs read for an option (each option names its own)."""
    names = set(EXTRA_VARIABLES)
    for group in PROGRAMS.values():
        for command in [group, *group.commands.values()]:
            for param in command.params:
                if isinstance(param, click.Option) and param.envvar:
                    explicit = param.envvar
                    names.update([explicit] if isinstance(explicit, str) else explicit)
    return names


def test_extra_variables_are_really_used_by_the_code() -> None:
    for name, source in EXTRA_VARIABLES.items():
        assert name in read(ROOT / source), f"{name} no longer appears in {source}"


def test_variables_read_include_the_systemd_examples() -> None:
    names = variables_read()
    assert {"KAYLEE_REPO", "KAYLEE_ETCD_ENDPOINTS", "KAYLEE_PLAN_NO_FETCH"} <= names
    assert {"KAYLEE_LEASE_TTL", "ETCDCTL_ENDPOINT", "KAYLEE_ETCD_PASSWORD"} <= names
    assert {"KAYLEE_PLAN_FORMAT", "KAYLEE_SUSPEND_FOR", "KAYLEE_FLEET_DRIVER"} <= names
    assert "KAYLEE_STATUS_INTERVAL" not in names


@pytest.mark.parametrize("path", documents(), ids=lambda p: p.name)
def test_every_variable_named_in_the_docs_is_read(path: Path) -> None:
    names = variables_read()
    named = set(re.findall(r"\bKAYLEE_[A-Z0-9_]*[A-Z0-9]\b", read(path)))
    unknown = sorted(n for n in named if n not in names)
    assert not unknown, f"{path.name} names variables no program reads: {unknown}"


# -- metrics ---------------------------------------------------------------------------------


def metric_families() -> list[str]:
    return sorted(family.name for family in Metrics(process_metrics=False).registry.collect())


@pytest.mark.parametrize("family", metric_families())
def test_every_metric_is_listed_in_operations_md(family: str) -> None:
    assert re.search(rf"`{family}(_total|_info)?`", read(OPERATIONS_DOC)), (
        f"metric {family} is not in the table of docs/operations.md"
    )


@pytest.mark.parametrize("path", documents(), ids=lambda p: p.name)
def test_every_metric_named_in_the_docs_exists(path: Path) -> None:
    families = metric_families()
    suffixes = ("_total", "_info", "_bucket", "_sum", "_count", "_created")
    unknown = []
    for name in set(re.findall(r"\bkaylee_sync_[a-z_]*[a-z]\b", read(path))):
        base = next((name.removesuffix(s) for s in suffixes if name.endswith(s)), name)
        if name not in families and base not in families:
            unknown.append(name)
    assert not unknown, f"{path.name} names metrics that do not exist: {sorted(unknown)}"


# -- links -----------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans."""
    kept, fenced = [], False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            kept.append(re.sub(r"(`+).*?\1", "", line))
    return "\n".join(kept)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(read(path).replace("`", "")).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(path: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(prose(read(path)))
        if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


def test_slugs_follow_github() -> None:
    assert slug("scheduler: `kaylee_sync/scheduler/`") == "scheduler-kaylee_syncscheduler"
    assert slug("`kaylee-sync plan`") == "kaylee-sync-plan"
    assert slug("Reviewed plans: `plan --out` and `apply`") == (
        "reviewed-plans-plan---out-and-apply"
    )
    assert slug("Upgrading from the Go Kaylee") == "upgrading-from-the-go-kaylee"


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    broken = []
    for target in links(path):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{path.relative_to(ROOT)} has broken links: {broken}"


def test_the_link_check_sees_links_but_not_code(tmp_path: Path) -> None:
    doc = tmp_path / "d.md"
    doc.write_text(
        "# Title\n\nSee [a](other.md#x), [web](https://example.com), `[no](code.md)`.\n"
        "```\n[no](block.md)\n```\n## Title\n",
        encoding="utf-8",
    )
    assert links(doc) == ["other.md#x"]
    assert anchors(doc) == {"title", "title-1"}
