"""Webhook authentication: GitHub's HMAC signature, GitLab's token, and what is refused."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from kaylee_sync.daemon.webhook import verify

SECRET = "It's a Secret to Everybody"
BODY = b'{"ref":"refs/heads/main","after":"0123abcd"}'


def github_signature(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_githubs_documented_example_is_accepted() -> None:
    # The test vector from GitHub's "Validating webhook deliveries" documentation.
    signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert verify({"X-Hub-Signature-256": signature}, b"Hello, World!", SECRET) is None


def test_a_correct_github_signature_is_accepted_whatever_the_header_case() -> None:
    for name in ("X-Hub-Signature-256", "x-hub-signature-256", "X-HUB-SIGNATURE-256"):
        assert verify({name: github_signature(BODY)}, BODY, SECRET) is None


@pytest.mark.parametrize(
    ("signature", "body", "expected"),
    [
        (github_signature(BODY, "wrong secret"), BODY, "does not match"),
        (github_signature(BODY), BODY + b" ", "does not match"),
        (github_signature(BODY)[:-2], BODY, "does not match"),
        ("sha256=", BODY, "does not match"),
        (github_signature(BODY).removeprefix("sha256="), BODY, "not of the form"),
        ("sha1=" + hmac.new(SECRET.encode(), BODY, "sha1").hexdigest(), BODY, "not of the form"),
        ("sha256=ünïcode", BODY, "does not match"),
    ],
)
def test_a_wrong_or_malformed_github_signature_is_refused(
    signature: str, body: bytes, expected: str
) -> None:
    reason = verify({"X-Hub-Signature-256": signature}, body, SECRET)
    assert reason is not None
    assert expected in reason


def test_the_gitlab_token_is_accepted_when_it_is_the_secret() -> None:
    assert verify({"x-gitlab-token": SECRET}, BODY, SECRET) is None
    reason = verify({"X-Gitlab-Token": SECRET + "x"}, BODY, SECRET)
    assert reason is not None
    assert "X-Gitlab-Token" in reason


def test_without_either_header_the_request_is_refused() -> None:
    reason = verify({"Content-Type": "application/json"}, BODY, SECRET)
    assert reason == "neither X-Hub-Signature-256 nor X-Gitlab-Token was sent"


def test_githubs_legacy_sha1_header_alone_is_refused_with_a_hint() -> None:
    legacy = "sha1=" + hmac.new(SECRET.encode(), BODY, "sha1").hexdigest()
    reason = verify({"X-Hub-Signature": legacy}, BODY, SECRET)
    assert reason is not None
    assert "X-Hub-Signature-256 is required" in reason


def test_when_both_headers_are_sent_both_must_be_right() -> None:
    good = {"X-Hub-Signature-256": github_signature(BODY), "X-Gitlab-Token": SECRET}
    assert verify(good, BODY, SECRET) is None
    assert verify({**good, "X-Gitlab-Token": "guess"}, BODY, SECRET) is not None
    bad_signature = {**good, "X-Hub-Signature-256": github_signature(BODY, "guess")}
    assert verify(bad_signature, BODY, SECRET) is not None


def test_an_empty_secret_accepts_nothing() -> None:
    assert verify({"X-Gitlab-Token": ""}, BODY, "") == "no webhook secret is configured"
    empty_hmac = github_signature(BODY, "")
    assert verify({"X-Hub-Signature-256": empty_hmac}, BODY, "") is not None


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Hub-Signature-256": github_signature(BODY, "guess")},
        {"X-Hub-Signature-256": "sha256"},
        {"X-Gitlab-Token": SECRET[:-1]},
        {"X-Gitlab-Token": SECRET + SECRET},
    ],
)
def test_a_reason_is_one_line_without_the_secret_or_the_signature(headers: dict[str, str]) -> None:
    reason = verify(headers, BODY, SECRET)
    assert reason is not None
    assert "\n" not in reason
    assert SECRET not in reason
    assert SECRET[:-1] not in reason
    assert github_signature(BODY).removeprefix("sha256=") not in reason
    for value in headers.values():
        if len(value) > 8:  # the values that are secrets or signatures
            assert value.removeprefix("sha256=") not in reason
