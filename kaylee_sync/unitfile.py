"""fleet's unit-file format: go-systemd's parser, fleet's serializer and the unit hash.

fleet names every unit body by ``sha1(serialize(parse(text)))`` and its agents re-parse
the stored text, so a unit we write is only recognised (and adopted rather than restarted)
if our parse and serialize agree with go-systemd's byte for byte. That is why this module
re-states its lexer so literally, quirks included: a comment ending in ``\\`` swallows the
next line, a section name runs to the next ``]`` even across lines, values keep their
``\\`` continuations, and over-long lines are detected the way ``bufio.Reader`` sees them.
The rules themselves are written down in fleet-registry.md ("The unit hash").
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from kaylee_sync.errors import KayleeError

# Go's strings.TrimSpace / unicode.IsSpace set (Unicode White_Space). Python's str.strip()
# would also strip \x1c-\x1f, which Go keeps.
GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_GO_SPACE_SET = frozenset(GO_SPACE)

LINE_MAX = 2048  # go-systemd's SYSTEMD_LINE_MAX
_BUFSIZE = 4096  # bufio.NewReader's default buffer, which decides when the check runs


@dataclass(frozen=True)
class UnitOption:
    """One ``Name=Value`` line of a section, as fleet's API and registry carry it."""

    section: str
    name: str
    value: str


class UnitFileError(KayleeError, ValueError):
    """A unit file go-systemd would refuse to parse; the message gives its reason."""


def go_trim(s: str) -> str:
    """Go's ``strings.TrimSpace``."""
    return s.strip(GO_SPACE)


class _Lexer:
    """go-systemd's ``unit/deserialize.go`` state machine over UTF-8 bytes.

    The source is read through a model of Go's ``bufio.Reader``: ``_end`` is where the
    buffered data stops. Only that matters, because the line-length check runs before each
    lexer step and only when at least LINE_MAX bytes are buffered — the exact moment Go
    would notice a long line depends on how the buffer happened to be filled.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0
        self._end = 0
        self._last_size = 0
        self.options: list[UnitOption] = []

    # -- bufio.Reader model ---------------------------------------------------------

    def _fill(self) -> None:
        # fill() slides the unread bytes to the front and reads until the buffer is full
        # (a bytes/strings reader hands over as much as fits).
        self._end = min(self._pos + _BUFSIZE, len(self._data))

    def _check_line_length(self) -> None:
        if self._end - self._pos >= LINE_MAX:
            peek = self._data[self._pos : self._pos + LINE_MAX]
            if b"\n" not in peek and b"\r" not in peek:
                raise UnitFileError(f"line too long (max {LINE_MAX} bytes)")

    def _read_rune(self) -> str | None:
        """The next character, or None at EOF; an invalid byte reads as U+FFFD."""
        # ReadRune refills only when the buffer cannot hold a whole rune any more.
        short = self._end - self._pos < 4 and not _full_rune(self._data[self._pos : self._end])
        if short and self._end < len(self._data):
            self._fill()
        if self._pos >= self._end:
            return None
        char, self._last_size = _decode_rune(self._data, self._pos, self._end)
        self._pos += self._last_size
        return char

    def _unread_rune(self) -> None:
        self._pos -= self._last_size

    def _read_until(self, delim: int) -> tuple[bytes, bool]:
        """``ReadBytes(delim)``: the bytes up to and including delim, and whether EOF hit."""
        start = self._pos
        while True:
            found = self._data.find(delim, self._pos, self._end)
            if found >= 0:
                self._pos = found + 1
                return self._data[start : self._pos], False
            if self._end >= len(self._data):
                self._pos = self._end
                return self._data[start : self._pos], True
            if self._end - self._pos >= _BUFSIZE:
                self._pos = self._end  # a full buffer is taken as a fragment first
            self._fill()

    def _to_eol(self) -> tuple[bytes, bool]:
        line, eof = self._read_until(ord("\n"))
        # Go trims "\r" first and then "\n", so a CRLF line keeps its "\r" here.
        line = line.removesuffix(b"\r").removesuffix(b"\n")
        return line, eof

    # -- the lexer steps ------------------------------------------------------------

    def run(self) -> None:
        section: str | None = None  # None: before the first section header
        while True:
            self._check_line_length()
            char = self._read_rune()
            if char is None:
                return
            if section is not None and char in _GO_SPACE_SET:
                continue
            if char == "[":
                section = self._section_header()
            elif char in "#;":
                self._check_line_length()
                self._ignore_line()
            elif section is not None:
                self._unread_rune()
                self._option(section)
            # Before the first "[" anything else is skipped, one character at a time.

    def _section_header(self) -> str:
        self._check_line_length()
        raw, eof = self._read_until(ord("]"))
        if eof:
            raise UnitFileError("unable to find end of section")
        name = _decode(raw[:-1])
        self._check_line_length()
        garbage, _ = self._to_eol()
        garbage_text = go_trim(_decode(garbage))
        if garbage_text:
            listed = " ".join(str(b) for b in garbage_text.encode("utf-8", "surrogatepass"))
            raise UnitFileError(f"found garbage after section name : [{listed}]")
        return name

    def _ignore_line(self) -> None:
        while True:
            line, _ = self._to_eol()
            # Only one trailing space is forgiven before a continuation backslash.
            if not line.removesuffix(b" ").endswith(b"\\"):
                return

    def _option(self, section: str) -> None:
        self._check_line_length()
        name_chars: list[str] = []
        while True:
            char = self._read_rune()
            if char is None:
                raise UnitFileError("EOF")
            if char in "\r\n":
                raise UnitFileError("unexpected newline encountered while parsing option name")
            if char == "=":
                break
            name_chars.append(char)
        value = bytearray()
        while True:
            self._check_line_length()
            line, eof = self._to_eol()
            if not go_trim(_decode(line)):
                break  # a blank line ends a continued value and is dropped
            value += line
            if not line.endswith(b"\\"):
                break
            if not eof:
                value += b"\n"
        text = _decode(bytes(value))
        # go-systemd puts back one "\n" when the value ended in a continuation newline.
        text = go_trim(text) + "\n" if text.endswith("\n") else go_trim(text)
        self.options.append(UnitOption(section, go_trim("".join(name_chars)), text))


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


def _rune_length(lead: int) -> int:
    """Bytes a UTF-8 sequence starting with ``lead`` needs; 0 for an invalid lead byte."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


def _full_rune(buf: bytes) -> bool:
    """``utf8.FullRune``: does buf start with a complete (or certainly invalid) rune?"""
    if not buf:
        return False
    need = _rune_length(buf[0])
    if need == 0 or len(buf) >= need:
        return True
    return len(buf) >= 2 and not 0x80 <= buf[1] <= 0xBF


def _decode_rune(data: bytes, pos: int, end: int) -> tuple[str, int]:
    need = _rune_length(data[pos])
    if need and pos + need <= end:
        try:
            return data[pos : pos + need].decode("utf-8"), need
        except UnicodeDecodeError:
            pass
    return "\ufffd", 1


def parse(text: str) -> tuple[UnitOption, ...]:
    """The options of a unit file, as go-systemd's ``unit.Deserialize`` reads them."""
    lexer = _Lexer(text.encode("utf-8", "surrogatepass"))
    lexer.run()
    return tuple(lexer.options)


def serialize(options: Iterable[UnitOption]) -> str:
    """fleet's unit text: sections in order of first appearance, one blank line between."""
    sections: dict[str, list[UnitOption]] = {}
    for option in options:
        sections.setdefault(option.section, []).append(option)
    return "\n".join(
        f"[{section}]\n" + "".join(f"{o.name}={o.value}\n" for o in opts)
        for section, opts in sections.items()
    )


def unit_hash(options: Iterable[UnitOption]) -> str:
    """fleet's unit hash: the SHA-1 hex that keys ``unit/<hash>`` in its registry."""
    return hashlib.sha1(serialize(options).encode("utf-8", "surrogatepass")).hexdigest()


def canonical(text: str) -> str:
    """The text fleet stores for a submitted unit file (``Raw``)."""
    return serialize(parse(text))


def text_hash(text: str) -> str:
    """The hash fleet gives a unit file submitted as text (``fleetctl submit``)."""
    return unit_hash(parse(text))


def value_problem(value: str) -> str | None:
    """Why ``value`` would not come back unchanged from a serialize/parse round trip.

    fleet's agents re-parse the stored text, so such a value would hash differently on
    the agents than in the registry (or worse, inject further directives).
    """
    for char, label in (("\n", "a newline"), ("\r", "a carriage return"), ("\0", "a NUL")):
        if char in value:
            return f"contains {label}"
    if value != go_trim(value):
        return "has leading or trailing whitespace"
    if value.endswith("\\"):
        return "ends with a backslash (a line continuation)"
    return None


def option_problems(options: Iterable[UnitOption]) -> tuple[str, ...]:
    """Why fleet's agents would not read these options back as given (empty: they would).

    Besides each value's own problems, a line of LINE_MAX bytes or more may be refused by
    go-systemd (whether it is depends on where the line falls in its read buffer) and is
    truncated by systemd, so it is reported too.
    """
    problems = []
    for option in options:
        where = f"[{option.section}] {option.name}"
        reason = value_problem(option.value)
        if reason is not None:
            problems.append(f"{where}: value {reason}")
        line = f"{option.name}={option.value}".encode("utf-8", "surrogatepass")
        if len(line) >= LINE_MAX:
            problems.append(f"{where}: line is {len(line)} bytes (max {LINE_MAX - 1})")
    return tuple(problems)
