"""Reading input the agent does not control: files named in configs, JSON from the network.

Three small contracts shared by the config loader, the API and the CLI, so that each surface
refuses hostile input the same way instead of growing its own almost-equal copy:

* `read_small_file` reads a regular file up to a size limit. It never blocks: a FIFO, a
  device (`/dev/zero`, a tty) or a socket is refused before anything is read, because the open
  itself is non-blocking and the type is checked on the open descriptor (no race with a
  rename between a check and the open).
* `loads_json` parses JSON of bounded size and nesting depth. The depth is checked by a scan
  before `json.loads`, whose recursion would otherwise end in a RecursionError (an uncaught
  exception, not a ValueError) at about 1,000 levels. NaN and infinities are refused.
* `escape` makes any text safe to print on one line: control characters, line and paragraph
  separators and lone surrogates (undecodable bytes of a file name) become escapes.

Errors are `UntrustedInputError` (a ValueError) with a message that is already escaped.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

MAX_SHOWN_CHARS = 120


class UntrustedInputError(ValueError):
    """Input that cannot be accepted; `str()` is one printable line, and `reason` the same
    without the name of the file (for callers that name it themselves)."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = message if reason is None else reason


def escape(text: str, limit: int | None = None) -> str:
    """`text` with every character that is not printable on one line replaced by a Python
    escape (\\n, \\x00, \\u2028, \\udcff ...); cut to `limit` characters (then "...")."""
    out = []
    for ch in text:
        if ch.isprintable() or ch == " ":
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
    shown = "".join(out)
    if limit is not None and len(shown) > limit:
        shown = shown[: max(0, limit - 3)] + "..."
    return shown


def show(value: object, limit: int = MAX_SHOWN_CHARS) -> str:
    """A short, printable rendering of a value a user gave (for error messages)."""
    text = repr(value) if isinstance(value, str) else str(value)
    return escape(text, limit)


def read_small_file(path: Path | str, limit_bytes: int) -> bytes:
    """The content of the regular file `path`, at most `limit_bytes` long.

    Raises `UntrustedInputError` for anything else: a missing or unreadable file, a
    directory, a FIFO, a device, a socket, a file above the limit, a path with a NUL byte or
    one too long for the system. Never blocks on the file's type.
    """
    shown = escape(str(path), 300)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise UntrustedInputError(f"cannot read {shown}: {why}", why) from None
    except ValueError:
        why = "the path holds a NUL byte"
        raise UntrustedInputError(f"cannot read {shown}: {why}", why) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            why = "not a regular file"
            raise UntrustedInputError(f"cannot read {shown}: {why}", why)
        if st.st_size > limit_bytes:
            why = f"larger than {limit_bytes} bytes ({st.st_size})"
            raise UntrustedInputError(f"cannot read {shown}: {why}", why)
        chunks = []
        left = limit_bytes + 1  # one byte more tells a file that grew past the limit
        while left > 0:
            chunk = os.read(fd, min(left, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise UntrustedInputError(f"cannot read {shown}: {why}", why) from None
    finally:
        os.close(fd)
    if len(data) > limit_bytes:
        why = f"larger than {limit_bytes} bytes"
        raise UntrustedInputError(f"cannot read {shown}: {why}", why)
    return data


def read_small_text(path: Path | str, limit_bytes: int) -> str:
    """`read_small_file` decoded as UTF-8 (strictly: a binary file is an error)."""
    data = read_small_file(path, limit_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        why = f"not UTF-8 text (byte {exc.start})"
        raise UntrustedInputError(f"{escape(str(path), 300)}: {why}", why) from None


_JSON_STRING_RE = re.compile(rb'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_BRACKET_RE = re.compile(rb"[\[\]{}]")


def json_depth(text: str | bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text (strings are skipped; the
    text need not be valid JSON)."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if data.count(b"[") + data.count(b"{") <= 1:
        return data.count(b"[") + data.count(b"{")
    depth = deepest = 0
    for match in _BRACKET_RE.finditer(_JSON_STRING_RE.sub(b"", data)):
        if match.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def loads_json(data: bytes | str, *, max_bytes: int, max_depth: int) -> Any:
    """Parse a JSON document from an untrusted source.

    Raises `UntrustedInputError` when it is longer than `max_bytes`, nested deeper than
    `max_depth`, not UTF-8, not JSON, or holds NaN or an infinity.
    """
    size = len(data.encode("utf-8", "surrogatepass")) if isinstance(data, str) else len(data)
    if size > max_bytes:
        raise UntrustedInputError(f"JSON document larger than {max_bytes} bytes")
    if json_depth(data) > max_depth:
        raise UntrustedInputError(f"JSON nested deeper than {max_depth} levels")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UntrustedInputError("JSON document is not UTF-8") from None
    try:
        return json.loads(data, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise UntrustedInputError(f"not valid JSON: {escape(str(exc), 200)}") from None
