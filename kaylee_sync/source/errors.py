"""The source layer's errors: ``SourceError`` and ``SourceUnavailable`` (in ``kaylee_sync.errors``).

GitPython's exceptions never leave ``kaylee_sync.source``; they arrive as one of these,
chained, with a one-line message that went through :func:`~kaylee_sync.secrets.redact`.
An unknown ref is a ``kaylee_sync.errors.NotFoundError``.
"""

from __future__ import annotations

from kaylee_sync.errors import SourceError, SourceUnavailable

__all__ = ["SourceError", "SourceUnavailable"]
