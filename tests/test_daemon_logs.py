"""Log output: the text format people know, one JSON object per line, secrets scrubbed."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kaylee_sync.daemon.logs import (
    RedactingFilter,
    forget_secrets,
    redact,
    register_secret,
    setup_logging,
)
from kaylee_sync.errors import UsageError

log = logging.getLogger("kaylee_sync.test")
TOKEN = "ghp_s3cr3tT0ken9876"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    aps_level = logging.getLogger("apscheduler").level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    logging.getLogger("apscheduler").setLevel(aps_level)
    forget_secrets()


def output(fmt: str, level: str = "info") -> io.StringIO:
    stream = io.StringIO()
    setup_logging(level, fmt, stream=stream)
    return stream


def our_handler() -> logging.Handler:
    return next(h for h in logging.getLogger().handlers if h.get_name() == "kaylee-sync")


# --- text ---------------------------------------------------------------------------------


def test_text_lines_keep_the_format_both_command_lines_always_printed() -> None:
    output("text")
    record = log.makeRecord(
        log.name, logging.WARNING, __file__, 1, "unit %s: %s", ("web", "x"), None
    )
    record.created, record.msecs = 1_700_000_000.25, 250.0
    local = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1_700_000_000))
    expected = f"{local},250 WARNING kaylee_sync.test: unit web: x"
    assert our_handler().format(record) == expected


def test_text_output_goes_to_the_stream_at_the_level_asked() -> None:
    stream = output("text", "warning")
    log.info("not shown")
    log.warning("shown %d", 42)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING kaylee_sync\.test: shown 42", lines[0]
    )


def test_setting_up_twice_replaces_the_handler_instead_of_doubling_lines() -> None:
    output("json")
    stream = output("text")
    log.info("once")
    assert stream.getvalue().count("once") == 1
    assert sum(h.get_name() == "kaylee-sync" for h in logging.getLogger().handlers) == 1


@pytest.mark.parametrize(("level", "fmt"), [("loud", "text"), ("info", "yaml")])
def test_an_unknown_level_or_format_is_a_usage_error(level: str, fmt: str) -> None:
    with pytest.raises(UsageError, match=r"log (level|format)"):
        setup_logging(level, fmt)


def test_level_names_are_case_insensitive_and_apscheduler_ticks_are_quiet() -> None:
    output("text", "INFO")
    assert logging.getLogger().level == logging.INFO
    assert logging.getLogger("apscheduler").getEffectiveLevel() == logging.WARNING
    output("text", "Debug")
    assert logging.getLogger().level == logging.DEBUG
    assert logging.getLogger("apscheduler").getEffectiveLevel() == logging.DEBUG


# --- json ---------------------------------------------------------------------------------


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_is_one_object_per_line_with_time_level_logger_message() -> None:
    stream = output("json")
    before = datetime.now(UTC)
    log.info("first line\nsecond line")
    log.error("unit %s failed", "web")
    records = json_lines(stream)
    assert len(stream.getvalue().splitlines()) == 2
    first, second = records
    assert first["message"] == "first line\nsecond line"
    assert (first["level"], first["logger"]) == ("INFO", "kaylee_sync.test")
    assert (second["level"], second["message"]) == ("ERROR", "unit web failed")
    stamp = str(first["time"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs((parsed - before).total_seconds()) < 5
    assert list(first)[:4] == ["time", "level", "logger", "message"]


def test_json_carries_the_exception_and_extra_fields() -> None:
    stream = output("json")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception(
            "sync failed", extra={"commit": "abc123", "units": 3, "path": Path("/srv/units")}
        )
    (record,) = json_lines(stream)
    assert record["message"] == "sync failed"
    assert "Traceback" in str(record["exception"])
    assert "ValueError: boom" in str(record["exception"])
    assert (record["commit"], record["units"], record["path"]) == ("abc123", 3, "/srv/units")


def test_extra_fields_cannot_override_the_standard_ones() -> None:
    stream = output("json")
    log.warning("real", extra={"level": "fake", "time": "fake", "logger": "fake"})
    (record,) = json_lines(stream)
    assert (record["level"], record["logger"]) == ("WARNING", "kaylee_sync.test")
    assert record["time"] != "fake"


def test_json_includes_the_stack_when_asked() -> None:
    stream = output("json")
    log.info("where am I", stack_info=True)
    (record,) = json_lines(stream)
    assert "test_json_includes_the_stack_when_asked" in str(record["stack"])


# --- redaction ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_registered_secret_never_reaches_the_output(fmt: str) -> None:
    stream = output(fmt)
    register_secret(TOKEN)
    log.info("token is %s", TOKEN)
    log.info(f"inline {TOKEN} too")
    logging.getLogger("git.cmd").warning("third-party logger: %r", {"auth": TOKEN})
    text = stream.getvalue()
    assert TOKEN not in text
    assert text.count("***") == 3


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_url_userinfo_is_scrubbed_from_message_and_arguments(fmt: str) -> None:
    stream = output(fmt)

    class Remote:
        def __str__(self) -> str:
            return "https://deploy:hunter2@git.example.com/team/units.git"

    log.info("fetching %s", Remote())
    log.info("cloning https://oauth2:p@ss@w0rd@gitlab.example.com:8443/x.git failed")
    text = stream.getvalue()
    assert "hunter2" not in text
    assert "w0rd" not in text
    assert "https://***@git.example.com/team/units.git" in text
    assert "https://***@gitlab.example.com:8443/x.git" in text


def test_secrets_are_scrubbed_from_exceptions_and_extras() -> None:
    stream = output("json")
    register_secret(TOKEN)
    try:
        raise RuntimeError(f"auth failed for https://bot:{TOKEN}@git.example.com and {TOKEN}")
    except RuntimeError:
        log.exception("fetch failed", extra={"remote": f"https://x:{TOKEN}@h/r", "n": 1})
    (record,) = json_lines(stream)
    text = json.dumps(record)
    assert TOKEN not in text
    assert "https://***@git.example.com" in str(record["exception"])
    assert record["remote"] == "https://***@h/r"


def test_a_broken_format_string_is_reported_without_the_secret(
    capsys: pytest.CaptureFixture[str],
) -> None:
    output("text")
    register_secret(TOKEN)
    # on a logger of its own: pytest's capture handler on the root would raise instead
    isolated = logging.getLogger("kaylee_sync.test.isolated")
    isolated.addHandler(our_handler())
    isolated.propagate = False
    try:
        isolated.info("count %d", TOKEN)  # logging reports the bad record on stderr
    finally:
        isolated.removeHandler(our_handler())
        isolated.propagate = True
    err = capsys.readouterr().err
    assert "Logging error" in err
    assert TOKEN not in err


def test_redact_leaves_ordinary_text_alone() -> None:
    register_secret(TOKEN)
    for text in (
        "https://example.com/path@v2?who=a@b",
        "git@github.com:team/units.git",
        "mail ops@example.com about https://example.com",
        "",
    ):
        assert redact(text) == text


def test_a_secret_is_also_caught_percent_encoded_and_empty_ones_are_ignored() -> None:
    register_secret("p@ss/word")
    register_secret("")
    assert redact("https://h/x?t=p%40ss%2Fword") == "https://h/x?t=***"
    assert redact("plain p@ss/word") == "plain ***"
    assert redact("nothing to hide") == "nothing to hide"


def test_the_filter_works_on_any_handler() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    other = logging.getLogger("kaylee_sync.test.other")
    other.addHandler(handler)
    other.propagate = False
    try:
        other.warning("remote %s", "ssh://user:pw@host/repo")
    finally:
        other.removeHandler(handler)
        other.propagate = True
    assert stream.getvalue() == "remote ssh://***@host/repo\n"


def test_secrets_registered_by_the_source_layer_are_scrubbed_too() -> None:
    from kaylee_sync.source import credentials

    stream = output("text")
    credentials.register_secret("glpat-fromGitOptions42")
    log.info(
        "remote https://oauth2:glpat-fromGitOptions42@gl.example.com said glpat-fromGitOptions42"
    )
    text = stream.getvalue()
    assert "glpat-fromGitOptions42" not in text
    assert "https://***@gl.example.com said ***" in text


def test_a_secret_registered_here_is_hidden_by_the_source_layer_too() -> None:
    from kaylee_sync.source import redact as source_redact

    register_secret("whsec-registeredForLogs7")
    assert "whsec-registeredForLogs7" not in source_redact("bad secret whsec-registeredForLogs7")
