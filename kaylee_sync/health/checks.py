"""Health checks as data: what to check for one instance, and how results add up.

The I/O (HTTP requests, etcd reads) is the prober's (``kaylee_sync.probe``); what a
result *means* lives here, pure, so the rules are tested without a server and every
reader — the prober, the scheduler's rollout gate, ``kaylee ls`` — shares one meaning:

- an instance is **healthy** once fleet reports it running *and* each of its checks
  passes; it stays healthy until a check has failed ``failures`` times in a row (the
  presence key: once, a read that does not find it);
- ``healthy_since`` is when the last of those became true, so ``minHealthyTime`` counts
  from the moment everything was fine, and a flapping instance starts over.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kaylee_sync.spec.policy import HealthPolicy, expand


@dataclass(frozen=True)
class Target:
    """The checks of one instance (a fleet unit), their templates expanded."""

    instance: str  # the fleet unit name
    unit: str  # the Kaylee unit it belongs to
    url: str = ""  # "" when there is no HTTP check
    etcd_key: str = ""  # "" when there is no presence key
    keyspace: str = "v2"
    interval: float = 10.0
    timeout: float = 2.0
    failures: int = 3


def target_for(
    instance: str, unit: str, health: HealthPolicy, variables: Mapping[str, str]
) -> Target | None:
    """The instance's checks under ``health``; None when it has none (or no machine yet).

    ``variables`` are the template variables (policy.BUILTIN_VARIABLES and the spec's env).
    An HTTP check needs ``MACHINE_IP``: an instance not placed on a machine (or on one
    without a public IP) is not checked until it is.
    """
    if not health.checked:
        return None
    url = ""
    if health.http is not None:
        if not variables.get("MACHINE_IP"):
            return None
        url = expand(health.http.url, variables)
    http = health.http
    return Target(
        instance=instance,
        unit=unit,
        url=url,
        etcd_key=expand(health.etcd_key, variables) if health.etcd_key else "",
        keyspace=health.etcd_keyspace,
        interval=health.interval,
        timeout=http.timeout if http is not None else min(2.0, health.interval),
        failures=http.failures if http is not None else 1,
    )


@dataclass
class CheckState:
    """One check of one instance over time (mutable; owned by the prober's loop)."""

    failures: int = 3  # the threshold: this many failures in a row make it unhealthy
    healthy_since: float | None = None
    failed_in_row: int = 0
    last_error: str = ""
    checked: int = 0  # results recorded

    def record(self, passed: bool, now: float, error: str = "") -> None:
        self.checked += 1
        if passed:
            self.failed_in_row = 0
            self.last_error = ""
            if self.healthy_since is None:
                self.healthy_since = now
            return
        self.failed_in_row += 1
        self.last_error = error
        if self.failed_in_row >= self.failures:
            self.healthy_since = None


@dataclass(frozen=True)
class Health:
    """What the checks say of one instance right now (a copy, safe to share)."""

    healthy_since: float | None  # None: not healthy (not yet, or no longer)
    reason: str = ""  # why not, for people ("" when healthy)
    known: bool = True  # False until every check has run once: not healthy, not failing

    @property
    def healthy(self) -> bool:
        return self.healthy_since is not None


UNCHECKED = Health(None, "not checked yet", known=False)


def combine(states: Mapping[str, CheckState]) -> Health:
    """One verdict from an instance's checks (``"http"``, ``"etcdKey"``): all must pass."""
    since = 0.0
    for kind, state in sorted(states.items()):
        if state.healthy_since is None:
            if not state.checked:
                return Health(None, f"{kind} check not run yet", known=False)
            return Health(None, f"{kind} check failing: {state.last_error or 'failed'}")
        since = max(since, state.healthy_since)
    return Health(since) if states else UNCHECKED


def healthy_since(running_since: float | None, health: Health | None) -> float | None:
    """When the instance became healthy: running in fleet and (if checked) passing."""
    if running_since is None:
        return None
    if health is None:  # the unit has no checks: running is healthy
        return running_since
    if health.healthy_since is None:
        return None
    return max(running_since, health.healthy_since)


def common_directory(keys: list[str]) -> str:
    """The deepest directory ("/a/b/") holding every key: one read serves them all."""
    if not keys:
        return "/"
    first, last = min(keys), max(keys)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[: first.rfind("/", 0, n + 1) + 1] if n else "/"
