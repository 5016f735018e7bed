"""``kaylee rollout status|promote|pause|resume`` and ``kaylee run`` with a policy,
through CliRunner against a real etcd."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result

from kaylee_sync.cli.kaylee import cli
from kaylee_sync.cli.sync import cli as sync_cli
from kaylee_sync.health import Phase, RolloutReport, encode_report
from kaylee_sync.plan.compute import make_plan
from kaylee_sync.plan.model import DesiredState, DesiredUnit
from kaylee_sync.scheduler.health_gate import decode_control
from kaylee_sync.spec import App, UnitSpec, parse_stored_policy, spec_hash6, to_json
from kaylee_sync.store import Store, keys
from kaylee_sync.sync.actual import read_actual

UNIT = """\
name: web
replicas: 4
apps:
- image: docker://web:2
rollout:
  canary: 1
  minHealthyTime: 5s
health:
  http:
    url: http://${MACHINE_IP}:8080/health
"""


def kaylee(etcd_args: list[str], *args: str) -> Result:
    return CliRunner().invoke(cli, [*etcd_args, *args], catch_exceptions=False)


def test_run_writes_the_policy_beside_the_unchanged_spec(
    etcd_args: list[str], store: Store, tmp_path: Path
) -> None:
    path = tmp_path / "web.yaml"
    path.write_text(UNIT)
    result = kaylee(etcd_args, "run", str(path))
    assert result.exit_code == 0, result.output
    spec = UnitSpec("web", (App("docker://web:2"),), replicas=4)
    unit, policy = store.get_unit("web"), store.get(keys.policy_key("web"))
    assert unit is not None and unit.value == to_json(spec).encode()
    assert policy is not None and unit.mod_revision == policy.mod_revision  # one transaction
    assert parse_stored_policy(policy.value, "p").rollout.canary == 1
    path.write_text(UNIT.split("rollout:")[0])  # the sections removed: the policy goes
    assert kaylee(etcd_args, "run", str(path)).exit_code == 0
    assert store.get(keys.policy_key("web")) is None
    assert store.get_unit("web").value == to_json(spec).encode()  # type: ignore[union-attr]


def test_status_promote_pause_resume(etcd_args: list[str], store: Store, tmp_path: Path) -> None:
    path = tmp_path / "web.yaml"
    path.write_text(UNIT)
    assert kaylee(etcd_args, "run", str(path)).exit_code == 0
    spec = UnitSpec("web", (App("docker://web:2"),), replicas=4)
    h = spec_hash6(spec)
    report = RolloutReport(
        Phase.CANARY, hash6=h, desired=4, running=5, healthy=1, message="1/1 canaries healthy"
    )
    store.put(keys.rollout_key("web"), encode_report(report))

    text = kaylee(etcd_args, "rollout", "status", "web")
    assert text.exit_code == 0
    assert text.output.splitlines()[:3] == [
        f"web@{h}: canary",
        "  1/4 healthy, 5 running (fleet)",
        "  1/1 canaries healthy",
    ]
    doc = json.loads(kaylee(etcd_args, "rollout", "status", "web", "--format", "json").output)
    assert doc["phase"] == "canary" and doc["policy"]["rollout"]["canary"] == 1
    assert doc["promoted"] is False and doc["paused"] is False

    promoted = kaylee(etcd_args, "rollout", "promote", "web")
    assert promoted.output == f"canaries of web@{h} promoted\n"
    stored = store.get(keys.control_key("web"))
    assert stored is not None and decode_control(stored.value, "c").promote == h
    assert kaylee(etcd_args, "rollout", "pause", "web").output == "rollout of web paused\n"
    control = decode_control(store.get(keys.control_key("web")).value, "c")  # type: ignore[union-attr]
    assert control.paused and control.promote == h  # a pause keeps the promotion
    paused = json.loads(kaylee(etcd_args, "rollout", "status", "web", "--format", "json").output)
    assert paused["paused"] and paused["promoted"]
    assert kaylee(etcd_args, "rollout", "resume", "web").exit_code == 0
    assert not decode_control(store.get(keys.control_key("web")).value, "c").paused  # type: ignore[union-attr]


def test_errors_are_one_line(etcd_args: list[str], store: Store, tmp_path: Path) -> None:
    missing = CliRunner().invoke(cli, [*etcd_args, "rollout", "status", "nope"])
    assert missing.exit_code == 1 and "no unit named 'nope'" in missing.output
    assert "Traceback" not in missing.output
    store.put_unit("plain", to_json(UnitSpec("plain", (App("x"),), replicas=2)))
    refused = CliRunner().invoke(cli, [*etcd_args, "rollout", "promote", "plain"])
    assert refused.exit_code == 1
    assert "plain has no canaries to promote" in refused.output
    plain = kaylee(etcd_args, "rollout", "status", "plain")
    assert "no rollout policy" in plain.output and "plain@" in plain.output


def test_status_and_plan_say_a_rollout_was_reverted(
    etcd_args: list[str], store: Store, tmp_path: Path
) -> None:
    spec = UnitSpec("web", (App("docker://web:bad"),), replicas=4)
    store.put_unit("web", to_json(spec))
    h = spec_hash6(spec)
    message = f"last rollout of web@{h} failed health and was reverted to aa50f8"
    report = RolloutReport(Phase.REVERTED, hash6=h, desired=4, failed_hash=h, message=message)
    store.put(keys.rollout_key("web"), encode_report(report))
    out = CliRunner().invoke(sync_cli, ["status", *etcd_args], catch_exceptions=False).output
    assert f"reverted:      web: {message}" in out
    doc = json.loads(
        CliRunner().invoke(sync_cli, ["status", *etcd_args, "--format", "json"]).output
    )
    assert doc["rollouts"]["web"]["phase"] == "reverted"
    # kaylee ls says it too, in the unit's progress
    listed = kaylee(etcd_args, "ls", "--no-fleet").output
    assert "reverted" in listed
    # and a plan that changes the unit says the change retries it
    fixed = UnitSpec("web", (App("docker://web:3"),), replicas=4)
    desired = DesiredState(
        "repo", "main", "", "c" * 40,
        {"web": DesiredUnit("web", "web.yaml", "b", fixed, to_json(fixed))},
    )  # fmt: skip
    plan = make_plan(desired, read_actual(store), now=0.0)
    (entry,) = plan.entries
    assert entry.reason.endswith(
        f"last rollout of web@{h} failed health and was reverted; this change retries it"
    )
