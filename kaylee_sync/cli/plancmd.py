"""``kaylee-sync plan`` and ``kaylee-sync apply``: the dry run, and applying exactly it.

``plan`` never writes. ``plan --out FILE`` saves the plan together with the ref it
resolved; ``apply FILE`` applies exactly that plan or nothing
(:mod:`kaylee_sync.daemon.oneshot` holds the checks).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from kaylee_sync.cli.common import (
    etcd_options,
    etcd_settings_from,
    format_option,
    unit_prefix_option,
)
from kaylee_sync.cli.gitopts import source_options, source_settings_from
from kaylee_sync.cli.trustopts import signature_options, signature_policy_from
from kaylee_sync.cli.values import NewFile
from kaylee_sync.daemon.oneshot import apply_saved_plan, read_saved_plan
from kaylee_sync.errors import UsageError
from kaylee_sync.gcpause import collector_paused
from kaylee_sync.plan.against import actual_from_desired
from kaylee_sync.plan.compute import make_plan, short_commit
from kaylee_sync.plan.model import Plan
from kaylee_sync.plan.output_json import plan_to_json
from kaylee_sync.plan.output_markdown import render_markdown
from kaylee_sync.plan.output_text import render_text
from kaylee_sync.plan.prune import DEFAULT_MAX_PRUNE, DEFAULT_MAX_PRUNE_PERCENT
from kaylee_sync.plan.summary import plan_exit_code, prune_lines
from kaylee_sync.source import GitSource
from kaylee_sync.source.signatures import verify_commits
from kaylee_sync.store import Store
from kaylee_sync.sync.actual import read_actual
from kaylee_sync.sync.syncer import Syncer, SyncSettings

F = TypeVar("F", bound=Callable[..., Any])


def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if math.isnan(value):  # FloatRange lets NaN through: every comparison with it is false
        raise click.BadParameter("must be a number from 0 to 100, not nan")
    return value


def prune_options() -> Callable[[F], F]:
    """The prune guard's options, shared by the daemon, ``--once`` and ``plan`` (one fixed
    variable each, see docs/cli.md).

    ``--allow-prune-all`` (and its variable) is the option's name before the guard held
    refusals; it stays as an alias so that existing units and scripts keep working.
    """

    def decorate(func: F) -> F:
        options = [
            click.option(
                "--max-prune",
                type=click.IntRange(min=0),
                default=DEFAULT_MAX_PRUNE,
                envvar="KAYLEE_MAX_PRUNE",
                show_default=True,
                help="Refuse a commit that deletes more than this many managed units.",
            ),
            click.option(
                "--max-prune-percent",
                type=click.FloatRange(0, 100),
                callback=_finite,
                default=DEFAULT_MAX_PRUNE_PERCENT,
                envvar="KAYLEE_MAX_PRUNE_PERCENT",
                show_default=True,
                help="... or more than this % of them (one unit is always allowed).",
            ),
            click.option(
                "--allow-prune",
                "--allow-prune-all",
                "allow_prune",
                is_flag=True,
                envvar=["KAYLEE_ALLOW_PRUNE", "KAYLEE_ALLOW_PRUNE_ALL"],
                help="Lift the prune guard: delete what Git deleted and release a refused "
                "prune (logged).",
            ),
        ]
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def prune_settings(params: dict[str, Any]) -> dict[str, Any]:
    """The SyncSettings fields the prune options fill in."""
    return {
        "max_prune": params["max_prune"],
        "max_prune_percent": params["max_prune_percent"],
        "allow_prune_all": params["allow_prune"],
    }


def _color(fmt: str) -> bool:
    return fmt == "text" and sys.stdout.isatty() and "NO_COLOR" not in os.environ


@click.command()
@source_options
@signature_options
@etcd_options
@prune_options()
@click.option("--ref", help="Commit, branch or tag to plan [default: the branch head].")
@click.option("--worktree", is_flag=True, help="Plan the working tree, uncommitted files too.")
@click.option(
    "--against",
    metavar="REF",
    help="Compare with another ref instead of etcd (no etcd needed), e.g. origin/main.",
)
@format_option(
    "text",
    "markdown",
    "json",
    help="text for people (coloured on a TTY), markdown for a PR comment, json for tools.",
)
@click.option("--out", type=NewFile(),
              help="Also save the plan here, for 'kaylee-sync apply'.")  # fmt: skip
@click.option("--no-fetch", is_flag=True, help="Do not fetch a remote first.")
@unit_prefix_option("Prefix of fleet units.")
def plan(**params: Any) -> None:
    """Show what a sync would change: per unit, the spec diff and the fleet effect.

    Exit code 0: no changes; 2: changes; 1: invalid files or an error.

    \b
    Examples:
      kaylee-sync plan --repo . --path units
      kaylee-sync plan --repo . --worktree                 # before committing
      kaylee-sync plan --repo . --ref HEAD --against origin/main --format markdown
      kaylee-sync plan --repo . --out plan.json && kaylee-sync apply plan.json --repo .
    """
    if params["worktree"] and params["ref"]:
        raise UsageError("--worktree and --ref are exclusive: the worktree is HEAD plus edits")
    # a bulk job in a short-lived process: the cyclic collector waits, as during a
    # daemon's sync (gcpause.py; a third of a cold plan of 10,000 files otherwise)
    with (
        collector_paused(),
        GitSource(source_settings_from(params, params["unit_prefix"])) as source,
    ):
        if source.local_path is None and not params["no_fetch"]:
            source.fetch()
        settings = SyncSettings(
            **prune_settings(params),
            unit_prefix=params["unit_prefix"],
            signatures=signature_policy_from(params),
        )
        if settings.signatures is not None and params["worktree"]:
            raise UsageError("--verify-signatures cannot check uncommitted files (--worktree)")
        if params["against"]:
            result = _plan_against(source, params, settings)
        else:
            with Store(etcd_settings_from(params)) as store:
                syncer = Syncer(source, store, settings)
                desired = syncer.desired(params["ref"], worktree=params["worktree"])
                actual = read_actual(store)
                if settings.signatures is not None:  # issue 15: as a sync would refuse it
                    base = actual.inventory.commit if actual.inventory is not None else None
                    verify_commits(source.git_commands(), settings.signatures, base, desired.commit)
                result = syncer.plan(desired, actual)
    _emit(result, params)
    sys.exit(plan_exit_code(result))


def _plan_against(source: GitSource, params: dict[str, Any], settings: SyncSettings) -> Plan:
    base_commit = source.resolve(params["against"])
    base = source.desired(base_commit)
    label = f"{params['against']} ({short_commit(base_commit)})"
    head = (
        source.worktree_desired()
        if params["worktree"]
        else source.desired(source.resolve(params["ref"]))
    )
    if settings.signatures is not None:  # issue 15: what --against lacks must be signed
        verify_commits(source.git_commands(), settings.signatures, base_commit, head.commit)
    return make_plan(
        head,
        actual_from_desired(base, label),
        now=time.time(),
        prune=settings.prune,
        unit_prefix=settings.unit_prefix,
    )


def _emit(result: Plan, params: dict[str, Any]) -> None:
    document = plan_to_json(result)
    if params["out"] is not None:
        saved = {**document, "ref": params["ref"], "made_at": time.time()}
        try:
            params["out"].write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            raise UsageError(
                f"--out {params['out']}: cannot write the plan: {exc.strerror}"
            ) from None
    if params["fmt"] == "json":
        click.echo(json.dumps(document, indent=2, sort_keys=True))
    elif params["fmt"] == "markdown":
        click.echo(render_markdown(result), nl=False)
    else:
        click.echo(render_text(result, color=_color(params["fmt"])), nl=False)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@source_options
@signature_options
@etcd_options
@click.option("--no-fetch", is_flag=True, help="Do not fetch a remote first.")
def apply(file: Path, **params: Any) -> None:
    """Apply exactly the plan saved by 'kaylee-sync plan --out FILE'.

    Refused if the branch (or ref) has moved to another commit, if any unit, the
    inventory or a suspension changed in etcd since the plan was made, or while a
    kaylee-sync daemon leads (it syncs the branch itself; apply is for clusters
    synced by hand or by CI).

    \b
    Example:
      kaylee-sync plan --repo . --out plan.json
      kaylee-sync apply plan.json --repo .
    """
    saved = read_saved_plan(file)
    with GitSource(source_settings_from(params)) as source:
        result = apply_saved_plan(
            saved,
            source,
            etcd_settings_from(params),
            fetch=not params["no_fetch"],
            signatures=signature_policy_from(params),
        )
    for line in prune_lines(saved.plan):
        click.echo(line)
    click.echo(
        f"applied {short_commit(saved.plan.desired.commit)}: {result.created} created, "
        f"{result.updated} updated, {result.deleted} deleted"
    )
