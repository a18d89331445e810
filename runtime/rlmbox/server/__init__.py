"""``rlmbox serve``: the OpenAI-compatible service (``app.py``) and its request and response shapes
(``schema.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from rlmbox.config import Settings
from rlmbox.server.app import RLMService, ServeOptions

__all__ = ["RLMService", "ServeOptions", "serve"]


async def serve(
    settings: Settings, options: ServeOptions, host: str, port: int, ready: Callable[[str], None]
) -> None:
    """Serve until cancelled (Ctrl-C, SIGTERM); ``ready`` gets the base URL once requests are accepted.
    A handler whose client disconnects is cancelled, and with it the client's run."""
    runner = web.AppRunner(RLMService(settings, options).app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0]
        ready(f"http://{bound[0]}:{bound[1]}")
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
