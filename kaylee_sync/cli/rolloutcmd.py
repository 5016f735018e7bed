"""``kaylee rollout status|promote|pause|resume NAME``: a health-gated rollout, by hand.

The scheduler owns the rollout record (``scheduler/rollouts/<name>``); operators never
write it. They write their requests to ``rollout/<name>`` — pause, and which spec hash's
canaries are promoted — which the leader reads on its next pass (a watch wakes it). A
promotion names the hash it promotes, so promoting one commit's canaries can never
promote the next commit's.
"""

from __future__ import annotations

from typing import Any

import click

from kaylee_sync.cli.common import echo_json, format_option
from kaylee_sync.errors import NotFoundError, SpecError, StoreError, UsageError
from kaylee_sync.health import Phase, RolloutReport, decode_report
from kaylee_sync.scheduler.gated import Control
from kaylee_sync.scheduler.health_gate import decode_control, encode_control
from kaylee_sync.settings import EtcdSettings
from kaylee_sync.spec import parse_stored, parse_stored_policy, spec_hash6
from kaylee_sync.spec.policy import UnitPolicy, policy_to_dict
from kaylee_sync.store import Compare, Op, Store, keys


def troubled_rollouts(store: Store) -> dict[str, RolloutReport]:
    """Units whose last rollout failed, is being reverted or was reverted (for status)."""
    out: dict[str, RolloutReport] = {}
    for stored in store.get_prefix(keys.ROLLOUTS):
        try:
            report = decode_report(stored.value, stored.key)
        except StoreError:
            continue  # kaylee ls names a malformed record; status stays about sync
        if report.phase in (Phase.FAILED, Phase.REVERTING, Phase.REVERTED):
            out[stored.key.removeprefix(keys.ROLLOUTS)] = report
    return out


@click.group()
def rollout() -> None:
    """Watch and steer a health-gated rollout (a unit with rollout: or health:).

    \b
    Examples:
      kaylee rollout status web
      kaylee rollout promote web     promote the canaries of web's current spec
      kaylee rollout pause web       start and retire nothing until resumed
      kaylee rollout resume web
    """


def _state(ctx: click.Context, name: str) -> tuple[Store, dict[str, Any]]:
    settings: EtcdSettings = ctx.find_root().obj
    store = Store(settings)
    try:
        stored = store.get_unit(name)
        if stored is None:
            raise NotFoundError(f"no unit named {name!r} (see 'kaylee ls')")
        spec = parse_stored(stored.value, stored.key, name)
        generation = store.restart_generation(name)
        report: RolloutReport | None = None
        raw = store.get(keys.rollout_key(name))
        if raw is not None:
            report = decode_report(raw.value, raw.key)
        policy_raw = store.get(keys.policy_key(name))
        policy = (
            None if policy_raw is None else parse_stored_policy(policy_raw.value, policy_raw.key)
        )
        control_raw = store.get(keys.control_key(name))
        control = Control()
        if control_raw is not None:
            try:
                control = decode_control(control_raw.value, control_raw.key)
            except (ValueError, UnicodeDecodeError) as exc:
                raise StoreError(f"{control_raw.key}: not a rollout request ({exc})") from None
    except (SpecError, StoreError):
        store.close()
        raise
    return store, {
        "name": name,
        "hash6": spec_hash6(spec, generation),
        "report": report,
        "policy": policy,
        "control": control,
    }


@rollout.command()
@click.argument("name")
@format_option("text", "json")
@click.pass_context
def status(ctx: click.Context, name: str, fmt: str) -> None:
    """How the rollout of unit NAME stands: phase, health, canaries, revert.

    \b
    Examples:
      kaylee rollout status web
      kaylee rollout status web --format json | jq .phase
    """
    store, state = _state(ctx, name)
    store.close()
    report: RolloutReport | None = state["report"]
    control: Control = state["control"]
    policy: UnitPolicy | None = state["policy"]
    doc: dict[str, Any] = {
        "name": name,
        "spec_hash": state["hash6"],
        "phase": report.phase.value if report else "unknown",
        "desired": report.desired if report else 0,
        "running": report.running if report else 0,
        "healthy": report.healthy if report else 0,
        "message": report.message if report else "the scheduler has not reported yet",
        "failed_hash": report.failed_hash if report else "",
        "promoted": bool(report and report.promoted) or control.promote == state["hash6"],
        "paused": control.paused,
        "policy": policy_to_dict(policy) if policy is not None else {},
        "error": report.error if report else "",
    }
    if fmt == "json":
        echo_json(doc)
        return
    click.echo(f"{name}@{doc['spec_hash']}: {doc['phase']}")
    if report is not None:
        click.echo(f"  {doc['healthy']}/{doc['desired']} healthy, {doc['running']} running (fleet)")
    if doc["message"]:
        click.echo(f"  {doc['message']}")
    if doc["failed_hash"]:
        click.echo(
            f"  {doc['failed_hash']} is pinned as failed: not retried until the spec "
            f"changes or 'kaylee restart {name}'"
        )
    if doc["paused"]:
        click.echo(f"  paused by an operator ('kaylee rollout resume {name}' goes on)")
    if doc["error"]:
        click.echo(f"  last fleet error: {doc['error']}")
    if policy is None:
        click.echo("  no rollout policy: rolled one instance at a time, as without one")


def _request(ctx: click.Context, name: str, change: str) -> None:
    store, state = _state(ctx, name)
    with store:
        control: Control = state["control"]
        if change == "promote":
            policy: UnitPolicy | None = state["policy"]
            if policy is None or not policy.rollout.canary:
                raise UsageError(f"{name} has no canaries to promote (its policy sets no canary)")
            control = Control(paused=control.paused, promote=state["hash6"])
        else:
            control = Control(paused=change == "pause", promote=control.promote)
        key = keys.control_key(name)
        current = store.get(key)
        guard = (
            Compare.missing(key)
            if current is None
            else Compare.mod_revision_equals(key, current.mod_revision)
        )
        if not store.txn([guard], [Op.put(key, encode_control(control))]):
            raise StoreError(f"{key} changed while it was written; run the command again")
    report: RolloutReport | None = state["report"]
    if change == "promote":
        waiting = report is not None and report.phase is Phase.CANARY
        note = (
            ""
            if waiting
            else f" (the rollout is {report.phase.value if report else 'not reported yet'})"
        )
        click.echo(f"canaries of {name}@{state['hash6']} promoted{note}")
    else:
        click.echo(f"rollout of {name} {'paused' if change == 'pause' else 'resumed'}")


def _request_command(change: str, summary: str) -> click.Command:
    """``kaylee rollout <change> NAME``: one operator request, written to rollout/<name>."""

    @click.pass_context
    def command(ctx: click.Context, name: str) -> None:
        _request(ctx, name, change)

    command.__doc__ = f"{summary}\n\n\b\nExample:\n  kaylee rollout {change} web\n"
    return click.argument("name")(click.command(name=change)(command))


for _change, _summary in (
    ("promote", "Promote the canaries of unit NAME's current spec: the rollout goes on."),
    ("pause", "Pause the rollout of unit NAME: no instance starts or retires until resumed."),
    ("resume", "Resume a paused rollout of unit NAME."),
):
    rollout.add_command(_request_command(_change, _summary))
