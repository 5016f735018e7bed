"""Generated data the GitOps benchmarks share: realistic unit files, a Git repository of
thousands of them, and small helpers around etcd and the ``kaylee-sync`` program.

The unit files look like a real team's: a mix of replicated web services, workers,
global agents and single databases, with comments, environment variables, volumes,
machine metadata and app arguments, several files per team directory
(``units/<team>/<name>.yaml``). Their size and shape is what the parse cache, the plan
and the inventory are measured on, so they must not be toy files.

The repository is built with one ``git add -A`` and one commit: 10,000 commits would take
minutes and measure git rather than us. Benchmarks then add single-file commits
(:meth:`UnitRepo.change`) where they need history.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from kaylee_sync.settings import EtcdSettings
from kaylee_sync.store import Store
from tests import polling
from tests.gitrepo import GIT_ENV as TEST_GIT_ENV

T = TypeVar("T")
UNIT_DIR = "units"
PER_DIR = 8  # unit files per team directory
_KINDS = ("web", "api", "worker", "cache", "agent", "db", "cron", "proxy")

# Git with the test kit's fixed identity and none of the developer's configuration (hooks,
# signing, fsmonitor): the benchmark measures kaylee-sync, not someone's ~/.gitconfig.
GIT_ENV = {**os.environ, **TEST_GIT_ENV}


def unit_name(i: int) -> str:
    return f"{_KINDS[i % len(_KINDS)]}-{i:05d}"


def unit_relpath(i: int) -> str:
    """``units/<team>/<name>.yaml``: ``PER_DIR`` files per team directory."""
    return f"{UNIT_DIR}/team-{i // PER_DIR:04d}/{unit_name(i)}.yaml"


def unit_yaml(i: int, version: int = 1, replicas: int | None = None) -> str:
    """A realistic unit file; ``version`` changes the image tag (a typical deploy).
    ``replicas`` replaces the replicated kinds' 2–6 replicas (None: keep them)."""
    name, kind = unit_name(i), _KINDS[i % len(_KINDS)]
    team = f"team-{i // PER_DIR:04d}"
    image = f"docker://registry.example.com/{team}/{name}:2024.{version}.{i % 7}"
    head = [f"# {kind} service of {team}; owned by {team}@example.com.", f"name: {name}"]
    env = [
        "env:",
        "- name: APP_ENV",
        "  value: production",
        "- name: LOG_FORMAT",
        "  value: json",
        f"- name: SERVICE_NAME\n  value: {name}",
        f"- name: UPSTREAM_URL\n  value: http://{unit_name(i + 1)}.service.lan:8080/v1",
    ]
    if kind == "agent":  # a global unit: one per machine, host volumes, no replicas
        body = [
            "global: true",
            "net: host",
            "volumes:",
            "- source: /var/log/journal",
            "  path: /var/log/journal",
            "- source: /etc/machine-id",
            "  path: /etc/machine-id",
        ]
    elif kind == "db":  # a single unit pinned to db hosts, kept off its standby's host
        body = [
            "machine:",
            "- role=db",
            "- ssd=true",
            "conflicts:",
            f"- {name}-standby",
            "net: flannel",
            "envFiles:",
            f"- /etc/kaylee/{name}.env",
            "volumes:",
            f"- id: vol-{i:017x}",
            "  driver: systemd-mountservice-ebs",
            "  source: pgdata",
            "  path: /var/lib/postgresql/data",
        ]
    else:  # replicated, stateless
        body = [
            f"replicas: {2 + i % 5 if replicas is None else replicas}",
            f"maxReplicasPerHost: {2 if replicas is None else min(2, replicas)}",
            "machine:",
            f"- role={'web' if kind in ('web', 'api', 'proxy') else 'worker'}",
            "net: flannel",
            "args:",
            "- --dns=10.0.0.2",
        ]
    apps = [
        "apps:",
        f"- image: {image}",
        "  args:",
        "  - --listen :8080",
        "  - --metrics-listen :9100",
        f"  - --name {name}",
    ]
    if i % 3 == 0:  # a sidekick, as the original README's countly example has
        apps += [
            "- image: docker://registry.example.com/tools/rkt-sidekick:v0.0.3",
            "  args:",
            "  - --cidr 10.5.0.0/16",
            f"  - /services/{name}/${{KAYLEE_ID}}",
        ]
    return "\n".join(head + body + env + apps) + "\n"


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


class UnitRepo:
    """A working repository (branch ``main``) holding ``count`` generated unit files."""

    def __init__(self, path: Path, count: int, replicas: int | None = None) -> None:
        self.path, self.count, self.replicas = path, count, replicas
        self.versions = [1] * count
        path.mkdir(parents=True)
        git(path, "init", "-q", "-b", "main")
        for i in range(count):
            target = path / unit_relpath(i)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(unit_yaml(i, replicas=replicas))
        (path / "README.md").write_text("Generated by kaylee-sync's benchmarks.\n")
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", f"{count} units")

    def change(self, i: int) -> str:
        """Commit a new image tag for unit ``i`` (one file); the new commit id."""
        self.versions[i] += 1
        (self.path / unit_relpath(i)).write_text(unit_yaml(i, self.versions[i], self.replicas))
        git(self.path, "commit", "-q", "-a", "-m", f"deploy {unit_name(i)}")
        return git(self.path, "rev-parse", "HEAD")

    def image(self, i: int) -> str:
        """The image the unit's current version names (what its etcd value must hold)."""
        text = unit_yaml(i, self.versions[i], self.replicas)
        return text.split("- image: ", 1)[1].split("\n", 1)[0]


@contextlib.contextmanager
def store_at(endpoint: str, prefix: str = "/kaylee2", timeout: float = 30.0) -> Iterator[Store]:
    """A Store on ``endpoint`` under ``prefix`` (generous timeout: 10k-key ranges)."""
    with Store(EtcdSettings(endpoints=(endpoint,), prefix=prefix, timeout=timeout)) as store:
        yield store


def wait_for(what: str, predicate: Callable[[], T | None], timeout: float, step: float = 0.01) -> T:
    """Poll ``predicate`` until it returns something truthy (the test kit's polling); stop
    the benchmark with one line if it does not."""
    try:
        return polling.wait_for(predicate, timeout, what, step)
    except AssertionError as exc:
        raise SystemExit(f"benchmark failed: {exc}") from None


def console_script(name: str) -> str:
    """The installed ``kaylee-sync``/``kaylee`` beside this interpreter (else from PATH)."""
    script = Path(sys.executable).parent / name
    return str(script) if script.exists() else name


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as systemd stops a service; SIGKILL if it has not exited after 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def percentile(samples: list[float], pct: int) -> float:
    """The ``pct``-th percentile (inclusive method: within the samples' range)."""
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[pct - 1]
