"""Every option of both programs reads the variable docs/cli.md names for it.

The expected names come from docs/cli.md itself: the table of shared options (a fixed
name, then etcdctl's or fleetctl's variable) and the rule for every other option
(``KAYLEE_<OPTION>`` on a program, ``KAYLEE_<COMMAND>_<OPTION>`` on a subcommand). Each
variable is then set alone and the option must take its value from it, as it would from
the flag — so a renamed option, a new one or a ``dest`` that differs from the flag
cannot drift away from the page.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.core import ParameterSource
from click.testing import CliRunner

from kaylee_sync import __version__
from kaylee_sync.cli.common import etcd_settings_from
from kaylee_sync.cli.kaylee import cli as kaylee_cli
from kaylee_sync.cli.sync import cli as sync_cli
from kaylee_sync.fleetsim import FleetApiServer

CLI_DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
PROGRAMS: dict[str, click.Group] = {"kaylee-sync": sync_cli, "kaylee": kaylee_cli}
ECOSYSTEM = ("ETCDCTL_", "FLEETCTL_")
#: values that a string option's own checks accept (anything else gets "env-sample")
SAMPLES = {
    "--etcd-endpoints": "http://10.9.8.7:2379",
    "--fleet-endpoints": "http://10.9.8.7:2379",
    "--fleet-endpoint": "http://10.9.8.7:49153",
    "--listen": "127.0.0.1:9999",
    "--etcd-prefix": "/env-sample",
    "--fleet-prefix": "/env-sample/",
    "--for": "2h",
}


def documented_shared() -> dict[str, list[str]]:
    """docs/cli.md's table of shared options: flag → its variables, in precedence order."""
    text = CLI_DOC.read_text(encoding="utf-8")
    table = text.split("| shared option | variables |", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `(--[a-z-]+)` \| (.+) \|$", table, flags=re.MULTILINE)
    return {flag: re.findall(r"`([A-Z0-9_]+)`", names) for flag, names in rows}


def documented_variables(command: str | None, option: click.Option) -> list[str]:
    """What docs/cli.md says ``option`` of ``command`` (None: the program itself) reads."""
    flag = max(option.opts, key=len)
    shared = documented_shared()
    if flag in shared:
        return shared[flag]
    parts = ["KAYLEE", *([command] if command else []), flag[2:]]
    return ["_".join(p.replace("-", "_").upper() for p in parts)]


def options() -> Iterator[tuple[str, str | None, click.Option]]:
    for program, group in PROGRAMS.items():
        commands: list[tuple[str | None, click.Command]] = [(None, group)]
        commands += list(group.commands.items())
        for command, cmd in commands:
            for param in cmd.params:
                if isinstance(param, click.Option) and param.expose_value:
                    yield program, command, param


CASES = [
    pytest.param(program, command, option, variable, id=f"{program} {command or ''} {variable}")
    for program, command, option in options()
    for variable in documented_variables(command, option)
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No KAYLEE_*, ETCDCTL_* or FLEETCTL_* from the machine running the tests."""
    import os

    for name in list(os.environ):
        if name.startswith(("KAYLEE_", *ECOSYSTEM)):
            monkeypatch.delenv(name)


def parse(program: str, command: str | None, args: list[str], testing: str = "") -> click.Context:
    """Parse like the program would, without running anything: the command's context."""
    group = PROGRAMS[program]
    if command is None:
        # kaylee needs a subcommand to parse at all; its group options are what we check
        return group.make_context(program, [*args, *([] if program == "kaylee-sync" else ["ls"])])
    parent = group.make_context(program, [command])
    cmd = group.commands[command]
    extra: list[str] = []
    for param in cmd.params:  # what the command requires, unless it is what we test
        if isinstance(param, click.Argument) and param.required:
            is_dir = isinstance(param.type, click.Path) and not param.type.file_okay
            extra.append(str(Path(__file__).parent) if is_dir else __file__)
        elif (
            isinstance(param, click.Option)
            and param.required
            and param.opts[-1] not in (*args, testing)
        ):
            extra += [param.opts[-1], "r"]
    return cmd.make_context(command, [*args, *extra], parent=parent)


def sample(option: click.Option) -> tuple[str, list[str]]:
    """A value for the variable, and the command line that means the same."""
    flag = max(option.opts, key=len)
    if option.is_flag:
        return "true", [flag]
    if isinstance(option.type, click.Choice):
        choices = [str(c) for c in option.type.choices]
        value = next(c for c in reversed(choices) if c != option.default)
    elif isinstance(option.type, click.types.IntParamType | click.types.FloatParamType):
        value = "7"
    elif isinstance(option.type, click.Path):
        value = "/tmp/env-sample"
    else:
        value = SAMPLES.get(flag, "env-sample")
    return value, [flag, value]


@pytest.mark.parametrize(("program", "command", "option", "variable"), CASES)
def test_every_option_reads_the_variable_docs_cli_md_names(
    monkeypatch: pytest.MonkeyPatch,
    program: str,
    command: str | None,
    option: click.Option,
    variable: str,
) -> None:
    value, flag_args = sample(option)
    from_flag = parse(program, command, flag_args).params[option.name or ""]
    monkeypatch.setenv(variable, value)
    ctx = parse(program, command, [], testing=option.opts[-1])
    assert ctx.get_parameter_source(option.name or "") is ParameterSource.ENVIRONMENT, (
        f"{program} {command or ''} {option.opts[-1]} ignores {variable}"
    )
    assert ctx.params[option.name or ""] == from_flag


def test_the_walk_covers_both_programs_and_every_shared_option() -> None:
    seen = {max(o.opts, key=len) for _, _, o in options()}
    assert set(documented_shared()) <= seen  # the table names no option that is gone
    assert {"--format", "--for", "--fleet-driver", "--verbose", "--interval"} <= seen
    assert len(CASES) > 150


@pytest.mark.parametrize(
    ("flag", "earlier", "later"),
    [
        ("--etcd-endpoints", "KAYLEE_ETCD_ENDPOINTS", "ETCDCTL_ENDPOINTS"),
        ("--etcd-endpoints", "ETCDCTL_ENDPOINTS", "ETCDCTL_ENDPOINT"),
        ("--etcd-ca-file", "KAYLEE_ETCD_CA_FILE", "ETCDCTL_CACERT"),
        ("--etcd-username", "KAYLEE_ETCD_USERNAME", "ETCDCTL_USER"),
        ("--etcd-password", "KAYLEE_ETCD_PASSWORD", "ETCDCTL_PASSWORD"),
        ("--fleet-endpoint", "KAYLEE_FLEET_ENDPOINT", "FLEETCTL_ENDPOINT"),
        ("--fleet-prefix", "KAYLEE_FLEET_PREFIX", "FLEETCTL_ETCD_KEY_PREFIX"),
    ],
)
def test_flag_beats_kaylee_variable_beats_ecosystem_variable(
    monkeypatch: pytest.MonkeyPatch, flag: str, earlier: str, later: str
) -> None:
    program, command = ("kaylee", "ls") if flag.startswith("--fleet") else ("kaylee-sync", "status")
    name = flag[2:].replace("-", "_")
    monkeypatch.setenv(later, "http://later:1")
    assert parse(program, command, []).params[name] == "http://later:1"
    monkeypatch.setenv(earlier, "http://earlier:1")
    assert parse(program, command, []).params[name] == "http://earlier:1"
    assert parse(program, command, [flag, "http://flag:1"]).params[name] == "http://flag:1"


def test_fleetctl_driver_is_read_in_fleetctls_spelling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETCTL_DRIVER", "API")
    assert parse("kaylee", "ls", []).params["fleet_driver"] == "api"
    monkeypatch.setenv("KAYLEE_FLEET_DRIVER", "etcd")
    assert parse("kaylee", "ls", []).params["fleet_driver"] == "etcd"


def etcd_settings(monkeypatch: pytest.MonkeyPatch, **env: str):  # type: ignore[no-untyped-def]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return etcd_settings_from(parse("kaylee-sync", "status", []).params)


def test_etcdctl_user_may_carry_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = etcd_settings(monkeypatch, ETCDCTL_USER="root:s3cret:with-colon")
    assert (settings.username, settings.password) == ("root", "s3cret:with-colon")
    assert "s3cret" not in repr(settings)
    # a password given on its own wins over the one after the colon
    settings = etcd_settings(monkeypatch, ETCDCTL_PASSWORD="other")
    assert (settings.username, settings.password) == ("root", "other")


def test_scheme_less_endpoints_are_http_or_https_with_tls_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = etcd_settings(monkeypatch, ETCDCTL_ENDPOINTS="10.0.0.1:2379, 10.0.0.2:2379")
    assert settings.endpoints == ("http://10.0.0.1:2379", "http://10.0.0.2:2379")
    settings = etcd_settings(monkeypatch, ETCDCTL_CACERT=str(tmp_path / "ca.pem"))
    assert settings.endpoints == ("https://10.0.0.1:2379", "https://10.0.0.2:2379")


def test_the_go_kaylees_etcdctl_endpoint_still_works(
    monkeypatch: pytest.MonkeyPatch, etcd_endpoint: str, etcd_prefix: str
) -> None:
    monkeypatch.setenv("ETCDCTL_ENDPOINT", etcd_endpoint.removeprefix("http://"))
    monkeypatch.setenv("KAYLEE_ETCD_PREFIX", etcd_prefix)
    result = CliRunner().invoke(kaylee_cli, ["ls", "--no-fleet"])
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("ETCDCTL_ENDPOINT", "127.0.0.1:1")  # nothing listens there
    monkeypatch.setenv("KAYLEE_ETCD_TIMEOUT", "0.5")
    failed = CliRunner().invoke(kaylee_cli, ["ls", "--no-fleet"])
    assert failed.exit_code == 1 and "127.0.0.1:1" in failed.output


def test_fleetctl_variables_choose_the_api_driver_and_its_socket(
    monkeypatch: pytest.MonkeyPatch, etcd_endpoint: str, etcd_prefix: str, tmp_path: Path
) -> None:
    sock = Path("/tmp") / f"kaylee-env-{tmp_path.name[-12:]}.sock"  # short, for AF_UNIX
    monkeypatch.setenv("KAYLEE_ETCD_ENDPOINTS", etcd_endpoint)
    monkeypatch.setenv("KAYLEE_ETCD_PREFIX", etcd_prefix)
    monkeypatch.setenv("FLEETCTL_DRIVER", "API")
    monkeypatch.setenv("FLEETCTL_ENDPOINT", f"unix://{sock}")
    missing = CliRunner().invoke(kaylee_cli, ["ls"])
    assert missing.exit_code == 0 and str(sock) in missing.output  # the warning names it
    with FleetApiServer(etcd_endpoint, etcd_prefix + "/fleet/", f"unix://{sock}"):
        reached = CliRunner().invoke(kaylee_cli, ["ls"])
    assert reached.exit_code == 0 and str(sock) not in reached.output, reached.output


# -- -v and -V mean the same in both programs ---------------------------------------------


def test_dash_v_is_verbose_and_dash_capital_v_the_version_in_both_programs() -> None:
    for program, command, option in options():
        if "-v" in option.opts:
            assert option.name == "verbose", f"{program} {command}: -v is {option.opts}"
    seen = {(p, c) for p, c, o in options() if "-v" in o.opts}
    assert seen == {("kaylee-sync", None), ("kaylee", "server")}
    for group in PROGRAMS.values():
        result = CliRunner().invoke(group, ["-V"])
        assert result.exit_code == 0 and __version__ in result.output
