"""The shipped systemd units are valid, hardened, and kaylee still runs inside them.

Three kinds of check, from cheap to faithful:

- ``systemd-analyze verify`` on copies whose ExecStart points at an existing binary
  (verify refuses a missing one). verify exits 0 even for an unknown directive or a bad
  value: it only warns. So the test fails on any warning that names our units.
- the directives the design asks for (Type=notify, watchdog, hardening, credentials)
  are present, and the environment file names only variables the CLIs read.
- the unit's own seccomp policy (SystemCallFilter=, SystemCallErrorNumber=,
  MemoryDenyWriteExecute=, RestrictAddressFamilies=) is rebuilt with libseccomp from the
  unit text, and kaylee, git and ssh are run under it against the test etcd. This is
  what shows that MemoryDenyWriteExecute=yes is safe for this CPython and grpcio.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import mmap
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from kaylee_sync.cli import kaylee as kaylee_cli
from kaylee_sync.cli import sync as sync_cli
from kaylee_sync.daemon.listener import MAX_CONNECTIONS
from tests.gitrepo import GitRepo, unit_yaml

ROOT = Path(__file__).resolve().parents[1]
# The units ship inside the package (kaylee-sync systemd-unit prints them): read them there.
SYSTEMD = Path(str(resources.files("kaylee_sync").joinpath("systemd")))
UNITS = ("kaylee-sync.service", "kaylee-server.service")
ENV_EXAMPLE = SYSTEMD / "kaylee-sync.env.example"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (Debian: apt install systemd)"
)

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Sections → key → values in order, as systemd reads them (comments, continuations)."""
    sections: Unit = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"directive outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def load(name: str) -> Unit:
    return parse_unit((SYSTEMD / name).read_text(encoding="utf-8"))


def service(name: str) -> dict[str, list[str]]:
    return load(name)["Service"]


# ------------------------------------------------------------------ systemd-analyze verify


def substitute_binary() -> str:
    """An executable that exists here: the installed kaylee-sync, else /bin/true."""
    script = Path(sys.executable).parent / "kaylee-sync"
    return str(script) if script.exists() else "/bin/true"


def verifiable_copy(name: str, directory: Path) -> Path:
    """``name`` with only its ExecStart binary replaced, so verify finds it."""
    original = (SYSTEMD / name).read_text(encoding="utf-8")
    copy = re.sub(r"(?m)^ExecStart=\S+", f"ExecStart={substitute_binary()}", original)
    changed = [
        (a, b) for a, b in zip(original.splitlines(), copy.splitlines(), strict=True) if a != b
    ]
    assert [a.split("=", 1)[0] for a, _ in changed] == ["ExecStart"], changed
    (old, new) = changed[0]
    assert old.split(None, 1)[1:] == new.split(None, 1)[1:], "arguments must stay as they are"
    target = directory / name
    target.write_text(copy, encoding="utf-8")
    return target


def verify_problems(paths: list[Path]) -> tuple[int, list[str]]:
    """verify's exit code, and every line it printed about these unit files."""
    assert SYSTEMD_ANALYZE is not None
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_COLORS": "0"},
    )
    output = (done.stdout + done.stderr).splitlines()
    names = [p.name for p in paths] + [str(p.parent) for p in paths]
    return done.returncode, [line for line in output if any(n in line for n in names)]


@needs_systemd_analyze
def test_units_pass_systemd_analyze_verify_without_a_warning(tmp_path: Path) -> None:
    copies = [verifiable_copy(name, tmp_path) for name in UNITS]
    code, problems = verify_problems(copies)
    assert problems == []
    assert code == 0


@needs_systemd_analyze
def test_the_verify_check_catches_unknown_directives_and_bad_values(tmp_path: Path) -> None:
    # verify only warns (exit 0) about these; the test above must see the warnings.
    copy = verifiable_copy("kaylee-sync.service", tmp_path)
    text = copy.read_text(encoding="utf-8")
    text = text.replace("WatchdogSec=30s", "WatchdogSec=soon\nWatchDogSec=30s")
    copy.write_text(text, encoding="utf-8")
    _, problems = verify_problems([copy])
    assert any("WatchDogSec" in p for p in problems), problems
    assert any("soon" in p for p in problems), problems


# ------------------------------------------------------------------ the directives


HARDENING = {
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "DynamicUser": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "ProtectProc": "invisible",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "SystemCallErrorNumber": "EPERM",
}


@pytest.mark.parametrize("name", UNITS)
def test_unit_is_hardened(name: str) -> None:
    svc = service(name)
    assert {key: svc.get(key, [None])[-1] for key in HARDENING} == HARDENING
    assert svc["SystemCallFilter"][0] == "@system-service"


@pytest.mark.parametrize("name", UNITS)
def test_unit_waits_for_the_network_and_restarts_on_failure(name: str) -> None:
    unit = load(name)
    assert "network-online.target" in unit["Unit"]["Wants"][0].split()
    assert {"network-online.target", "etcd-member.service"} <= set(unit["Unit"]["After"][0].split())
    assert unit["Service"]["Restart"] == ["on-failure"]
    assert unit["Service"]["RestartSec"] == ["5s"]
    # room for the HTTP listener's largest default bound (half the limit) and far more
    assert int(unit["Service"]["LimitNOFILE"][0]) >= 4 * MAX_CONNECTIONS
    assert unit["Service"]["EnvironmentFile"] == ["-/etc/kaylee-sync/kaylee-sync.env"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_kaylee_sync_notifies_readiness_and_has_a_watchdog() -> None:
    svc = service("kaylee-sync.service")
    assert svc["Type"] == ["notify"]
    assert svc["NotifyAccess"] == ["main"]
    assert svc["WatchdogSec"] == ["30s"]
    assert svc["StateDirectory"] == ["kaylee-sync"]
    assert svc["CacheDirectory"] == ["kaylee-sync"]
    assert svc["ExecStart"] == ["/usr/local/bin/kaylee-sync --cache-dir ${CACHE_DIRECTORY}"]


def test_kaylee_server_notifies_readiness_and_has_a_watchdog_like_kaylee_sync() -> None:
    unit = load("kaylee-server.service")
    assert unit["Service"]["Type"] == ["notify"]
    assert unit["Service"]["NotifyAccess"] == ["main"]
    assert unit["Service"]["WatchdogSec"] == service("kaylee-sync.service")["WatchdogSec"]
    assert unit["Service"]["ExecStart"] == ["/usr/local/bin/kaylee server"]
    assert unit["Unit"]["Conflicts"] == ["kaylee-sync.service"]


@pytest.mark.parametrize("name", UNITS)
def test_exec_start_runs_a_program_this_package_installs(name: str) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    binary = service(name)["ExecStart"][0].split()[0]
    assert binary.startswith("/usr/local/bin/")
    assert Path(binary).name in scripts


def credentials(name: str) -> dict[str, str]:
    return dict(v.split(":", 1) for v in service(name).get("LoadCredential", []))


@pytest.mark.parametrize("name", UNITS)
def test_credentials_come_from_the_credstore_so_a_missing_one_is_not_fatal(name: str) -> None:
    # An absolute source path that does not exist makes the unit fail to start; a
    # credential *name* is looked up in /etc/credstore/ & co. and skipped when absent.
    creds = credentials(name)
    assert creds
    for ident, source in creds.items():
        assert not source.startswith("/"), f"{ident}: {source}"
        assert source == f"kaylee-sync.{ident}"


def test_kaylee_sync_takes_every_git_secret_as_a_credential() -> None:
    assert {"ssh-key", "https-token", "webhook-secret", "etcd-key"} <= set(
        credentials("kaylee-sync.service")
    )


# ------------------------------------------------------------------ the environment file


def example_variables() -> dict[str, str]:
    """Every ``NAME=value`` line of the example, commented out or not."""
    found = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        m = re.fullmatch(r"#?([A-Z][A-Z0-9_]*)=(.*)", line)
        if m:
            found[m.group(1)] = m.group(2)
    return found


def test_env_example_sets_nothing_by_default_and_only_kaylee_variables() -> None:
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    active = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert active == []
    names = example_variables()
    assert len(names) >= 20
    assert all(name.startswith("KAYLEE_") for name in names)


def test_env_example_credential_paths_match_the_units_credentials() -> None:
    for name, value in example_variables().items():
        m = re.fullmatch(r"/run/credentials/([^/]+)/(.+)", value)
        if m:
            unit, ident = m.groups()
            assert ident in credentials(unit), f"{name}: {unit} has no credential {ident}"


def option_envvars(command: object) -> set[str]:
    """The variables click reads for ``command``'s options (docs/cli.md names them)."""
    assert isinstance(command, click.Command)
    names: set[str] = set()
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar:
            explicit = param.envvar
            names.update([explicit] if isinstance(explicit, str) else explicit)
    return names


def test_env_example_etcd_and_server_variables_are_read_by_kaylee() -> None:
    known = option_envvars(kaylee_cli.cli) | option_envvars(kaylee_cli.cli.commands["server"])
    server = option_envvars(kaylee_cli.cli.commands["server"])
    wanted = {n for n in example_variables() if n.startswith("KAYLEE_ETCD_") or n in server}
    assert {"KAYLEE_LEASE_TTL", "KAYLEE_FLEET_DRIVER", "KAYLEE_ETCD_ENDPOINTS"} <= wanted
    assert sorted(wanted - known) == []


def test_env_example_daemon_variables_are_read_by_kaylee_sync() -> None:
    sync_options = {p.name for p in sync_cli.cli.params}
    if "repo" not in sync_options:
        pytest.skip("kaylee-sync has no --repo yet (the daemon's options are being added)")
    known = option_envvars(sync_cli.cli)
    wanted = set(example_variables())
    assert sorted(wanted - known) == []


@pytest.mark.parametrize(
    ("env", "args", "flag"),
    [
        ({"KAYLEE_LEASE_TTL": "1"}, ["server"], "--lease-ttl"),
        ({"KAYLEE_ETCD_TIMEOUT": "0"}, ["ls"], "--etcd-timeout"),
    ],
)
def test_kaylee_reads_flags_from_the_variables_the_example_names(
    env: dict[str, str], args: list[str], flag: str
) -> None:
    # Out-of-range values, so the command stops at parsing, before it touches etcd.
    result = CliRunner().invoke(kaylee_cli.cli, args, env=env)
    assert result.exit_code == 1  # a configuration error, as docs/cli.md's table says
    assert flag in result.output


# ------------------------------------------------------------------ the seccomp policy, for real

_LIBSECCOMP = ctypes.util.find_library("seccomp")
needs_libseccomp = pytest.mark.skipif(
    _LIBSECCOMP is None or SYSTEMD_ANALYZE is None,
    reason="needs libseccomp and systemd-analyze (Debian: libseccomp2, systemd)",
)
# What systemd always allows in an allow-list filter (systemd.exec(5), SystemCallFilter=).
_IMPLICIT = {"execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn"}
_AF_MAX = 46  # Linux 6.x


def expand_syscalls(names: list[str]) -> set[str]:
    """System call names, with every ``@group`` expanded as this systemd defines it."""
    assert SYSTEMD_ANALYZE is not None
    result: set[str] = set()
    for name in names:
        if not name.startswith("@"):
            result.add(name)
            continue
        listing = subprocess.run(
            [SYSTEMD_ANALYZE, "syscall-filter", name],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        members = [
            line.strip()
            for line in listing.splitlines()[1:]
            if line.strip() and not line.strip().startswith("#")
        ]
        result |= expand_syscalls(members)
    return result


def unit_policy(name: str) -> dict[str, object]:
    """The seccomp-relevant settings of a unit, resolved to plain lists."""
    svc = service(name)
    allowed: set[str] = set()
    for entry in svc["SystemCallFilter"]:
        deny = entry.startswith("~")
        members = expand_syscalls(entry.lstrip("~").split())
        allowed = allowed - members if deny else allowed | members
    families = svc["RestrictAddressFamilies"][-1].split()
    return {
        "allowed": sorted(allowed | _IMPLICIT),
        "errno": getattr(errno, svc["SystemCallErrorNumber"][-1]),
        "mdwe": svc["MemoryDenyWriteExecute"][-1] == "yes",
        "families": [getattr(socket, f) for f in families],
    }


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def confine_and_exec() -> None:
    """Child side: ``python -c … POLICY PROGRAM ARGS…`` installs the policy and execs."""
    policy = json.loads(Path(sys.argv[1]).read_text())
    lib = ctypes.CDLL(_LIBSECCOMP, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p,
    ]  # fmt: skip
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    allow, masked_eq, eq = 0x7FFF0000, 7, 4

    def errno_action(code: int) -> int:
        return 0x00050000 | code

    def add(ctx: int, action: int, syscall: str, *conds: tuple[int, int, int, int]) -> None:
        nr = lib.seccomp_syscall_resolve_name(syscall.encode())
        if nr < 0:  # not a system call on this architecture
            return
        array = (_ArgCmp * len(conds))(*(_ArgCmp(*c) for c in conds)) if conds else None
        assert lib.seccomp_rule_add_array(ctx, action, nr, len(conds), array) == 0, syscall

    # Filter 1, default allow: MemoryDenyWriteExecute= and RestrictAddressFamilies=, as
    # systemd builds them. Loaded first, while seccomp() itself is still allowed.
    ctx = lib.seccomp_init(allow)
    if policy["mdwe"]:
        x, wx, shm_exec = mmap.PROT_EXEC, mmap.PROT_WRITE | mmap.PROT_EXEC, 0o100000
        refuse = errno_action(errno.EPERM)
        add(ctx, refuse, "mmap", (2, masked_eq, wx, wx))
        add(ctx, refuse, "mprotect", (2, masked_eq, x, x))
        add(ctx, refuse, "pkey_mprotect", (2, masked_eq, x, x))
        add(ctx, refuse, "shmat", (2, masked_eq, shm_exec, shm_exec))
    for family in range(_AF_MAX):
        if family not in policy["families"]:
            add(ctx, errno_action(errno.EAFNOSUPPORT), "socket", (0, eq, family, 0))
    assert lib.seccomp_load(ctx) == 0
    # Filter 2: SystemCallFilter= as an allow list, everything else fails with errno.
    ctx = lib.seccomp_init(errno_action(policy["errno"]))
    for call in policy["allowed"]:
        add(ctx, allow, call)
    assert lib.seccomp_load(ctx) == 0
    os.execv(sys.argv[2], sys.argv[2:])


def confined(policy: Path, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    launcher = "from tests.test_systemd_units import confine_and_exec; confine_and_exec()"
    return subprocess.run(
        [sys.executable, "-c", launcher, str(policy), *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def sync_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seccomp") / "kaylee-sync.json"
    path.write_text(json.dumps(unit_policy("kaylee-sync.service")))
    return path


def installed(script: str) -> str:
    path = Path(sys.executable).parent / script
    return str(path) if path.exists() else script


@needs_libseccomp
def test_the_emulated_policy_is_really_in_force(sync_policy: Path) -> None:
    probe = (
        "import mmap, socket\n"
        "try:\n mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC); print('wx')\n"
        "except OSError as e: print('no-wx', e.errno)\n"
        "try:\n socket.socket(socket.AF_PACKET, socket.SOCK_RAW); print('packet')\n"
        "except OSError as e: print('no-packet', e.errno)\n"
        "import os\n"
        "try:\n os.setgroups([]); print('setgroups')\n"
        "except OSError as e: print('no-setgroups', e.errno)\n"
    )
    done = confined(sync_policy, sys.executable, "-c", probe)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "no-wx", str(errno.EPERM),
        "no-packet", str(errno.EAFNOSUPPORT),
        "no-setgroups", str(errno.EPERM),
    ]  # fmt: skip


@pytest.mark.slow  # several confined processes, each a fresh interpreter
@needs_libseccomp
def test_kaylee_talks_to_etcd_under_the_units_seccomp_policy(
    sync_policy: Path, etcd_endpoint: str, etcd_prefix: str
) -> None:
    sample = str(ROOT / "sample-repo" / "countly.yaml")
    render = confined(sync_policy, installed("kaylee-sync"), "render", sample)
    assert render.returncode == 0, render.stderr
    assert "k2:countly:160702:" in render.stdout
    base = [installed("kaylee"), "--etcd-endpoints", etcd_endpoint, "--etcd-prefix", etcd_prefix]
    run = confined(sync_policy, *base, "run", sample)
    assert run.returncode == 0, run.stderr
    ls = confined(sync_policy, *base, "ls", "--no-fleet", "--format", "json")
    assert ls.returncode == 0, ls.stderr
    assert [u["name"] for u in json.loads(ls.stdout)["units"]] == ["countly"]


@pytest.mark.slow  # several confined processes, each a fresh interpreter
@needs_libseccomp
def test_git_and_ssh_work_under_the_units_seccomp_policy(sync_policy: Path, tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "units")
    repo.write("units/web.yaml", unit_yaml("web"))
    sha = repo.commit("add web")
    git, ssh_keygen, ssh = (shutil.which(p) for p in ("git", "ssh-keygen", "ssh"))
    assert git is not None
    clone = confined(sync_policy, git, "clone", "-q", f"file://{repo.path}", str(tmp_path / "c"))
    assert clone.returncode == 0, clone.stderr
    assert (tmp_path / "c" / "units" / "web.yaml").exists()
    head = subprocess.run(
        [git, "-C", str(tmp_path / "c"), "rev-parse", "HEAD"], capture_output=True
    )
    assert head.stdout.decode().strip() == sha
    if ssh_keygen is None or ssh is None:
        pytest.skip("OpenSSH client is not installed")
    key = tmp_path / "deploy-key"
    made = confined(sync_policy, ssh_keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    assert made.returncode == 0, made.stderr
    config = confined(sync_policy, ssh, "-G", "-i", str(key), "git.example.com")
    assert config.returncode == 0, config.stderr
    assert f"identityfile {key}" in config.stdout
