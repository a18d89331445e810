"""``rlmbox serve``: the OpenAI-compatible service (``app.py``) and its request and response shapes
(``schema.py``), behind the server's own accept loop (``listener.py``) and bounded logs (``logs.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from aiohttp import web

from rlmbox.config import Settings
from rlmbox.server.app import RLMService, ServeOptions
from rlmbox.server.listener import ConnectionGate, Listener, raise_fd_limit
from rlmbox.server.logs import AiohttpLogger

__all__ = ["RLMService", "ServeOptions", "serve"]

log = structlog.get_logger(__name__)

# Descriptors the process needs besides pending connections (its own files, Docker, model clients).
FD_HEADROOM = 64


async def serve(
    settings: Settings, options: ServeOptions, host: str, port: int, ready: Callable[[str], None]
) -> None:
    """Serve until cancelled (Ctrl-C, SIGTERM); ``ready`` gets the base URL once requests are accepted.
    A handler whose client disconnects is cancelled, and with it the client's run."""
    soft, hard = raise_fd_limit()
    log.info("serve.fd_limit", soft=soft, hard=hard)
    if soft < options.max_pending + FD_HEADROOM:
        log.warning("serve.fd_limit_low", soft=soft, max_pending=options.max_pending)
    gate = ConnectionGate(options.max_pending)
    runner = web.AppRunner(
        RLMService(settings, options, gate).app(),
        handler_cancellation=True,
        access_log=None,
        # aiohttp arms this timer when a connection is made and again after each response, and closes the
        # connection if it fires before the next request's headers are complete: the header timeout.
        keepalive_timeout=options.header_timeout_s,
        logger=AiohttpLogger(),
    )
    await runner.setup()
    try:
        assert runner.server is not None
        async with await Listener.bind(host, port, runner.server, gate) as listener:
            ready(listener.url)
            await asyncio.Event().wait()
    finally:
        await runner.cleanup()
