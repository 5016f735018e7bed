"""The rules of the ``rollout:`` and ``health:`` sections, beyond keys and types.

``check_shape`` has already checked keys and types against ``schema.POLICY_FIELDS``; here
the values are checked the way every spec field is (spec/validate.py): each problem is
an issue naming the field and saying what is wrong, all of them collected. The rules that
involve the spec (canaries need replicas; check templates may name the unit's ``env``
variables) apply when the spec is known — in a unit file; a stored policy is checked on
its own, and the scheduler clamps whatever a hand-written entry gets wrong.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from kaylee_sync.spec import schema
from kaylee_sync.spec.model import UnitSpec
from kaylee_sync.spec.policy import (
    BUILTIN_VARIABLES,
    MAX_DURATION,
    HttpCheck,
    format_duration,
    parse_duration,
    template_variables,
)

_HOST = re.compile(r"^https?://[^/?#@\s]+(?:[/?#].*)?$")
_DURATION_HINT = "expected a duration such as '30s', '5m' or '1m30s'"


def policy_issues(
    clean: Mapping[str, Any], spec: UnitSpec | None, skip: Collection[str] = frozenset()
) -> list[tuple[str, str]]:
    """(field path, reason) for every rule the policy sections in ``clean`` break."""
    rules = _PolicyRules(skip)
    if spec is not None and (not spec.is_replica_unit or spec.global_):
        # A non-replica unit is replaced whole (stop, then start) and a global one runs
        # once per machine: neither has old instances to keep serving, so there is
        # nothing to gate, canary or revert to. Said here, not silently ignored.
        for section in ("rollout", "health"):
            if section in clean and section not in skip:
                rules.add(
                    section,
                    "applies to replica units only (set 'replicas'; not with 'global'): "
                    "other units are replaced whole",
                )
        return rules.found
    rollout = clean.get("rollout")
    if isinstance(rollout, Mapping) and "rollout" not in skip:
        rules.rollout(rollout, spec)
    health = clean.get("health")
    if isinstance(health, Mapping) and "health" not in skip:
        rules.health(health, spec)
    return rules.found


class _PolicyRules:
    def __init__(self, skip: Collection[str]) -> None:
        self.skip = skip
        self.found: list[tuple[str, str]] = []

    def add(self, path: str, reason: str) -> None:
        if path not in self.skip:
            self.found.append((path, reason))

    def duration(self, doc: Mapping[str, Any], key: str, path: str, *, zero: bool) -> float | None:
        text = doc.get(key)
        where = f"{path}.{key}"
        if not isinstance(text, str) or where in self.skip:
            return None
        seconds = parse_duration(text)
        if seconds is None:
            self.add(where, f"{_DURATION_HINT}, got '{text[:40]}'")
        elif seconds > MAX_DURATION:
            self.add(where, f"must be at most {MAX_DURATION / 3600:.0f}h, got '{text}'")
        elif seconds <= 0 and not zero:
            self.add(where, "must be longer than 0s")
        else:
            return seconds
        return None

    def rollout(self, r: Mapping[str, Any], spec: UnitSpec | None) -> None:
        parallel = r.get("maxParallel")
        if isinstance(parallel, int) and not 1 <= parallel <= schema.MAX_REPLICAS:
            self.add(
                "rollout.maxParallel",
                f"must be between 1 and {schema.MAX_REPLICAS}, got {parallel}",
            )
        min_healthy = self.duration(r, "minHealthyTime", "rollout", zero=True)
        healthy = self.duration(r, "healthyDeadline", "rollout", zero=False)
        progress = self.duration(r, "progressDeadline", "rollout", zero=False)
        if healthy is not None and min_healthy is not None and healthy <= min_healthy:
            self.add(
                "rollout.healthyDeadline",
                f"must be longer than minHealthyTime ({r['minHealthyTime']}): an instance "
                "could never be healthy for long enough in time",
            )
        if progress is not None and healthy is not None and progress < healthy:
            self.add(
                "rollout.progressDeadline",
                f"must not be shorter than healthyDeadline ({r['healthyDeadline']})",
            )
        canary = r.get("canary", 0)
        if isinstance(canary, int) and canary < 0:
            self.add("rollout.canary", f"must be 0 or more, got {canary}")
        elif isinstance(canary, int) and spec is not None and canary > spec.replicas:
            self.add("rollout.canary", f"must not exceed replicas ({spec.replicas}), got {canary}")
        if r.get("autoPromote") is True and not canary:
            self.add(
                "rollout.autoPromote", "only applies with 'canary' (there is nothing to promote)"
            )

    def health(self, h: Mapping[str, Any], spec: UnitSpec | None) -> None:
        # Without the spec (a stored policy) the env names are unknown: any variable goes.
        known = None if spec is None else {*BUILTIN_VARIABLES, *(e.name for e in spec.env)}
        if (
            not h.get("etcdKey")
            and not h.get("http")
            and not {"health.etcdKey", "health.http"} & set(self.skip)
        ):
            self.add("health", "names no check; give 'etcdKey', 'http' or both")
        key = h.get("etcdKey")
        if isinstance(key, str) and key:
            if not re.fullmatch(schema.ETCD_KEY, key):
                self.add("health.etcdKey", "must be an absolute etcd key ('/…') without whitespace")
            elif "KAYLEE_ID" not in template_variables(key):
                self.add(
                    "health.etcdKey",
                    "must contain ${KAYLEE_ID}: each instance writes a key of its own",
                )
            self.variables("health.etcdKey", key, known)
        elif "etcdKeyspace" in h:
            self.add("health.etcdKeyspace", "only applies with 'etcdKey'")
        space = h.get("etcdKeyspace")
        if isinstance(space, str) and space not in ("v2", "v3"):
            self.add("health.etcdKeyspace", f"must be 'v2' or 'v3', got '{space[:20]}'")
        http = h.get("http")
        if isinstance(http, Mapping) and "health.http" not in self.skip:
            self.http(http, known)

    def http(self, c: Mapping[str, Any], known: set[str] | None) -> None:
        url = c.get("url")
        if isinstance(url, str) and "health.http.url" not in self.skip:
            if not _HOST.fullmatch(url) or not re.fullmatch(schema.URL, url):
                self.add(
                    "health.http.url",
                    "must be an http:// or https:// URL with a host and no whitespace, "
                    "e.g. http://${MACHINE_IP}:8080/health",
                )
            self.variables("health.http.url", url, known)
        interval = self.duration(c, "interval", "health.http", zero=False)
        timeout = self.duration(c, "timeout", "health.http", zero=False)
        if "interval" not in c:
            interval = HttpCheck.interval
        if interval is not None and timeout is not None and timeout > interval:
            self.add(
                "health.http.timeout",
                f"must not exceed the interval ({format_duration(interval)}): checks would pile up",
            )
        failures = c.get("failures")
        if isinstance(failures, int) and not 1 <= failures <= 100:
            self.add("health.http.failures", f"must be between 1 and 100, got {failures}")

    def variables(self, path: str, template: str, known: set[str] | None) -> None:
        for name in template_variables(template):
            if known is not None and name not in known:
                self.add(
                    path,
                    f"unknown variable ${{{name}}}; known: "
                    + ", ".join(f"${{{k}}}" for k in sorted(known)),
                )
                return
        if "$" in re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", "", template):
            self.add(path, "a '$' must start a variable written as ${NAME}")
