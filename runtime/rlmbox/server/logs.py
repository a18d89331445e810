"""aiohttp's server logger, rerouted through throttled events (``rlmbox.log.Throttled``): a malformed
request, which anyone who can connect may send, would otherwise write a traceback to stderr each time."""

from __future__ import annotations

import logging

import structlog

from rlmbox.log import LOG_INTERVAL_S, Throttled

__all__ = ["AiohttpLogger"]

log = structlog.get_logger(__name__)

MAX_ERROR_CHARS = 200


class AiohttpLogger(logging.Logger):
    """The logger aiohttp's request handler is given. Its warnings and errors (in practice malformed
    requests, which anyone who can connect may send) become ``serve.http_error`` events, throttled per
    message and without tracebacks; its debug messages are dropped."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S) -> None:
        super().__init__("aiohttp.server", logging.WARNING)
        self._interval_s = interval_s
        self._events: dict[str, Throttled] = {}

    def handle(self, record: logging.LogRecord) -> None:
        template = str(record.msg)
        if template not in self._events:
            self._events[template] = Throttled(log.warning, "serve.http_error", self._interval_s)
        exc = record.exc_info[1] if record.exc_info else None
        error = None if exc is None else " ".join(f"{type(exc).__name__}: {exc}".split())[:MAX_ERROR_CHARS]
        self._events[template](message=record.getMessage()[:MAX_ERROR_CHARS], error=error)
