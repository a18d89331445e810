"""The host end of the kernel's ``llm_query`` bridge: an asyncio server on a per-session Unix socket.

The socket lives in a directory the host owns and mounts read-only into the container, so sandboxed code
can connect to it but never replace it. Each connection is served by its own task, so a slow or hostile
writer stalls nobody else; a request whose caller hangs up is cancelled, and so are its sub-calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

import structlog

from rlmbox._exceptions import BridgeError, BudgetExceeded, RLMBoxError
from rlmbox.protocol import (
    MAX_REQUEST_BYTES,
    ChildQuery,
    ErrorInfo,
    LLMQueryRequest,
    QueryOutcome,
    ReadyRequest,
    Response,
    RLMQueryRequest,
    decode_request,
    encode_frame,
    read_frame_length,
)

__all__ = ["BridgeHandler", "BridgeServer"]

log = structlog.get_logger(__name__)

MAX_CONNECTIONS = 64
CLOSE_TIMEOUT_S = 5.0
# Request bodies buffered or being answered at once, over all connections: bounds the host memory a
# hostile kernel can make the bridge hold. Bodies larger than this many bytes are parsed off the loop.
MAX_BUFFERED_REQUESTS = 4
PARSE_IN_THREAD_BYTES = 1 << 20


class BridgeHandler(Protocol):
    """Answers the kernel's sub-model calls. Per-prompt failures go in the outcomes; raising refuses all."""

    async def llm_query(self, prompts: list[str], model: str | None) -> list[QueryOutcome]: ...

    async def rlm_query(self, queries: list[ChildQuery], model: str | None) -> list[QueryOutcome]: ...


class BridgeServer:
    """``async with BridgeServer(path, token, handler) as bridge`` listens until the block ends."""

    def __init__(
        self,
        path: Path,
        token: str,
        handler: BridgeHandler | None,
        *,
        max_prompt_chars: int,
        max_batch_size: int,
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        self.path = path
        self.ready = asyncio.Event()
        self.handler = handler
        self._token = token.encode()
        self._max_prompt_chars = max_prompt_chars
        self._max_batch_size = max_batch_size
        self._max_request_bytes = max_request_bytes
        self._buffered_bytes = 0
        self._answering = 0
        self._busy_since = 0.0
        self._busy_total = 0.0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Bind and listen; returns once connections are accepted."""
        self._server = await asyncio.start_unix_server(self._serve, path=os.fspath(self.path))
        # The container user differs from the host user and must be able to connect; the session
        # directory (mode 0700 on the host) keeps other host users away.
        os.chmod(self.path, 0o666)

    def busy_seconds(self) -> float:
        """Seconds so far during which at least one request was being answered (the kernel was waiting)."""
        ongoing = time.monotonic() - self._busy_since if self._answering else 0.0
        return self._busy_total + ongoing

    @property
    def busy(self) -> bool:
        return self._answering > 0

    async def aclose(self) -> None:
        """Stop accepting, cancel calls in flight, wait for them (bounded), remove the socket. Idempotent."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for task in self._connections:
            task.cancel("bridge closing")
        if self._connections:
            await asyncio.wait(self._connections, timeout=CLOSE_TIMEOUT_S)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= MAX_CONNECTIONS:
            log.warning("bridge.too_many_connections", limit=MAX_CONNECTIONS)
            writer.close()
            return
        self._connections.add(task)
        try:
            await self._converse(reader, writer)
        except (BridgeError, ConnectionError) as exc:
            log.warning("bridge.connection_dropped", reason=str(exc))
        except asyncio.CancelledError:
            if self._server is not None:
                raise
            # Cancelled by aclose: end quietly (asyncio logs a handler that ends cancelled as an error).
        finally:
            self._connections.discard(task)
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (length := await read_frame_length(reader, self._max_request_bytes)) is not None:
            if self._buffered_bytes + length > MAX_BUFFERED_REQUESTS * self._max_request_bytes:
                raise BridgeError("bridge is busy: too many large requests at once")
            self._buffered_bytes += length
            try:
                if not await self._handle_frame(length, reader, writer):
                    return
            finally:
                self._buffered_bytes -= length

    async def _handle_frame(
        self, length: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Read, check and answer one request; False when the connection must end."""
        try:
            body = await reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            raise BridgeError("bridge stream ended inside a frame") from exc
        try:
            if length > PARSE_IN_THREAD_BYTES:
                request = await asyncio.to_thread(decode_request, body)
            else:
                request = decode_request(body)
        except BridgeError as exc:
            await self._send(writer, _refusal(0, "ProtocolError", str(exc)))
            return False
        del body
        if not hmac.compare_digest(request.token.encode(), self._token):
            await self._send(writer, _refusal(request.id, "ProtocolError", "bad bridge token"))
            return False
        if isinstance(request, ReadyRequest):
            self.ready.set()
            await self._send(writer, Response(id=request.id, ok=True))
            return True
        response = await self._answer_unless_hung_up(request, reader)
        if response is None:
            log.info("bridge.caller_hung_up", request_id=request.id)
            return False
        await self._send(writer, response)
        return True

    async def _answer_unless_hung_up(
        self, request: LLMQueryRequest | RLMQueryRequest, reader: asyncio.StreamReader
    ) -> Response | None:
        """Answer the request, cancelling it if the caller closes the connection (or sends out of turn)."""
        work = asyncio.ensure_future(self._answer(request))
        hangup = asyncio.ensure_future(reader.read(1))
        if not self._answering:
            self._busy_since = time.monotonic()
        self._answering += 1
        try:
            await asyncio.wait({work, hangup}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._answering -= 1
            if not self._answering:
                self._busy_total += time.monotonic() - self._busy_since
            for task in (work, hangup):
                if not task.done():
                    task.cancel("bridge caller hung up" if task is work else None)
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        # Anything the caller sent before its answer (end of stream or bytes out of turn) ends the talk.
        hung_up = work.cancelled() or (hangup.done() and not hangup.cancelled())
        return None if hung_up else work.result()

    async def _answer(self, request: LLMQueryRequest | RLMQueryRequest) -> Response:
        if self.handler is None:
            return _refusal(
                request.id, "LLMQueryError", f"{request.op} is not available: no model is configured"
            )
        prompts = (
            request.prompts if isinstance(request, LLMQueryRequest) else [q.prompt for q in request.queries]
        )
        if len(prompts) > self._max_batch_size:
            message = f"{len(prompts)} prompts exceed the batch limit of {self._max_batch_size}"
            return _refusal(request.id, "ProtocolError", message)
        longest = max(len(prompt) for prompt in prompts)
        if longest > self._max_prompt_chars:
            message = f"prompt of {longest} chars exceeds the {self._max_prompt_chars}-char limit"
            return _refusal(request.id, "ProtocolError", message)
        try:
            if isinstance(request, LLMQueryRequest):
                results = await self.handler.llm_query(list(request.prompts), request.model)
            else:
                results = await self.handler.rlm_query(list(request.queries), request.model)
        except BudgetExceeded as exc:
            return _refusal(request.id, "BudgetExceededError", str(exc))
        except RLMBoxError as exc:
            return _refusal(request.id, "LLMQueryError", str(exc))
        except Exception:  # the bridge is a boundary: a handler bug must not take the session down
            log.exception("bridge.handler_failed", request_id=request.id)
            return _refusal(request.id, "LLMQueryError", "internal error in the rlmbox host")
        return Response(id=request.id, ok=True, results=results)

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, response: Response) -> None:
        writer.write(encode_frame(response))
        await writer.drain()


def _refusal(request_id: int, kind: str, message: str) -> Response:
    return Response(id=request_id, ok=False, error=ErrorInfo(type=kind, message=message))  # type: ignore[arg-type]
