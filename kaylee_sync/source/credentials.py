"""How git authenticates to a remote, and the promise that no credential is ever shown.

Credentials reach git only through its environment, never through a URL or an argument
(both are visible in ``ps`` and end up in logs and in ``.git/config``):

* SSH: ``GIT_SSH_COMMAND`` with ``-i key -o IdentitiesOnly=yes`` and, when a known_hosts
  file is given, strict host key checking against that file alone. ``BatchMode`` keeps
  ssh from ever prompting a daemon.
* HTTPS: a token is handed to git by a ``GIT_ASKPASS`` script that reads it from an
  environment variable of the git process. The script lives in a private (0700)
  directory and holds no secret itself. Credential helpers are switched off for those
  commands, so that git never stores the token (``credential approve``).

Every message that may contain git's output goes through :func:`redact`, which removes
URL userinfo and every secret registered with :func:`register_secret` (a token is
registered the moment a :class:`GitCredentials` holding it is made).
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from kaylee_sync.errors import UsageError
from kaylee_sync.secrets import redact, register_secret

__all__ = ["GitAuth", "GitCredentials", "redact", "register_secret", "split_url_credentials"]

_ASKPASS_SCRIPT = """#!/bin/sh
# Written by kaylee-sync: answers git's credential prompts from the environment.
case "$1" in
  [Uu]sername*) printf '%s\\n' "$KAYLEE_SYNC_GIT_USERNAME" ;;
  *) printf '%s\\n' "$KAYLEE_SYNC_GIT_PASSWORD" ;;
esac
"""


@dataclass(frozen=True)
class GitCredentials:
    """How to authenticate to the remote. Empty: whatever the user's git and ssh do."""

    ssh_key_file: Path | None = None
    """Private key for ssh:// and ``git@host:path`` remotes (used alone: IdentitiesOnly)."""

    known_hosts_file: Path | None = None
    """known_hosts for the remote's host key; when given, checking is strict and this file
    is the only one consulted. None: ssh's defaults (~/.ssh/known_hosts), never prompting."""

    https_token: str | None = None
    """Token (or password) for https:// remotes. Never printed, logged, or written to disk."""

    https_username: str = "x-access-token"
    """User name sent with the token. GitHub accepts any; GitLab wants ``oauth2``."""

    def __post_init__(self) -> None:
        if self.https_token is not None and (
            not self.https_token or any(c in self.https_token for c in "\r\n\0")
        ):
            raise UsageError("the HTTPS token must be a non-empty single line")
        if any(c in self.https_username for c in "\r\n\0"):
            raise UsageError("the HTTPS user name must be a single line")
        register_secret(self.https_token)

    def __repr__(self) -> str:
        token = "'***'" if self.https_token else "None"
        return (
            f"GitCredentials(ssh_key_file={self.ssh_key_file!r}, "
            f"known_hosts_file={self.known_hosts_file!r}, https_token={token}, "
            f"https_username={self.https_username!r})"
        )


def split_url_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``(url without secrets, user, password)``.

    For http(s) the whole userinfo goes (a bare ``https://TOKEN@host`` is a token), and
    user and password are returned to be handed over by askpass. For ssh and the others
    only a password goes: the user name is part of the address, not a secret.
    """
    if "://" not in url:
        return url, None, None
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, has_password, password = userinfo.partition(":")
    if parts.scheme.lower() in ("http", "https"):
        clean = urlunsplit(parts._replace(netloc=hostport))
        return clean, unquote(user) or None, unquote(password) if has_password else None
    clean = urlunsplit(parts._replace(netloc=f"{user}@{hostport}" if user else hostport))
    return clean, None, unquote(password) if has_password else None


class GitAuth:
    """The environment of git's network commands; owns the askpass script's private dir."""

    def __init__(
        self,
        credentials: GitCredentials,
        url_user: str | None = None,
        url_password: str | None = None,
        connect_timeout: float = 30.0,
    ) -> None:
        register_secret(url_password)
        password = credentials.https_token or url_password
        user = url_user or credentials.https_username
        self._dir: str | None = None
        env = {"GIT_TERMINAL_PROMPT": "0"}
        if password is not None:
            self._dir = tempfile.mkdtemp(prefix="kaylee-sync-askpass-")  # mode 0700
            script = Path(self._dir) / "askpass"
            fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
            with os.fdopen(fd, "w") as f:
                f.write(_ASKPASS_SCRIPT)
            env |= {
                "GIT_ASKPASS": str(script),
                "KAYLEE_SYNC_GIT_USERNAME": user,
                "KAYLEE_SYNC_GIT_PASSWORD": password,
            }
            # An empty credential.helper resets the list: no helper stores the token.
            env |= _extra_config({"credential.helper": ""})
        else:
            # Empty (not unset): git skips core.askPass and SSH_ASKPASS, so a daemon never
            # waits for a password dialog; git then fails with "terminal prompts disabled".
            env["GIT_ASKPASS"] = ""
        ssh = _ssh_command(credentials, connect_timeout)
        if ssh is not None:
            env["GIT_SSH_COMMAND"] = ssh
        self.environment: dict[str, str] = env

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _extra_config(values: dict[str, str]) -> dict[str, str]:
    """``GIT_CONFIG_COUNT``/``KEY``/``VALUE`` entries, after any the user already set."""
    try:
        start = int(os.environ.get("GIT_CONFIG_COUNT", "0"))
    except ValueError:
        start = 0
    env = {"GIT_CONFIG_COUNT": str(start + len(values))}
    for i, (key, value) in enumerate(values.items(), start=start):
        env |= {f"GIT_CONFIG_KEY_{i}": key, f"GIT_CONFIG_VALUE_{i}": value}
    return env


def _ssh_command(credentials: GitCredentials, connect_timeout: float) -> str | None:
    if credentials.ssh_key_file is None and credentials.known_hosts_file is None:
        return None  # leave the user's own GIT_SSH_COMMAND / core.sshCommand alone
    args = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, int(connect_timeout))}"]
    if credentials.ssh_key_file is not None:
        args += ["-i", str(credentials.ssh_key_file), "-o", "IdentitiesOnly=yes"]
    if credentials.known_hosts_file is not None:
        args += [
            "-o",
            f"UserKnownHostsFile={_ssh_quote(str(credentials.known_hosts_file))}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
        ]
    return shlex.join(args)


def _ssh_quote(value: str) -> str:
    # ssh splits UserKnownHostsFile on whitespace (it takes a list); quotes keep one path.
    return f'"{value}"' if any(c.isspace() for c in value) else value
