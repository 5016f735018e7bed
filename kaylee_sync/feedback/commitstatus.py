"""Commit statuses on the Git host: what this cluster made of each commit, on the commit.

Each cluster posts under its own context, ``kaylee/<cluster>``, so that several clusters
following one repository show side by side instead of overwriting each other (the
trouble with one shared context). A commit's status is posted only when its state
changes — pending → synced → rolled out, or failed — never again at every poll, so the
host's API rate limit and the commit's status list stay small; the outbox spaces the
posts further (``--commit-status-rate``).

The three hosts differ only in URL, auth header and state names, so they are rows of a
table (:data:`PROVIDERS`), not classes. The token is sent in a header and never appears
in a URL, a log line or an error.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import quote

from kaylee_sync.errors import UsageError
from kaylee_sync.feedback.outbox import Delivery, Outbox
from kaylee_sync.secrets import register_secret

log = logging.getLogger(__name__)

_MEMO = 1000  # commits whose last state is remembered (a few days of busy pushing)
_DESCRIPTION_CHARS = 140  # GitHub's limit; Gitea and GitLab accept it too


class CommitState(StrEnum):
    PENDING = "pending"  # seen, not in etcd yet (a sync is under way or was held back)
    SYNCED = "synced"  # in etcd; the scheduler is rolling it out
    ROLLED_OUT = "rolled-out"  # every unit it changed runs the new spec
    FAILED = "failed"  # refused (signature, invalid files, prune guard) or rollout failed


_FINAL = frozenset({CommitState.ROLLED_OUT, CommitState.FAILED})


@dataclass(frozen=True)
class Provider:
    default_api: str | None  # None: the host is self-hosted, --commit-status-url is needed
    path: str  # after the API base; {repo} and {sha} are filled in
    states: dict[CommitState, str]  # our state → the host's
    context_field: str  # what the host calls the context
    quote_repo: bool = False  # GitLab wants the project path URL-encoded as one segment

    def auth(self, token: str) -> dict[str, str]:
        if self.context_field == "name":
            return {"PRIVATE-TOKEN": token}
        return {"Authorization": f"{'Bearer' if self.default_api else 'token'} {token}"}


_GITHUB_STATES = {
    CommitState.PENDING: "pending",
    CommitState.SYNCED: "pending",  # GitHub has no "running": the description tells
    CommitState.ROLLED_OUT: "success",
    CommitState.FAILED: "failure",
}
PROVIDERS = {
    "github": Provider("https://api.github.com", "/repos/{repo}/statuses/{sha}",
                       _GITHUB_STATES, "context"),
    "gitea": Provider(None, "/api/v1/repos/{repo}/statuses/{sha}", _GITHUB_STATES, "context"),
    "gitlab": Provider(
        "https://gitlab.com",
        "/api/v4/projects/{repo}/statuses/{sha}",
        {
            CommitState.PENDING: "pending",
            CommitState.SYNCED: "running",
            CommitState.ROLLED_OUT: "success",
            CommitState.FAILED: "failed",
        },
        "name",
        quote_repo=True,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class StatusSettings:
    """Where this cluster posts its commit statuses (``--commit-status …``)."""

    provider: str
    """``github``, ``gitea`` or ``gitlab``."""
    repo: str
    """``owner/name`` (GitLab: the project's path, ``group/sub/project``, or its id)."""
    cluster: str
    """The cluster's name; the context is ``kaylee/<cluster>``."""
    token: str = field(repr=False)
    """API token (read from a file). Never logged."""
    api_url: str | None = None
    """API base: GitHub Enterprise ``https://host/api/v3``, GitLab or Gitea ``https://host``."""
    target_url: str | None = None
    """Link shown with the status (a dashboard), if any."""

    def __post_init__(self) -> None:
        register_secret(self.token)
        provider = PROVIDERS.get(self.provider)
        if provider is None:
            raise UsageError(
                f"--commit-status {self.provider}: expected one of {sorted(PROVIDERS)}"
            )
        if provider.default_api is None and not self.api_url:
            raise UsageError(f"--commit-status {self.provider} needs --commit-status-url")
        if self.api_url and not self.api_url.startswith(("https://", "http://")):
            raise UsageError(f"--commit-status-url {self.api_url}: expected an http(s) URL")
        if not self.repo or self.repo.startswith("/") or ".." in self.repo.split("/"):
            raise UsageError(f"--commit-status-repo {self.repo!r}: expected owner/name")
        if not self.cluster or any(c.isspace() for c in self.cluster):
            raise UsageError("--cluster-name must be a non-empty word (it names the context)")

    @property
    def context(self) -> str:
        return f"kaylee/{self.cluster}"


class CommitStatuses:
    """Posts a commit's state when it changes; the posting itself is the outbox's."""

    def __init__(self, settings: StatusSettings, outbox: Outbox) -> None:
        self.settings = settings
        self.outbox = outbox
        self._provider = PROVIDERS[settings.provider]
        self._last: OrderedDict[str, CommitState] = OrderedDict()

    def set(self, commit: str, state: CommitState, description: str) -> bool:
        """Post ``state`` for ``commit`` unless it already has it; True if queued.

        A final state (rolled out, failed) is not taken back to pending or synced by a
        later look at the same commit; it may turn into the other final state (a failed
        rollout that fleet later completes).
        """
        if not commit:
            return False
        old = self._last.get(commit)
        if old == state or (old in _FINAL and state not in _FINAL):
            return False
        self._last[commit] = state
        self._last.move_to_end(commit)
        while len(self._last) > _MEMO:
            self._last.popitem(last=False)
        self.outbox.put(self._delivery(commit, state, description))
        return True

    def _delivery(self, commit: str, state: CommitState, description: str) -> Delivery:
        s, p = self.settings, self._provider
        repo = quote(s.repo, safe="") if p.quote_repo else s.repo
        base = (s.api_url or p.default_api or "").rstrip("/")
        body: dict[str, str] = {
            "state": p.states[state],
            p.context_field: s.context,
            "description": description[:_DESCRIPTION_CHARS],
        }
        if s.target_url:
            body["target_url"] = s.target_url
        return Delivery(
            what=f"status {state.value} of {commit[:12]} ({s.context})",
            method="POST",
            url=base + p.path.format(repo=repo, sha=commit),
            body=json.dumps(body).encode(),
            headers={
                **p.auth(s.token),
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": "kaylee-sync",
            },
        )
