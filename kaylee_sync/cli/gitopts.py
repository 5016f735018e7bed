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

from kaylee_sync.cli.values import Directory
from kaylee_sync.errors import UsageError
from kaylee_sync.render import DEFAULT_UNIT_PREFIX
from kaylee_sync.source import GitCredentials, SourceSettings
from kaylee_sync.source.credentials import register_secret, split_url_credentials

F = TypeVar("F", bound=Callable[..., Any])

TOKEN_ENV = "KAYLEE_GIT_TOKEN"


# A token, password or webhook secret is a line, not a file of this size: the bound keeps
# a mistaken path (/dev/zero, a log file, a disk image) from being read into memory.
MAX_SECRET_BYTES = 64 * 1024


def read_secret_file(path: Path | None, what: str) -> str | None:
    """The first line of a secret file (systemd credentials, Kubernetes-style secret files)."""
    if path is None:
        return None
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_SECRET_BYTES + 1)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UsageError(f"cannot read the {what} file {path}: {reason}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise UsageError(
            f"the {what} file {path} is larger than {MAX_SECRET_BYTES // 1024} KiB; "
            "it should hold one line"
        )
    secret = text.strip()
    if not secret:
        raise UsageError(f"the {what} file {path} is empty")
    register_secret(secret)
    return secret


def _no_password_on_command_line(
    ctx: click.Context, param: click.Parameter, repo: str | None
) -> str | None:
    """Refuse a password in a ``--repo`` URL typed on the command line.

    ``ps`` shows every user a process's arguments, and the shell history keeps them:
    scrubbing the process title afterwards would still leave both (and the moment
    before the scrub). So the URL is refused, pointing at the token file. From
    ``KAYLEE_REPO`` it is accepted: the environment is private to the process, as it is
    for ``KAYLEE_GIT_TOKEN``.
    """
    if not repo:
        return repo
    try:
        password = split_url_credentials(repo)[2]
    except ValueError as exc:  # urlsplit: "Invalid IPv6 URL", a bad port
        raise click.BadParameter(f"not a valid URL ({exc})", ctx, param) from None
    register_secret(password)
    from_flag = ctx.get_parameter_source(param.name or "") is click.core.ParameterSource.COMMANDLINE
    if from_flag and password is not None:
        raise click.BadParameter(
            "the URL holds a password, which ps and the shell history show; remove it and "
            f"put the token in a file given by --https-token-file (or in {TOKEN_ENV})",
            ctx,
            param,
        )
    return repo


def source_options(func: F) -> F:
    file_type = click.Path(dir_okay=False, path_type=Path)
    options = [
        click.option(
            "--repo",
            envvar="KAYLEE_REPO",
            callback=_no_password_on_command_line,
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
            type=Directory(),
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
            default=GitCredentials.https_username,
            show_default=True,
            help="User name sent with the token (GitLab wants oauth2).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def source_settings_from(
    params: dict[str, Any], unit_prefix: str = DEFAULT_UNIT_PREFIX
) -> SourceSettings:
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
