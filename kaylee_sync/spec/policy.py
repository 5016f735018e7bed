"""A unit's rollout policy and health checks: the ``rollout:`` and ``health:`` sections.

They sit in the same unit file as the spec but are deliberately *not* part of it
(design.md, "Rollout policy and health are not the spec"): the Go-compatible JSON under
``units/<name>`` and the spec hash cover only the original's fields, so adding a policy to
a unit that the Go Kaylee started adopts its fleet units, and changing only the policy
restarts nothing. The policy is stored beside the spec, under its own key, in the same
form as in the unit file (camelCase names, durations as text): one parser and one set of
rules serve both.

A unit without either section has the default policy, which means exactly what the
scheduler did before policies existed: one replica at a time, stable for the server's
``--stable`` seconds, no health check beyond fleet's ``active/running``, given the
server's ``--rollout-timeout``, the old instances kept when it fails.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: the longest duration any policy field accepts (a week): longer is a typing mistake
MAX_DURATION = 7 * 24 * 3600.0
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
#: variables a check template may use besides the unit's own ``env`` names
BUILTIN_VARIABLES = ("KAYLEE_ID", "KAYLEE_UNIT", "KAYLEE_INDEX", "MACHINE_ID", "MACHINE_IP")
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
KEYSPACES = ("v2", "v3")


def parse_duration(text: str) -> float | None:
    """Seconds in ``"30s"``, ``"5m"``, ``"1m30s"``, ``"250ms"``, ``"2h"``; None if not one."""
    if not text:
        return None
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    return total if pos == len(text) else None


def format_duration(seconds: float) -> str:
    """The canonical text of a duration: ``"90s"`` stays ``"90s"``, ``0.25`` is ``"250ms"``."""
    if seconds != int(seconds):
        return f"{round(seconds * 1000)}ms"
    return f"{int(seconds)}s"


@dataclass(frozen=True)
class HttpCheck:
    """GET ``url`` (a template) every ``interval`` seconds; 2xx within ``timeout`` passes.

    An instance counts as healthy from its first passing check until ``failures`` checks
    in a row fail (Nomad's and Kubernetes' threshold: one lost packet is not an outage).
    """

    url: str
    interval: float = 10.0
    timeout: float = 2.0
    failures: int = 3


@dataclass(frozen=True)
class HealthPolicy:
    """What an instance must pass, besides fleet's ``active/running``, to count as healthy."""

    etcd_key: str = ""  # a presence key template, e.g. /services/web/${KAYLEE_ID}
    etcd_keyspace: str = "v2"  # where the key lives: v2 (the original's sidekick) or v3
    http: HttpCheck | None = None

    @property
    def checked(self) -> bool:
        """True when there is any check to run (else fleet's state alone decides)."""
        return bool(self.etcd_key) or self.http is not None

    @property
    def interval(self) -> float:
        """How often checks run: the HTTP interval, else 10 s for the presence key."""
        return self.http.interval if self.http is not None else 10.0


@dataclass(frozen=True)
class RolloutPolicy:
    """How a new spec replaces the old one (Nomad's ``update`` block, in Kaylee's words).

    ``None`` durations take the server's defaults: ``min_healthy_time`` its ``--stable``,
    ``healthy_deadline`` its ``--rollout-timeout``; no ``progress_deadline`` means the
    whole rollout has no deadline beyond each instance's own.
    """

    max_parallel: int = 1
    min_healthy_time: float | None = None
    healthy_deadline: float | None = None
    progress_deadline: float | None = None
    canary: int = 0
    auto_promote: bool = False
    auto_revert: bool = True


@dataclass(frozen=True)
class UnitPolicy:
    rollout: RolloutPolicy = field(default_factory=RolloutPolicy)
    health: HealthPolicy = field(default_factory=HealthPolicy)

    @property
    def is_default(self) -> bool:
        """True for a unit without ``rollout:`` and ``health:`` (nothing is stored)."""
        return self == DEFAULT_POLICY


DEFAULT_POLICY = UnitPolicy()


def _seconds(doc: Mapping[str, Any], name: str) -> float | None:
    text = doc.get(name)
    return parse_duration(text) if isinstance(text, str) else None


def policy_from_dict(data: Mapping[str, Any]) -> UnitPolicy:
    """The policy of checked data (``{"rollout": {…}, "health": {…}}``, either optional)."""
    r = data.get("rollout") or {}
    h = data.get("health") or {}
    defaults = RolloutPolicy()
    rollout = RolloutPolicy(
        max_parallel=r.get("maxParallel") or defaults.max_parallel,
        min_healthy_time=_seconds(r, "minHealthyTime"),
        healthy_deadline=_seconds(r, "healthyDeadline"),
        progress_deadline=_seconds(r, "progressDeadline"),
        canary=r.get("canary", 0),
        auto_promote=r.get("autoPromote", False),
        auto_revert=r.get("autoRevert", True),
    )
    http = None
    if h.get("http"):
        raw = h["http"]
        http = HttpCheck(
            url=raw.get("url", ""),
            interval=_seconds(raw, "interval") or HttpCheck.interval,
            timeout=_seconds(raw, "timeout") or HttpCheck.timeout,
            failures=raw.get("failures") or HttpCheck.failures,
        )
    health = HealthPolicy(
        etcd_key=h.get("etcdKey", ""), etcd_keyspace=h.get("etcdKeyspace") or "v2", http=http
    )
    return UnitPolicy(rollout, health)


def policy_to_dict(policy: UnitPolicy) -> dict[str, Any]:
    """The policy as unit-file data: only what differs from the defaults is written."""
    out: dict[str, Any] = {}
    r, d = policy.rollout, RolloutPolicy()
    rollout: dict[str, Any] = {}
    if r.max_parallel != d.max_parallel:
        rollout["maxParallel"] = r.max_parallel
    for name, value in (
        ("minHealthyTime", r.min_healthy_time),
        ("healthyDeadline", r.healthy_deadline),
        ("progressDeadline", r.progress_deadline),
    ):
        if value is not None:
            rollout[name] = format_duration(value)
    if r.canary:
        rollout["canary"] = r.canary
    if r.auto_promote:
        rollout["autoPromote"] = True
    if not r.auto_revert:
        rollout["autoRevert"] = False
    if rollout:
        out["rollout"] = rollout
    h = policy.health
    health: dict[str, Any] = {}
    if h.etcd_key:
        health["etcdKey"] = h.etcd_key
        if h.etcd_keyspace != "v2":
            health["etcdKeyspace"] = h.etcd_keyspace
    if h.http is not None:
        health["http"] = {
            "url": h.http.url,
            "interval": format_duration(h.http.interval),
            "timeout": format_duration(h.http.timeout),
            "failures": h.http.failures,
        }
    if health:
        out["health"] = health
    return out


def policy_to_json(policy: UnitPolicy) -> str:
    """The stored form (``policy/<name>``): compact JSON, keys sorted, defaults left out."""
    return json.dumps(policy_to_dict(policy), sort_keys=True, separators=(",", ":"))


def template_variables(template: str) -> list[str]:
    """The ``${NAME}`` variables a check template uses, in order of appearance."""
    return VARIABLE.findall(template)


def expand(template: str, variables: Mapping[str, str]) -> str:
    """``template`` with each ``${NAME}`` replaced (unknown names stay as written)."""
    return VARIABLE.sub(lambda m: variables.get(m.group(1), m.group(0)), template)
