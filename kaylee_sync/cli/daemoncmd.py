"""``kaylee-sync --repo …`` (the daemon), ``--once`` (cron/CI) and ``--dev`` (a laptop).

Only option parsing and the choice between the three modes live here; the work is in
:mod:`kaylee_sync.daemon` and :mod:`kaylee_sync.sync`.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from kaylee_sync.cli.common import etcd_settings_from
from kaylee_sync.cli.fleetopts import fleet_client, scheduler_settings_from, verbose_option
from kaylee_sync.cli.gitopts import read_secret_file, source_settings_from
from kaylee_sync.cli.plancmd import prune_options, prune_settings
from kaylee_sync.cli.trustopts import feedback_settings_from, signature_policy_from
from kaylee_sync.cli.values import Seconds
from kaylee_sync.daemon.daemon import Daemon, DaemonSettings
from kaylee_sync.daemon.logs import register_secret, setup_logging
from kaylee_sync.daemon.oneshot import run_once
from kaylee_sync.fleet.model import DEFAULT_KEY_PREFIX
from kaylee_sync.source import GitSource
from kaylee_sync.store import Store
from kaylee_sync.sync.syncer import SyncSettings

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("kaylee_sync")


def daemon_options(func: F) -> F:
    options = [
        click.option(
            "--interval",
            type=Seconds(min=0.1, max=86400),
            default=DaemonSettings.interval,
            show_default=True,
            help="Seconds between polls of the repository (10 % jitter).",
        ),
        prune_options(),
        click.option("--once", is_flag=True,
                     help="Sync once (plus one scheduler pass), then exit 0/1."),
        click.option(
            "--dev",
            is_flag=True,
            help="Run against an embedded etcd and a SIMULATED fleet (for trying it out).",
        ),
        click.option(
            "--listen",
            default=DaemonSettings.listen,
            show_default=True,
            help="HTTP listener for /healthz, /readyz, /metrics and /hooks/git ('' = off).",
        ),
        click.option(
            "--webhook-secret-file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="File with the webhook secret (GitHub HMAC or GitLab token); enables "
            "POST /hooks/git. Or set KAYLEE_WEBHOOK_SECRET.",
        ),
        click.option("--no-scheduler", is_flag=True,
                     help="Sync only, never touch fleet (e.g. to stage a keyspace). Not "
                          "beside 'kaylee server': both campaign for the same leadership."),
        click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
                     show_default=True, help="Log lines for people or for log pipelines."),
        verbose_option,
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


def _secret(params: dict[str, Any]) -> str | None:
    secret = read_secret_file(params.get("webhook_secret_file"), "webhook secret")
    if secret is None:
        secret = os.environ.get("KAYLEE_WEBHOOK_SECRET") or None
        if secret:
            register_secret(secret)
    return secret


def _settings(params: dict[str, Any], git_timeout: float) -> DaemonSettings:
    scheduler, election = scheduler_settings_from(params)
    return DaemonSettings(
        interval=params["interval"],
        listen=params["listen"] or None,
        webhook_secret=_secret(params),
        sync=SyncSettings(
            **prune_settings(params),
            unit_prefix=params["unit_prefix"],
            signatures=signature_policy_from(params),  # issue 15
            full_every=scheduler.resync,  # the Git sync's full pass too (issue 14)
        ),
        feedback=feedback_settings_from(params),  # issue 15
        scheduler=scheduler,
        election=election,
        schedule=not params["no_scheduler"],
        # A sync may pay a clone's or a fetch's whole timeout twice before it is stuck.
        stuck_after=max(DaemonSettings.stuck_after, 2 * git_timeout + 30),
    )


@contextmanager
def _dev(params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Start the dev cluster; yield params pointing at it."""
    from kaylee_sync.daemon.dev import DevEnvironment

    with DevEnvironment() as env:
        params = {**params, "etcd_endpoints": env.endpoint, "fleet_driver": "etcd"}
        params["fleet_endpoints"] = None
        params["fleet_prefix"] = DEFAULT_KEY_PREFIX
        repo_args = f"--repo {shlex.quote(params['repo'])}"
        if params.get("unit_path"):
            repo_args += f" --path {shlex.quote(params['unit_path'])}"
        click.echo(env.banner(repo_args, params["listen"] or None), err=True)
        yield params


def run_daemon(params: dict[str, Any]) -> None:
    setup_logging("debug" if params["verbose"] else "info", params["log_format"])
    # httpx logs every request at INFO (the fleet driver's etcd v2 watches are a request
    # each): noise in a daemon's log. Its warnings and errors still show.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    with ExitStack() as stack:
        if params["dev"]:
            params = stack.enter_context(_dev(params))
        etcd = etcd_settings_from(params)
        source_settings = source_settings_from(params, params["unit_prefix"])
        settings = _settings(params, source_settings.timeout)
        source = stack.enter_context(GitSource(source_settings))
        store = stack.enter_context(Store(etcd))
        fleet = None if params["no_scheduler"] else fleet_client(etcd, params)
        if fleet is not None:
            stack.callback(fleet.close)
        if params["once"]:
            sys.exit(run_once(source, store, fleet, settings))
        Daemon(source, store, fleet, settings).run()  # SIGTERM/SIGINT: see daemon.lifecycle
