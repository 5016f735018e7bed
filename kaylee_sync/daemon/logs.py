"""Log output for people (text) and for log pipelines (JSON), with secrets scrubbed.

``setup_logging(level, "text")`` keeps the format both command lines have always
printed (``2024-05-01 12:00:00,123 INFO kaylee_sync.x: message``); ``"json"`` writes one
object per line — ``time`` (RFC 3339, UTC), ``level``, ``logger``, ``message``, then
``exception``/``stack`` when present and any ``extra={…}`` fields — for journald or a
log shipper to index.

Error messages are written not to contain credentials, but a log line can still quote
something that does: a remote URL with a token in its userinfo, an exception from a
library that echoes its arguments. :class:`RedactingFilter`, installed on the handler,
is the last line of defence: it rewrites every record (message, arguments, exception
text, stack, string extras) so that URL userinfo becomes ``***`` and every secret
registered at runtime (:func:`register_secret`: the webhook secret, a Git token, the
etcd password) is replaced, whatever logger or library emitted it.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

from kaylee_sync.errors import UsageError
from kaylee_sync.secrets import forget_secrets, redact, register_secret

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
FORMATS = ("text", "json")
MASK = "***"

# the secret registry lives in kaylee_sync.secrets; re-exported for the daemon's callers
__all__ = [
    "JsonFormatter",
    "RedactingFilter",
    "forget_secrets",
    "redact",
    "register_secret",
    "setup_logging",
]

# attributes every LogRecord has; anything else on a record came from ``extra``
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class RedactingFilter(logging.Filter):
    """Rewrites each record in place so that no handler after it sees a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            # A broken format string: scrub the parts; the handler reports the error.
            record.msg = redact(str(record.msg))
            if isinstance(record.args, tuple):
                record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
            return True
        # The message is rendered once here, so an argument whose str() holds a secret
        # (an exception, a URL object) is scrubbed too; the arguments are then spent.
        record.msg, record.args = redact(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _RECORD_ATTRS and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.fromtimestamp(record.created, tz=UTC)
        out: dict[str, Any] = {
            "time": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            # extras never override the fields above
            if key not in _RECORD_ATTRS and key not in out:
                out[key] = value
        return json.dumps(out, ensure_ascii=False, default=str)


def setup_logging(level: str = "info", fmt: str = "text", *, stream: IO[str] | None = None) -> None:
    """Send the root logger to ``stream`` (stderr) at ``level`` in ``fmt``; idempotent."""
    numeric = LEVELS.get(level.lower())
    if numeric is None:
        raise UsageError(f"log level {level!r}: expected one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise UsageError(f"log format {fmt!r}: expected one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RedactingFilter())
    handler.set_name("kaylee-sync")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "kaylee-sync"]:
        root.removeHandler(old)  # called again (tests, a reload): replace, never duplicate
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    # APScheduler logs every poll tick at INFO ("Running job …"): noise unless debugging.
    logging.getLogger("apscheduler").setLevel(
        logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING
    )
