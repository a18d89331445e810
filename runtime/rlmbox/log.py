"""Logging: structlog to stderr, readable on a terminal and JSON lines elsewhere, secrets redacted.

The CLI calls ``configure_logging``. Library entry points call ``ensure_logging``, which configures a quiet
default (warnings and errors only) unless the application has configured structlog itself.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

__all__ = ["LOG_INTERVAL_S", "Throttled", "configure_logging", "ensure_logging", "redact", "redact_secrets"]

_SECRET_KEY = re.compile(
    r"(api_?key|token|secret|password|passwd|authorization|credential|cookie)", re.IGNORECASE
)
_SECRET_VALUE = re.compile(r"\b(sk-[A-Za-z0-9_\-]{8,}|Bearer\s+[A-Za-z0-9._\-]{8,})")
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


def redact(value: Any) -> Any:
    """A copy of ``value`` with secrets masked: values under secret-looking keys (at any depth),
    key-shaped strings, and credentials in URLs."""
    if isinstance(value, dict):
        return {
            k: "***" if _SECRET_KEY.search(str(k)) and v is not None else redact(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return _URL_CREDENTIALS.sub("***@", _SECRET_VALUE.sub("***", value))
    return value


def redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor applying ``redact`` to every field of the event."""
    return redact(dict(event))


def configure_logging(level: int = logging.WARNING, *, json_output: bool | None = None) -> None:
    """Configure structlog for the process: stderr, ``level`` and up, JSON unless stderr is a terminal."""
    if json_output is None:
        json_output = not sys.stderr.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def ensure_logging() -> None:
    """Give library use a quiet default unless the application configured structlog already."""
    if not structlog.is_configured():
        configure_logging(logging.WARNING)


# Events an outsider can repeat at will (a sandbox, a client) are written at most once per interval.
LOG_INTERVAL_S = 10.0


class Throttled:
    """One log event, written at most once per ``interval_s``; each write carries ``suppressed``, the number
    of calls held back since the previous write."""

    def __init__(self, emit: Callable[..., Any], event: str, interval_s: float = LOG_INTERVAL_S) -> None:
        self._emit = emit
        self.event = event
        self.interval_s = interval_s
        self.suppressed = 0
        self._last: float | None = None

    def __call__(self, **fields: Any) -> None:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval_s:
            self.suppressed += 1
            return
        self._emit(self.event, suppressed=self.suppressed, **fields)
        self._last, self.suppressed = now, 0

    def reset(self) -> None:
        """The condition ended: the next call writes at once."""
        self._last, self.suppressed = None, 0
