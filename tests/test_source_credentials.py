"""Credentials reach git through its environment only, and never appear in a message.

HTTPS is tested against git's own smart-HTTP server (``git http-backend``) behind a small
HTTP server that demands Basic authentication, so the token really travels through
git's askpass; SSH (no sshd here) through the command git runs for it.
"""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kaylee_sync.errors import UsageError
from kaylee_sync.source import (
    GitCredentials,
    GitSource,
    SourceSettings,
    SourceUnavailable,
    redact,
)
from kaylee_sync.source.credentials import GitAuth, register_secret, split_url_credentials
from tests.gitrepo import GitRepo, unit_yaml

TOKEN = "ghs_7Kq2ZtX9wY4vB1nM8pR3sT6uA0cD5eF2"


class GitHttp:
    """``git http-backend`` over HTTP, for one user and password; records who logged in."""

    def __init__(self, root: Path, user: str, password: str) -> None:
        self.root = root
        self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.users: list[str] = []  # user names of accepted requests
        self.refused = 0
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                backend.handle(self)

            def do_POST(self) -> None:
                backend.handle(self)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        auth = request.headers.get("Authorization", "")
        if auth != self.expected:
            self.refused += 1
            request.send_response(401)
            request.send_header("WWW-Authenticate", 'Basic realm="git"')
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        self.users.append(base64.b64decode(auth.split()[1]).decode().split(":")[0])
        path, _, query = request.path.partition("?")
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        env = {
            "PATH": os.environ["PATH"],
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": request.command,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_CONTENT_ENCODING": request.headers.get("Content-Encoding", ""),
            "GIT_PROTOCOL": request.headers.get("Git-Protocol", ""),
            "REMOTE_ADDR": "127.0.0.1",
        }
        done = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, check=True
        )
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(": ")
            if name.lower() == "status":
                status = int(value.split()[0])
            else:
                headers.append((name, value))
        request.send_response(status)
        for name, value in headers:
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        request.wfile.write(payload)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[GitHttp, str]]:
    """A repository with one unit, served at ``<url>/units.git`` for x-access-token:TOKEN."""
    bare = GitRepo(tmp_path / "srv" / "units.git", bare=True)
    work = GitRepo(tmp_path / "work")
    work.write("units/web.yaml", unit_yaml("web"))
    sha = work.commit()
    work.git("push", "-q", str(bare.path), "HEAD:main")
    server = GitHttp(tmp_path / "srv", "x-access-token", TOKEN)
    yield server, sha
    server.close()


OpenSource = Callable[..., GitSource]


@pytest.fixture
def open_source(tmp_path: Path) -> Iterator[OpenSource]:
    opened: list[GitSource] = []

    def make(repo: str, **kwargs: object) -> GitSource:
        kwargs.setdefault("cache_dir", tmp_path / "cache")
        source = GitSource(SourceSettings(repo, **kwargs))  # type: ignore[arg-type]
        opened.append(source)
        return source

    yield make
    for source in opened:
        source.close()


def files_containing(root: Path, needle: str) -> list[Path]:
    return [
        path
        for path in root.rglob("*")
        if path.is_file() and not path.is_symlink() and needle.encode() in path.read_bytes()
    ]


def test_an_https_token_is_sent_through_askpass_and_never_stored(
    tmp_path: Path, served: tuple[GitHttp, str], open_source: OpenSource
) -> None:
    server, sha = served
    source = open_source(f"{server.url}/units.git", credentials=GitCredentials(https_token=TOKEN))
    assert source.fetch() == sha
    assert set(source.desired(sha).units) == {"web"}
    assert server.users and set(server.users) == {"x-access-token"}
    assert server.refused >= 1  # git asked for credentials only when challenged
    assert files_containing(tmp_path / "cache", TOKEN) == []
    assert files_containing(tmp_path / "cache", "x-access-token") == []

    assert source._auth is not None
    askpass = Path(source._auth.environment["GIT_ASKPASS"])
    assert stat.S_IMODE(askpass.parent.stat().st_mode) == 0o700
    assert TOKEN not in askpass.read_text()
    source.close()
    assert not askpass.parent.exists()


def test_a_wrong_or_missing_token_fails_without_showing_it(
    served: tuple[GitHttp, str], open_source: OpenSource
) -> None:
    server, _ = served
    wrong = "ghs_wrongwrongwrongwrong"
    for credentials in (GitCredentials(https_token=wrong), GitCredentials()):
        source = open_source(f"{server.url}/units.git", credentials=credentials)
        with pytest.raises(SourceUnavailable) as failed:
            source.fetch()
        assert wrong not in str(failed.value) and TOKEN not in str(failed.value)
        assert "Authentication failed" in str(failed.value) or "Username" in str(failed.value)
        assert str(failed.value).startswith(f"cannot fetch {server.url}/units.git: ")
    assert server.users == []


def test_a_password_in_the_url_is_used_like_a_token_and_kept_out_of_everything(
    tmp_path: Path, served: tuple[GitHttp, str], open_source: OpenSource
) -> None:
    server, sha = served
    host = server.url.removeprefix("http://")
    source = open_source(f"http://x-access-token:{TOKEN}@{host}/units.git")
    assert source.display_repo == f"{server.url}/units.git"
    assert source.fetch() == sha
    assert files_containing(tmp_path / "cache", TOKEN) == []
    assert TOKEN not in repr(source.settings)


def test_ssh_gets_the_key_and_strict_known_hosts_from_the_environment(
    tmp_path: Path, open_source: OpenSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No sshd can run here: an "ssh" first on PATH records how git invoked it.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "ssh-args"
    fake = bin_dir / "ssh"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\necho "denied" >&2\nexit 255\n')
    fake.chmod(0o755)
    key = tmp_path / "deploy key"
    key.write_text("not really a key\n")
    known = tmp_path / "known hosts"
    known.write_text("")
    source = open_source(
        "ssh://git@git.example.com:2222/team/units.git",
        credentials=GitCredentials(ssh_key_file=key, known_hosts_file=known),
    )
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    with pytest.raises(SourceUnavailable, match="denied"):
        source.fetch()
    args = record.read_text().splitlines()
    assert args[args.index("-i") + 1] == str(key)
    assert "IdentitiesOnly=yes" in args
    assert f'UserKnownHostsFile="{known}"' in args
    assert "StrictHostKeyChecking=yes" in args
    assert "BatchMode=yes" in args
    assert "git@git.example.com" in args and "2222" in args


def test_missing_ssh_files_are_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="SSH key file"):
        GitSource(
            SourceSettings(
                "git@example.com:r.git",
                cache_dir=tmp_path,
                credentials=GitCredentials(ssh_key_file=tmp_path / "none"),
            )
        )


def test_the_token_never_enters_a_url_an_argument_or_a_config_file() -> None:
    auth = GitAuth(GitCredentials(https_token=TOKEN, https_username="oauth2"))
    try:
        env = auth.environment
        holding = [name for name, value in env.items() if TOKEN in value]
        assert holding == ["KAYLEE_SYNC_GIT_PASSWORD"]
        assert env["KAYLEE_SYNC_GIT_USERNAME"] == "oauth2"
        assert env["GIT_TERMINAL_PROMPT"] == "0"
        # Credential helpers are reset so that none stores the token.
        count = int(env["GIT_CONFIG_COUNT"])
        keys = {env[f"GIT_CONFIG_KEY_{i}"]: env[f"GIT_CONFIG_VALUE_{i}"] for i in range(count)}
        assert keys == {"credential.helper": ""}
    finally:
        auth.close()


def test_without_a_token_git_never_prompts() -> None:
    auth = GitAuth(GitCredentials())
    assert auth.environment == {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": ""}


def test_redact_masks_url_userinfo_and_registered_secrets() -> None:
    register_secret("s3cr3t/with+chars")
    text = (
        "fatal: unable to access 'https://me:pa@ss@host/r.git/': denied; "
        "token s3cr3t/with+chars or s3cr3t%2Fwith%2Bchars; ssh://git@h/x"
    )
    assert redact(text) == (
        "fatal: unable to access 'https://***@host/r.git/': denied; token *** or ***; ssh://***@h/x"
    )


def test_reprs_never_show_a_token_or_a_url_password() -> None:
    credentials = GitCredentials(https_token=TOKEN)
    assert TOKEN not in repr(credentials) and "https_token='***'" in repr(credentials)
    settings = SourceSettings("https://u:pw-42424242@h/r.git", credentials=credentials)
    assert "pw-42424242" not in repr(settings) and TOKEN not in repr(settings)


@pytest.mark.parametrize(
    ("given", "clean", "user", "password"),
    [
        ("https://h/r.git", "https://h/r.git", None, None),
        ("https://tok@h/r.git", "https://h/r.git", "tok", None),
        ("https://u:p%40ss@h:8443/r.git", "https://h:8443/r.git", "u", "p@ss"),
        ("ssh://git:pw@h/r.git", "ssh://git@h/r.git", None, "pw"),
        ("ssh://git@h/r.git", "ssh://git@h/r.git", None, None),
        ("git@h:r.git", "git@h:r.git", None, None),
    ],
)
def test_url_credentials_are_split_off(
    given: str, clean: str, user: str | None, password: str | None
) -> None:
    assert split_url_credentials(given) == (clean, user, password)


def test_a_multi_line_token_is_refused() -> None:
    with pytest.raises(UsageError):
        GitCredentials(https_token="abc\ndef")
