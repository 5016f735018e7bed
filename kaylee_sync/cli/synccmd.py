"""``kaylee-sync sync [--wait]``: ask the leader to sync now, from any node.

The request goes through etcd (``sync/request``, see :mod:`kaylee_sync.daemon.requests`),
so it reaches the leader wherever it runs. With ``--wait`` the command stays until the
leader has acknowledged the request, a sync that started after that has finished, and
every unit that sync created or changed has rolled out (followed as ``kaylee run
--wait`` follows one): a deploy step for a pipeline that merges and then wants to know.
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
import time
from typing import Any

import click

from kaylee_sync.cli.common import etcd_options, etcd_settings_from
from kaylee_sync.cli.fleetopts import fleet_client, fleet_options
from kaylee_sync.cli.follow import FollowSettings, Target, display_for, follow
from kaylee_sync.cli.opscmd import who_am_i
from kaylee_sync.cli.watching import INTERRUPTED_EXIT
from kaylee_sync.errors import KayleeError
from kaylee_sync.plan.compute import short_commit
from kaylee_sync.spec import parse_stored
from kaylee_sync.store import Store, keys
from kaylee_sync.sync.status import AttemptRecord, read_status

LOOK_EVERY = 0.2  # seconds between looks at the acknowledgement and at sync/status


class SyncFailed(KayleeError):
    """The requested sync failed, was not picked up, or a rollout it caused failed (exit 1)."""


@click.command(name="sync")
@click.option("--wait", is_flag=True, help="Wait for the sync and the rollouts it causes.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=FollowSettings.timeout,
    show_default=True,
    help="Seconds --wait waits for each step: pick-up and sync, then each rollout.",
)
@etcd_options
@fleet_options
def sync(wait: bool, timeout: float, **params: Any) -> None:
    """Ask the leading daemon to sync the repository now (through etcd, from any node).

    \b
    Examples:
      kaylee-sync sync
      kaylee-sync sync --wait        # exit 0 once every changed unit runs its new version
    """
    etcd = etcd_settings_from(params)
    with Store(etcd) as store:
        before = {u.key: u.value for u in store.list_units()}
        request_id = secrets.token_hex(8)
        request = {"id": request_id, "who": who_am_i(), "requested": time.time()}
        store.put(keys.SYNC_REQUEST, json.dumps(request, sort_keys=True))
        if not wait:
            click.echo(
                f"sync requested ({request_id}); the leader picks it up at once "
                "('kaylee-sync status --watch' shows the result)"
            )
            return
        try:
            seen_at = _acknowledged(store, request_id, timeout)
            attempt = _synced_after(store, seen_at, timeout)
            click.echo(_summary(attempt))
            changed = [u for u in store.list_units() if before.get(u.key) != u.value]
            _follow_all(store, etcd, params, changed, timeout)
        except KeyboardInterrupt:
            click.echo("stopped waiting; the sync and its rollouts go on", err=True)
            raise click.exceptions.Exit(INTERRUPTED_EXIT) from None


def _acknowledged(store: Store, request_id: str, timeout: float) -> float:
    """The leader's time of acknowledging our request; SyncFailed if no leader does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stored = store.get(keys.SYNC_REQUEST)
        if stored is not None:
            value = json.loads(stored.value)
            if value.get("id") != request_id:
                raise SyncFailed("another sync request replaced ours; run 'kaylee-sync sync' again")
            if "seen_at" in value:
                return float(value["seen_at"])
        threading.Event().wait(LOOK_EVERY)
    leader = store.leader()
    why = f"the leader {leader} did not pick it up" if leader else "no kaylee-sync daemon leads"
    raise SyncFailed(f"sync requested, but {why} within {timeout:.0f} s")


def _synced_after(store: Store, seen_at: float, timeout: float) -> AttemptRecord:
    """The first sync attempt that *started* after ``seen_at`` (the leader's clock)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_status(store)
        if state is not None:
            attempt = state.attempt
            if attempt.time - attempt.duration_seconds >= seen_at:
                if not attempt.ok:
                    raise SyncFailed(f"the sync failed: {attempt.error}")
                return attempt
        threading.Event().wait(LOOK_EVERY)
    raise SyncFailed(f"the leader picked up the request, but no sync ended within {timeout:.0f} s")


def _summary(attempt: AttemptRecord) -> str:
    counts = ", ".join(f"{v} {k}" for k, v in sorted(attempt.counts.items()) if v) or "nothing"
    text = f"synced {short_commit(attempt.commit)}: {counts}"
    if attempt.problems:
        text += f"; {len(attempt.problems)} invalid file(s), see 'kaylee-sync status'"
    return text


def _follow_all(
    store: Store, etcd: Any, params: dict[str, Any], changed: list[Any], timeout: float
) -> None:
    """Follow each created or changed unit's rollout; SyncFailed if any does not finish."""
    if not changed:
        return
    fleet = fleet_client(etcd, params)
    failed: list[str] = []
    try:
        for stored in changed:
            name = stored.key.removeprefix(keys.UNITS)
            spec = parse_stored(stored.value, stored.key, name)
            generation = store.restart_generation(name)
            target = Target(spec, stored.value, generation, params["unit_prefix"])
            outcome = follow(
                store, fleet, target, display_for(sys.stdout), FollowSettings(timeout=timeout)
            )
            click.echo(f"{outcome.message} in {outcome.elapsed:.0f} s")
            if not outcome.ok:
                failed.append(name)
    finally:
        fleet.close()
    if failed:
        raise SyncFailed(f"the rollout of {', '.join(failed)} did not finish")
