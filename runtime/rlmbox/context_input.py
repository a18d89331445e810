"""Reading a context from a file or standard input, with clear errors for what cannot be used."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rlmbox._exceptions import ConfigError

__all__ = ["load_context"]


def load_context(source: str | Path) -> Any:
    """Read a context: ``-`` is standard input; a ``.json`` file gives its value; anything else is text.

    Raises ConfigError for a missing, unreadable, non-UTF-8 or malformed-JSON input.
    """
    name = "standard input" if str(source) == "-" else str(source)
    try:
        raw = sys.stdin.buffer.read() if str(source) == "-" else Path(source).read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"context file {name} does not exist") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"context path {name} is a directory, not a file") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read context file {name}: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"context {name} is not valid UTF-8 (first bad byte at offset {exc.start})"
        ) from exc
    if str(source).endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"context {name} is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
    return text
