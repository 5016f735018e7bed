"""The Git flags shared by the daemon, ``plan`` and ``apply``, and the secrets they name.

Each option has one explicit environment variable (``KAYLEE_REPO``, ``KAYLEE_BRANCH`` …)
so that the same EnvironmentFile serves the daemon and an operator's ``plan``. Secrets
are read from files or the environment, never from the command line (where ``ps`` and
shell history would show them), and are registered for redaction as soon as they are read.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from kaylee_sync.errors import UsageError
from kaylee_sync.source import GitCredentials, SourceSettings
from kaylee_sync.source.credentials import register_secret

F = TypeVar("F", bound=Callable[..., Any])

TOKEN_ENV = "KAYLEE_GIT_TOKEN"


def read_secret_file(path: Path | None, what: str) -> str | None:
    """The first line of a secret file (systemd credentials, Kubernetes-style secret files)."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the {what} file {path}: {exc}") from exc
    secret = text.strip()
    if not secret:
        raise UsageError(f"the {what} file {path} is empty")
    register_secret(secret)
    return secret


def source_options(func: F) -> F:
    file_type = click.Path(dir_okay=False, path_type=Path)
    options = [
        click.option(
            "--repo",
            envvar="KAYLEE_REPO",
            help="Repository of unit files: https://, ssh://, git@host:path, file:// or a "
            "local path (read in place).",
        ),
        click.option(
            "--branch",
            envvar="KAYLEE_BRANCH",
            help="Branch to follow [default: the remote's default branch; for a local path, "
            "its checked-out branch].",
        ),
        click.option(
            "--path",
            "unit_path",
            envvar="KAYLEE_PATH",
            default="",
            help="Directory of the unit files in the repository, searched recursively for "
            "*.yaml/*.yml [default: the whole tree].",
        ),
        click.option(
            "--cache-dir",
            envvar="KAYLEE_CACHE_DIR",
            type=click.Path(file_okay=False, path_type=Path),
            help="Where remote repositories are cloned [default: ~/.cache/kaylee-sync/repos].",
        ),
        click.option(
            "--ssh-key-file",
            envvar="KAYLEE_SSH_KEY_FILE",
            type=file_type,
            help="SSH private key for ssh remotes.",
        ),
        click.option(
            "--known-hosts-file",
            envvar="KAYLEE_KNOWN_HOSTS_FILE",
            type=file_type,
            help="known_hosts for the remote (strict host key checking).",
        ),
        click.option(
            "--https-token-file",
            envvar="KAYLEE_HTTPS_TOKEN_FILE",
            type=file_type,
            help=f"File holding a token for https remotes (or set {TOKEN_ENV}).",
        ),
        click.option(
            "--https-username",
            envvar="KAYLEE_HTTPS_USERNAME",
            default="x-access-token",
            show_default=True,
            help="User name sent with the token (GitLab wants oauth2).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def source_settings_from(params: dict[str, Any], unit_prefix: str = "k2") -> SourceSettings:
    repo = params.get("repo")
    if not repo:
        raise UsageError("no repository given: use --repo URL|PATH (or set KAYLEE_REPO)")
    token = read_secret_file(params.get("https_token_file"), "HTTPS token")
    if token is None and os.environ.get(TOKEN_ENV):
        token = os.environ[TOKEN_ENV].strip()
        register_secret(token)
    credentials = GitCredentials(
        ssh_key_file=params.get("ssh_key_file"),
        known_hosts_file=params.get("known_hosts_file"),
        https_token=token or None,
        https_username=params.get("https_username") or "x-access-token",
    )
    extra: dict[str, Any] = {}
    if params.get("cache_dir") is not None:
        extra["cache_dir"] = params["cache_dir"]
    return SourceSettings(
        repo=repo,
        branch=params.get("branch") or None,
        path=params.get("unit_path") or "",
        credentials=credentials,
        unit_prefix=unit_prefix,
        **extra,
    )
