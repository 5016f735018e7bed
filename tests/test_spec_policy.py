"""The ``rollout:`` and ``health:`` sections: parsed, validated like every field, kept out
of the spec (same JSON, same hash), stored in a form that reads back the same."""

from __future__ import annotations

import json

import pytest

from kaylee_sync.errors import SpecError
from kaylee_sync.spec import (
    DEFAULT_POLICY,
    HealthPolicy,
    HttpCheck,
    RolloutPolicy,
    UnitPolicy,
    load_unit,
    load_unit_and_policy,
    parse_stored,
    parse_stored_policy,
    policy_to_json,
    spec_hash,
    to_json,
)
from kaylee_sync.spec.policy import expand, format_duration, parse_duration
from tests.test_spec_schema import check

BASE = """\
name: web
replicas: 4
env:
- name: PORT
  value: "8080"
apps:
- image: docker://nginx:1.25
"""

POLICY = """\
rollout:
  maxParallel: 2
  minHealthyTime: 5s
  healthyDeadline: 1m
  progressDeadline: 10m
  canary: 1
  autoPromote: true
  autoRevert: false
health:
  etcdKey: /services/web/${KAYLEE_ID}
  etcdKeyspace: v3
  http:
    url: http://${MACHINE_IP}:${PORT}/health
    interval: 2s
    timeout: 500ms
    failures: 2
"""


def issues(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_unit_and_policy(text.encode(), "web.yaml")
    return [str(i) for i in info.value.issues]


def test_a_unit_file_yields_its_policy() -> None:
    spec, policy = load_unit_and_policy((BASE + POLICY).encode(), "web.yaml")
    assert spec.replicas == 4
    assert policy == UnitPolicy(
        RolloutPolicy(
            max_parallel=2,
            min_healthy_time=5.0,
            healthy_deadline=60.0,
            progress_deadline=600.0,
            canary=1,
            auto_promote=True,
            auto_revert=False,
        ),
        HealthPolicy(
            etcd_key="/services/web/${KAYLEE_ID}",
            etcd_keyspace="v3",
            http=HttpCheck("http://${MACHINE_IP}:${PORT}/health", 2.0, 0.5, 2),
        ),
    )


def test_the_policy_changes_neither_the_stored_json_nor_the_hash() -> None:
    plain = load_unit(BASE.encode(), "web.yaml")
    with_policy, policy = load_unit_and_policy((BASE + POLICY).encode(), "web.yaml")
    assert with_policy == plain
    assert to_json(with_policy) == to_json(plain)
    assert "rollout" not in to_json(with_policy) and "health" not in to_json(with_policy)
    assert spec_hash(with_policy) == spec_hash(plain)
    assert not policy.is_default


def test_a_unit_without_the_sections_has_the_default_policy() -> None:
    _, policy = load_unit_and_policy(BASE.encode(), "web.yaml")
    assert policy is DEFAULT_POLICY and policy.is_default
    assert policy_to_json(policy) == "{}"
    assert policy.rollout == RolloutPolicy(1, None, None, None, 0, False, True)
    assert not policy.health.checked


def test_the_stored_form_reads_back_the_same() -> None:
    _, policy = load_unit_and_policy((BASE + POLICY).encode(), "web.yaml")
    stored = policy_to_json(policy)
    assert json.loads(stored)["rollout"]["healthyDeadline"] == "60s"
    assert parse_stored_policy(stored, "policy/web") == policy
    assert parse_stored_policy(stored.encode(), "policy/web") == policy


def test_the_stored_spec_never_holds_a_policy() -> None:
    stored = json.dumps({"name": "web", "apps": [{"image": "x"}], "rollout": {"canary": 1}})
    with pytest.raises(SpecError, match="units/web: rollout: unknown field 'rollout'"):
        parse_stored(stored, "units/web", "web")


def test_each_bad_value_names_line_field_and_reason() -> None:
    text = BASE + (
        "rollout:\n"
        "  maxParalel: 2\n"  # 9
        "  canary: 5\n"  # 10
        "  minHealthyTime: 5x\n"  # 11
        "  progressDeadline: 10\n"  # 12
        "health:\n"
        "  etcdKey: /services/web\n"  # 14
        "  etcdKeyspace: v4\n"  # 15
        "  http:\n"
        "    url: ftp://${FOO}/x\n"  # 17
        "    timeout: 20s\n"  # 18
        "    failures: 0\n"  # 19
    )
    assert issues(text) == [
        "web.yaml:9: rollout.maxParalel: unknown field 'maxParalel'; did you mean 'maxParallel'?",
        "web.yaml:10: rollout.canary: must not exceed replicas (4), got 5",
        "web.yaml:11: rollout.minHealthyTime: expected a duration such as '30s', '5m' or "
        "'1m30s', got '5x'",
        "web.yaml:12: rollout.progressDeadline: expected a duration such as '30s' or '5m', "
        "got a number (quote the value)",
        "web.yaml:14: health.etcdKey: must contain ${KAYLEE_ID}: each instance writes a key "
        "of its own",
        "web.yaml:15: health.etcdKeyspace: must be 'v2' or 'v3', got 'v4'",
        "web.yaml:17: health.http.url: must be an http:// or https:// URL with a host and no "
        "whitespace, e.g. http://${MACHINE_IP}:8080/health",
        "web.yaml:17: health.http.url: unknown variable ${FOO}; known: ${KAYLEE_ID}, "
        "${KAYLEE_INDEX}, ${KAYLEE_UNIT}, ${MACHINE_ID}, ${MACHINE_IP}, ${PORT}",
        "web.yaml:18: health.http.timeout: must not exceed the interval (10s): checks would "
        "pile up",
        "web.yaml:19: health.http.failures: must be between 1 and 100, got 0",
    ]


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("rollout:\n", "rollout: expected a mapping, got nothing"),
        ("health: {}\n", "health: names no check; give 'etcdKey', 'http' or both"),
        ("rollout: {autoPromote: true}\n", "rollout.autoPromote: only applies with 'canary'"),
        ("rollout: {maxParallel: 0}\n", "rollout.maxParallel: must be between 1 and 1000"),
        ("rollout: {healthyDeadline: 0s}\n", "rollout.healthyDeadline: must be longer than 0s"),
        ("rollout: {healthyDeadline: 200h}\n", "rollout.healthyDeadline: must be at most 168h"),
        (
            "rollout: {minHealthyTime: 1m, healthyDeadline: 30s}\n",
            "rollout.healthyDeadline: must be longer than minHealthyTime (1m)",
        ),
        (
            "rollout: {healthyDeadline: 5m, progressDeadline: 1m}\n",
            "rollout.progressDeadline: must not be shorter than healthyDeadline (5m)",
        ),
        ("health: {etcdKeyspace: v3}\n", "health.etcdKeyspace: only applies with 'etcdKey'"),
        ("health: {http: {interval: 1s}}\n", "health.http.url: 'url' is required"),
        (
            "health: {http: {url: 'http://h/$x'}}\n",
            "health.http.url: a '$' must start a variable written as ${NAME}",
        ),
        ("rollout: {canary: yes}\n", "rollout.canary: expected an integer, got a boolean"),
    ],
)
def test_policy_rules(section: str, expected: str) -> None:
    assert any(expected in line for line in issues(BASE + section)), issues(BASE + section)


def test_a_policy_needs_a_replica_unit() -> None:
    text = "name: one\napps: [{image: x}]\nrollout: {canary: 1}\n"
    text += "health: {etcdKey: '/s/${KAYLEE_ID}'}\n"
    reason = (
        "applies to replica units only (set 'replicas'; not with 'global'): "
        "other units are replaced whole"
    )
    assert issues(text) == [f"web.yaml:3: rollout: {reason}", f"web.yaml:4: health: {reason}"]
    glob = "name: g\nglobal: true\napps: [{image: x}]\nrollout: {maxParallel: 2}\n"
    assert issues(glob) == [f"web.yaml:4: rollout: {reason}"]


def test_a_stored_policy_is_checked_by_the_same_rules() -> None:
    with pytest.raises(SpecError) as info:
        parse_stored_policy('{"rollout":{"canary":-1,"x":1}}', "policy/web")
    assert [str(i) for i in info.value.issues] == [
        "policy/web: rollout.canary: must be 0 or more, got -1",
        "policy/web: rollout.x: unknown field 'x'",
    ]
    with pytest.raises(SpecError, match="policy/web:1: invalid JSON"):
        parse_stored_policy("{", "policy/web")


def test_durations() -> None:
    assert parse_duration("1m30s") == 90.0
    assert parse_duration("250ms") == 0.25
    assert parse_duration("2h") == 7200.0
    assert parse_duration("1.5s") == 1.5
    for bad in ("", "5", "s", "1m 30s", "-1s", "1d"):
        assert parse_duration(bad) is None
    assert format_duration(90.0) == "90s"
    assert format_duration(0.25) == "250ms"


def test_templates_expand_known_variables_only() -> None:
    values = {"KAYLEE_ID": "k2_web_abc", "MACHINE_IP": "10.0.0.1"}
    assert expand("http://${MACHINE_IP}/h/${KAYLEE_ID}", values) == "http://10.0.0.1/h/k2_web_abc"
    assert expand("/x/${OTHER}", values) == "/x/${OTHER}"


def test_the_schema_accepts_the_policy_and_refuses_what_the_loader_refuses() -> None:
    unit = {"name": "a", "apps": [{"image": "x"}], "replicas": 2}
    good = {**unit, "rollout": {"canary": 1, "minHealthyTime": "30s"}}
    good["health"] = {"http": {"url": "http://${MACHINE_IP}/h", "interval": "5s"}}
    assert check(good) == []
    assert check({**unit, "rollout": {"canary": "1"}}) == [("$.rollout.canary", "type")]
    assert check({**unit, "rollout": {"minHealthyTime": "5"}}) == [
        ("$.rollout.minHealthyTime", "pattern")
    ]
    assert check({**unit, "health": {"http": {}}}) == [("$.health.http", "required")]
    assert check({**unit, "rollout": {"maxParalel": 1}}) == [("$.rollout", "additionalProperties")]
