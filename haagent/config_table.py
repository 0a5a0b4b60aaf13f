"""Reading a TOML config table strictly: the `ConfigError` every problem raises and the
`Table` that reads typed values and reports unknown keys. Shared by haagent.config (nodes,
timing, local settings) and haagent.config_guests (guests)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from haagent.untrusted import escape, show

# Matched in full (re.fullmatch): `$` would also accept a trailing newline.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# Linux: PATH_MAX counts the NUL, NAME_MAX is per component.
MAX_PATH_BYTES = 4095
MAX_NAME_BYTES = 255
MIN_SECONDS = 0.001
MAX_SECONDS = 365 * 24 * 3600.0
MAX_COUNT = 1000


class ConfigError(ValueError):
    """An invalid config file. `str()` reads "FILE: KEY: what is wrong", on one line: control
    characters anywhere in it (the file name, a quoted TOML key, a value) are escaped."""

    def __init__(self, file: Path | str, key: str, message: str) -> None:
        text = f"{file}: {key}: {message}" if key else f"{file}: {message}"
        super().__init__(escape(text))
        self.file = str(file)
        self.key = key
        self.message = message


class Table:
    """A TOML table being read; remembers which keys were used so leftovers are reported."""

    def __init__(self, file: Path, prefix: str, data: Any) -> None:
        self.file = file
        self.prefix = prefix
        if not isinstance(data, dict):
            raise ConfigError(file, prefix, "must be a table")
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.file, self.key(name), message)

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str) -> Any:
        self.used.add(name)
        return self.data.get(name)

    def table(self, name: str, required: bool = False) -> Table:
        if name not in self.data:
            if required:
                raise self.error(name, "missing (required section)")
            return Table(self.file, self.key(name), {})
        return Table(self.file, self.key(name), self.raw(name))

    def string(self, name: str, default: str | None = None, *, required: bool = False) -> str:
        value = self.raw(name)
        if value is None:
            if required or default is None:
                raise self.error(name, "missing (required)")
            return default
        if not isinstance(value, str):
            raise self.error(name, f"must be a string, got {kind(value)}")
        return value

    def number(self, name: str, default: float, *, maximum: float = MAX_SECONDS) -> float:
        """A number of seconds: finite, at least MIN_SECONDS (a smaller period would spin the
        loop), at most `maximum`."""
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(name, f"must be a number of seconds, got {kind(value)}")
        if not math.isfinite(value):
            raise self.error(name, f"must be a finite number of seconds, got {value}")
        if not MIN_SECONDS <= value <= maximum:
            raise self.error(
                name, f"must be between {MIN_SECONDS:g} and {maximum:g}, got {show(value, 40)}"
            )
        return float(value)

    def integer(
        self,
        name: str,
        default: int | None = None,
        *,
        minimum: int = 0,
        maximum: int = MAX_COUNT,
    ) -> int:
        value = self.raw(name)
        if value is None:
            if default is None:
                raise self.error(name, "missing (required)")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"must be an integer, got {kind(value)}")
        if not minimum <= value <= maximum:
            raise self.error(
                name, f"must be between {minimum} and {maximum}, got {show(value, 40)}"
            )
        return value

    def names(self, name: str) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(name, "must be a list of node names")
        return tuple(value)

    def path(self, name: str, base: Path, default: str | None = None) -> Path:
        """A file system path, relative to the config's folder unless absolute."""
        value = self.string(name, default)
        problem = path_problem(value)
        if problem:
            raise self.error(name, problem)
        joined = base / value
        if len(str(joined).encode()) > MAX_PATH_BYTES:
            raise self.error(name, f"the path is longer than {MAX_PATH_BYTES} bytes")
        return joined

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.error(unknown[0], "unknown key (check the spelling; see the README)")


def kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def path_problem(value: str) -> str | None:
    """Why `value` cannot name a file on this system, or None."""
    if not value:
        return "must not be empty"
    if any(not ch.isprintable() for ch in value):
        return f"must not contain control characters, got {show(value)}"
    encoded = value.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_PATH_BYTES:
        return f"the path is longer than {MAX_PATH_BYTES} bytes"
    if any(len(part) > MAX_NAME_BYTES for part in encoded.split(b"/")):
        return f"a path component is longer than {MAX_NAME_BYTES} bytes"
    return None


def check_name(t: Table, key: str, value: str, what: str) -> None:
    if not NAME_RE.fullmatch(value):
        raise t.error(key, f"{what} {show(value)} must match {NAME_RE.pattern}")
