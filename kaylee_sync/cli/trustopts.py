"""The trust and feedback flags: signed commits only, commit statuses, notifications.

Kept apart from the Git and daemon flags (:mod:`.gitopts`, :mod:`.daemoncmd`) because
they form their own groups: ``--verify-signatures`` with its key files (daemon, ``plan``
and ``apply``), and the feedback flags (daemon only). Each has an explicit ``KAYLEE_*``
variable, like the Git flags, so one EnvironmentFile serves every command. Tokens and
secrets are read from files and registered for redaction as soon as they are read.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from kaylee_sync.cli.gitopts import read_secret_file
from kaylee_sync.errors import UsageError
from kaylee_sync.feedback import PROVIDERS, FeedbackSettings, StatusSettings, WebhookSettings
from kaylee_sync.feedback.outbox import OutboxSettings
from kaylee_sync.feedback.reporter import STATUS_RATE
from kaylee_sync.source.credentials import split_url_credentials
from kaylee_sync.source.signatures import SignaturePolicy

F = TypeVar("F", bound=Callable[..., Any])

# owner/name (or group/sub/project) at the end of an https://, ssh:// or scp-like URL
_REPO_PATH = re.compile(r"^(?:[a-z+]+://[^/]+/|[^/:@]+@[^/:]+:|[^/:]+:)(?P<path>.+?)(?:\.git)?/?$")


def _apply(func: F, options: list[Callable[[F], F]]) -> F:
    for option in reversed(options):
        func = option(func)
    return func


def signature_options(func: F) -> F:
    file_type = click.Path(dir_okay=False, path_type=Path)
    return _apply(
        func,
        [
            click.option(
                "--verify-signatures",
                envvar="KAYLEE_VERIFY_SIGNATURES",
                is_flag=True,
                help="Deploy a commit only if it and every commit since the last synced one "
                "are signed by an allowed key (SSH or OpenPGP; git verifies). "
                "Env KAYLEE_VERIFY_SIGNATURES.",
            ),
            click.option(
                "--allowed-signers",
                envvar="KAYLEE_ALLOWED_SIGNERS",
                type=file_type,
                help="ssh-keygen allowed-signers file: the SSH keys that may sign. "
                "Env KAYLEE_ALLOWED_SIGNERS.",
            ),
            click.option(
                "--gpg-keyring",
                envvar="KAYLEE_GPG_KEYRING",
                type=file_type,
                help="Exported OpenPGP public keys (gpg --export): the keys that may sign. "
                "Env KAYLEE_GPG_KEYRING.",
            ),
        ],
    )


def signature_policy_from(params: dict[str, Any]) -> SignaturePolicy | None:
    signers, keyring = params.get("allowed_signers"), params.get("gpg_keyring")
    if not params.get("verify_signatures"):
        if signers is not None or keyring is not None:
            # A key file without the switch would look like protection and be none.
            flag = "--allowed-signers" if signers is not None else "--gpg-keyring"
            raise UsageError(f"{flag} has no effect without --verify-signatures")
        return None
    return SignaturePolicy(allowed_signers=signers, gpg_keyring=keyring)


def feedback_options(func: F) -> F:
    file_type = click.Path(dir_okay=False, path_type=Path)
    return _apply(
        func,
        [
            click.option(
                "--cluster-name",
                envvar="KAYLEE_CLUSTER_NAME",
                help="This cluster's name, in commit statuses (context kaylee/<name>) and "
                "notifications. Env KAYLEE_CLUSTER_NAME.",
            ),
            click.option(
                "--commit-status",
                envvar="KAYLEE_COMMIT_STATUS",
                type=click.Choice(sorted(PROVIDERS)),
                help="Post each commit's sync and rollout state to this Git host's commit "
                "status API. Env KAYLEE_COMMIT_STATUS.",
            ),
            click.option(
                "--commit-status-url",
                envvar="KAYLEE_COMMIT_STATUS_URL",
                help="API base URL [default: api.github.com / gitlab.com; required for "
                "gitea]. Env KAYLEE_COMMIT_STATUS_URL.",
            ),
            click.option(
                "--commit-status-repo",
                envvar="KAYLEE_COMMIT_STATUS_REPO",
                help="owner/name on the Git host [default: from --repo]. "
                "Env KAYLEE_COMMIT_STATUS_REPO.",
            ),
            click.option(
                "--commit-status-token-file",
                envvar="KAYLEE_COMMIT_STATUS_TOKEN_FILE",
                type=file_type,
                help="File holding the API token (commit statuses: write). "
                "Env KAYLEE_COMMIT_STATUS_TOKEN_FILE.",
            ),
            click.option(
                "--commit-status-rate",
                envvar="KAYLEE_COMMIT_STATUS_RATE",
                type=click.FloatRange(min=0.01),
                default=STATUS_RATE * 60,
                show_default=True,
                help="Commit status posts per minute at most (bursts of 10). "
                "Env KAYLEE_COMMIT_STATUS_RATE.",
            ),
            click.option(
                "--notify-url",
                envvar="KAYLEE_NOTIFY_URL",
                help="POST a JSON notification here for sync failures, refused commits and "
                "prunes, invalid files, rollouts and expired suspensions. Env KAYLEE_NOTIFY_URL.",
            ),
            click.option(
                "--notify-secret-file",
                envvar="KAYLEE_NOTIFY_SECRET_FILE",
                type=file_type,
                help="File holding the HMAC key of the X-Kaylee-Signature-256 header. "
                "Env KAYLEE_NOTIFY_SECRET_FILE.",
            ),
            click.option(
                "--notify-queue",
                envvar="KAYLEE_NOTIFY_QUEUE",
                type=click.IntRange(min=1),
                default=OutboxSettings.capacity,
                show_default=True,
                help="Notifications held for retry at most (the oldest is dropped). "
                "Env KAYLEE_NOTIFY_QUEUE.",
            ),
        ],
    )


def feedback_settings_from(params: dict[str, Any]) -> FeedbackSettings:
    cluster = params.get("cluster_name") or ""
    provider, url = params.get("commit_status"), params.get("notify_url")
    if (provider or url) and not cluster:
        flag = "--commit-status" if provider else "--notify-url"
        raise UsageError(f"{flag} needs --cluster-name (it names this cluster's reports)")
    status = None
    if provider:
        token_file = params.get("commit_status_token_file")
        if token_file is None:
            raise UsageError("--commit-status needs --commit-status-token-file")
        token = read_secret_file(token_file, "commit status token")
        assert token is not None
        status = StatusSettings(
            provider=provider,
            repo=params.get("commit_status_repo") or _repo_path(params.get("repo") or ""),
            cluster=cluster,
            token=token,
            api_url=params.get("commit_status_url") or None,
        )
    webhook = None
    if url:
        secret = read_secret_file(params.get("notify_secret_file"), "notification secret")
        webhook = WebhookSettings(url=url, cluster=cluster, secret=secret)
    rate = params.get("commit_status_rate") or STATUS_RATE * 60
    return FeedbackSettings(
        status=status,
        status_outbox=OutboxSettings(rate=rate / 60),
        webhook=webhook,
        webhook_outbox=OutboxSettings(
            capacity=params.get("notify_queue") or OutboxSettings.capacity
        ),
    )


def _repo_path(repo: str) -> str:
    """``owner/name`` from the repository URL; UsageError when it is not a URL."""
    match = _REPO_PATH.match(split_url_credentials(repo)[0])
    if match is None:
        raise UsageError(
            f"cannot tell the Git host's owner/name from --repo {repo!r}; give --commit-status-repo"
        )
    return match.group("path")
