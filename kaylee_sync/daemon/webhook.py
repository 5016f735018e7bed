"""Is a POST to /hooks/git really from our Git host? One shared secret decides.

A webhook only makes the daemon sync sooner — it carries no data we trust, the sync
reads the repository itself — but an open endpoint would let anyone make every daemon
fetch in a loop, so a request must prove it knows the secret:

- GitHub (and Gitea, Forgejo) sign the body: ``X-Hub-Signature-256: sha256=<hex>``, the
  HMAC-SHA256 of the raw body keyed with the secret.
- GitLab sends the secret itself: ``X-Gitlab-Token: <secret>``.

If a request carries both headers, both must be right. Comparisons are constant-time
(:func:`hmac.compare_digest`). A reason for refusing names the header and what was wrong
with it, never the secret or the signature, because it is logged and sent back.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

GITHUB_HEADER = "X-Hub-Signature-256"
GITHUB_SHA1_HEADER = "X-Hub-Signature"
GITLAB_HEADER = "X-Gitlab-Token"


def _bytes(text: str) -> bytes:
    # surrogatepass: every str encodes (header values are arbitrary latin-1 text) and
    # distinct strings stay distinct, so no odd input can compare equal by accident.
    return text.encode("utf-8", "surrogatepass")


def _check_github(value: str, body: bytes, secret: str) -> str | None:
    scheme, sep, given = value.strip().partition("=")
    if not sep or scheme.lower() != "sha256":
        return f"{GITHUB_HEADER} is not of the form sha256=<hex>"
    expected = hmac.new(_bytes(secret), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(_bytes(given.lower()), _bytes(expected)):
        return f"{GITHUB_HEADER} does not match the body (wrong secret, or the body changed)"
    return None


def _check_gitlab(value: str, secret: str) -> str | None:
    if not hmac.compare_digest(_bytes(value), _bytes(secret)):
        return f"{GITLAB_HEADER} is not the configured secret"
    return None


def verify(headers: Mapping[str, str], body: bytes, secret: str) -> str | None:
    """None if the request proves it knows ``secret``; else a one-line reason why not.

    ``headers`` may be any mapping; names are matched case-insensitively.
    """
    if not secret:
        # An empty secret would accept an empty X-Gitlab-Token: refuse everything.
        return "no webhook secret is configured"
    lowered = {name.lower(): value for name, value in headers.items()}
    github = lowered.get(GITHUB_HEADER.lower())
    gitlab = lowered.get(GITLAB_HEADER.lower())
    if github is None and gitlab is None:
        if GITHUB_SHA1_HEADER.lower() in lowered:
            return f"only {GITHUB_SHA1_HEADER} (SHA-1) was sent; {GITHUB_HEADER} is required"
        return f"neither {GITHUB_HEADER} nor {GITLAB_HEADER} was sent"
    if github is not None and (reason := _check_github(github, body, secret)):
        return reason
    if gitlab is not None and (reason := _check_gitlab(gitlab, secret)):
        return reason
    return None
