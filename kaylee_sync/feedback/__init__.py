"""Feedback: commit statuses on the Git host and webhook notifications, sent off the hot path.

:class:`Feedback` is the daemon's whole interface: it is told each sync result and each
scheduler pass, judges what changed, and queues HTTP deliveries in bounded outboxes
served by threads of their own, so a slow or dead receiver never delays sync or
scheduling. It knows nothing of the daemon, etcd or git; httpx stays inside ``outbox``.
"""

from kaylee_sync.feedback.commitstatus import PROVIDERS, CommitState, StatusSettings
from kaylee_sync.feedback.outbox import OutboxSettings
from kaylee_sync.feedback.reporter import Feedback, FeedbackSettings
from kaylee_sync.feedback.webhook import PHASES, SIGNATURE_HEADER, WebhookSettings, signature

__all__ = [
    "PHASES",
    "PROVIDERS",
    "SIGNATURE_HEADER",
    "CommitState",
    "Feedback",
    "FeedbackSettings",
    "OutboxSettings",
    "StatusSettings",
    "WebhookSettings",
    "signature",
]
