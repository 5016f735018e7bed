"""Webhook notifications: one JSON document per event, POSTed to ``--notify-url``.

Generic on purpose — a chat bridge, an alert manager or a script can take it — so the
payload is flat and stable::

    {"cluster": "prod-eu", "phase": "rollout-failed", "unit": "web",
     "commit": "<sha>", "from": "<sha>", "to": "<sha>", "reason": "…",
     "time": 1733300000.0, "delivery": "<uuid>"}

``phase`` is one of :data:`PHASES`; ``unit`` is "" for events about the whole commit.
With a secret, ``X-Kaylee-Signature-256: sha256=<hex HMAC-SHA256 of the body>`` lets
the receiver check the sender (the same scheme as GitHub's webhooks, so existing
verification code fits). Delivery is at-least-once: a receiver drops repeats by the
``delivery`` id, which is also sent as ``X-Kaylee-Delivery``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from kaylee_sync.errors import UsageError
from kaylee_sync.feedback.outbox import Delivery, Outbox
from kaylee_sync.secrets import register_secret

SIGNATURE_HEADER = "X-Kaylee-Signature-256"
PHASES = (
    "sync-failed",
    "commit-refused",
    "invalid-file",
    "prune-refused",
    "rollout-started",
    "rollout-done",
    "rollout-failed",
    "rollout-reverted",
    "suspension-expired",
)


@dataclass(frozen=True)
class Event:
    phase: str
    reason: str
    unit: str = ""
    commit: str = ""
    from_commit: str = ""
    to_commit: str = ""


@dataclass(frozen=True)
class WebhookSettings:
    url: str
    """Where events are POSTed (http or https)."""
    cluster: str
    """The cluster's name, sent with every event."""
    secret: str | None = field(default=None, repr=False)
    """HMAC-SHA256 key for the signature header; None: unsigned."""

    def __post_init__(self) -> None:
        register_secret(self.secret)
        if not self.url.startswith(("https://", "http://")):
            raise UsageError(f"--notify-url {self.url}: expected an http(s) URL")


def signature(secret: str, body: bytes) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Webhook:
    def __init__(
        self, settings: WebhookSettings, outbox: Outbox, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.outbox = outbox
        self.clock = clock

    def send(self, event: Event) -> None:
        if event.phase not in PHASES:
            raise ValueError(f"unknown notification phase {event.phase!r}")
        delivery = str(uuid.uuid4())
        doc = {
            "cluster": self.settings.cluster,
            "phase": event.phase,
            "unit": event.unit,
            "commit": event.commit,
            "from": event.from_commit,
            "to": event.to_commit,
            "reason": event.reason,
            "time": self.clock(),
            "delivery": delivery,
        }
        body = json.dumps(doc, sort_keys=True).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "kaylee-sync",
            "X-Kaylee-Event": event.phase,
            "X-Kaylee-Delivery": delivery,
        }
        if self.settings.secret:
            headers[SIGNATURE_HEADER] = signature(self.settings.secret, body)
        what = f"{event.phase} {event.unit or event.commit[:12]}".strip()
        self.outbox.put(Delivery(what, "POST", self.settings.url, body, headers))
