"""The host end of the kernel's ``llm_query`` bridge: a server on a per-session Unix socket.

The socket lives in a directory the host owns and mounts read-only into the container, so sandboxed code
can connect to it but never replace it. Each connection is served by its own task, so a slow or hostile
writer stalls nobody else; a request whose caller hangs up is cancelled, and so are its sub-calls.

What one session's kernel can make the host hold or do is bounded: new connections are accepted at a
limited rate (a flood waits in the kernel's ``connect``), at most ``MAX_CONNECTIONS`` are open, request
bodies are read one frame at a time up to ``max_request_bytes``, parsed one at a time and only when they
hold at most ``max_request_values`` JSON values, and the bodies and parsed requests held at once fit in a
byte budget (``request_budget``). Misdeeds are counted against the sandbox and logged at a bounded rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

import structlog

from rlmbox._exceptions import BridgeError, BudgetExceeded, RLMBoxError
from rlmbox.misbehaviour import Misbehaviour
from rlmbox.protocol import (
    MAX_REQUEST_BYTES,
    MAX_REQUEST_VALUES,
    AnyRequest,
    ChildQuery,
    ErrorInfo,
    LLMQueryRequest,
    QueryOutcome,
    ReadyRequest,
    Response,
    RLMQueryRequest,
    encode_frame,
    parse_request,
    read_frame_length,
    request_id_hint,
    request_values,
)
from rlmbox.untrusted import parsed_size_bound, size_bound

__all__ = ["BridgeHandler", "BridgeServer", "request_budget"]

log = structlog.get_logger(__name__)
T = TypeVar("T")

MAX_CONNECTIONS = 64
LISTEN_BACKLOG = 8
# New connections: a burst, then a steady rate. An honest kernel opens one per thread that calls llm_query
# (and a new one after an interrupted call), so only a flood ever waits.
CONNECTION_BURST = 64
CONNECTIONS_PER_S = 20.0
CLOSE_TIMEOUT_S = 5.0
ACCEPT_RETRY_S = 1.0
PARSE_IN_THREAD_BYTES = 1 << 20


def request_budget(max_request_bytes: int, max_request_values: int) -> int:
    """Bytes of request bodies and parsed requests a session's bridge holds at most: room for the largest
    body together with its parsed form at its worst."""
    return max_request_bytes + size_bound(max_request_bytes, max_request_values)


class BridgeHandler(Protocol):
    """Answers the kernel's sub-model calls. Per-prompt failures go in the outcomes; raising refuses all."""

    async def llm_query(self, prompts: list[str], model: str | None) -> list[QueryOutcome]: ...

    async def rlm_query(self, queries: list[ChildQuery], model: str | None) -> list[QueryOutcome]: ...


class _Budget:
    """Bytes a session's bridge may hold. ``reserve`` waits for room, ``take`` says whether there is any
    (a request that already holds bytes never waits for more: two such requests could wait on each other)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0
        self._freed = asyncio.Event()

    async def reserve(self, amount: int) -> None:
        while self.held + amount > self.capacity:
            self._freed.clear()
            await self._freed.wait()
        self.held += amount

    def take(self, amount: int) -> bool:
        if self.held + amount > self.capacity:
            return False
        self.held += amount
        return True

    def give(self, amount: int) -> None:
        self.held -= amount
        self._freed.set()


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
        max_request_values: int = MAX_REQUEST_VALUES,
        misbehaviour: Misbehaviour | None = None,
    ) -> None:
        self.path = path
        self.ready = asyncio.Event()
        self.handler = handler
        self.misbehaviour = misbehaviour or Misbehaviour()
        self._token = token.encode()
        self._max_prompt_chars = max_prompt_chars
        self._max_batch_size = max_batch_size
        self._max_request_bytes = max_request_bytes
        self._max_request_values = max_request_values
        self._budget = _Budget(request_budget(max_request_bytes, max_request_values))
        self._parsing = asyncio.Lock()  # one request body parsed at a time
        self._answering = 0
        self._busy_since = 0.0
        self._busy_total = 0.0
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._connection_ended = asyncio.Event()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Bind and listen; returns once connections are accepted."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(os.fspath(self.path))
            # The container user differs from the host user and must be able to connect; the session
            # directory (mode 0700 on the host) keeps other host users away.
            os.chmod(self.path, 0o666)
            listener.listen(LISTEN_BACKLOG)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self._accepting = asyncio.ensure_future(self._accept(listener))

    def busy_seconds(self) -> float:
        """Seconds so far during which at least one request was being answered (the kernel was waiting)."""
        ongoing = time.monotonic() - self._busy_since if self._answering else 0.0
        return self._busy_total + ongoing

    @property
    def busy(self) -> bool:
        return self._answering > 0

    async def aclose(self) -> None:
        """Stop accepting, cancel calls in flight, wait for them (bounded), remove the socket. Idempotent."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        listener.close()
        for task in self._connections:
            task.cancel("bridge closing")
        if self._connections:
            await asyncio.wait(self._connections, timeout=CLOSE_TIMEOUT_S)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _accept(self, listener: socket.socket) -> None:
        """Accept connections while fewer than MAX_CONNECTIONS are open, at most CONNECTIONS_PER_S a second
        after a burst. A kernel connecting faster waits in its ``connect`` (the backlog is short), which
        costs the host nothing."""
        loop = asyncio.get_running_loop()
        allowance, refilled = float(CONNECTION_BURST), loop.time()
        while True:
            while len(self._connections) >= MAX_CONNECTIONS:
                self._connection_ended.clear()
                await self._connection_ended.wait()
            now = loop.time()
            allowance = min(float(CONNECTION_BURST), allowance + (now - refilled) * CONNECTIONS_PER_S)
            refilled = now
            if allowance < 1:
                self.misbehaviour.record("bridge_connection_flood", limit_per_s=CONNECTIONS_PER_S)
                await asyncio.sleep((1 - allowance) / CONNECTIONS_PER_S)  # throttling, not a readiness wait
                continue
            try:
                connection, _ = await loop.sock_accept(listener)
            except OSError as exc:  # the host is out of descriptors or memory: wait, then accept again
                log.warning("bridge.accept_failed", error=str(exc), retry_in_s=ACCEPT_RETRY_S)
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            allowance -= 1
            task = asyncio.ensure_future(self._serve(connection))
            self._connections.add(task)
            task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._connections.discard(task)
        self._connection_ended.set()

    async def _serve(self, connection: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=connection)
        except OSError:
            connection.close()
            return
        try:
            await self._converse(reader, writer)
        except BridgeError as exc:
            self.misbehaviour.record("bridge_protocol_error", reason=str(exc))
        except ConnectionError as exc:
            log.debug("bridge.connection_dropped", reason=str(exc))
        except asyncio.CancelledError:
            if self._listener is not None:
                raise
            # Cancelled by aclose: end quietly (asyncio logs a handler that ends cancelled as an error).
        finally:
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (length := await read_frame_length(reader, self._max_request_bytes)) is not None:
            if not await self._handle_frame(length, reader, writer):
                return

    async def _handle_frame(
        self, length: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Read, check and answer one request; False when the connection must end.

        What it holds is charged to the budget before it exists: the body twice while it is read (the
        stream's buffer and the copy handed out), then once, then its parsed form instead."""
        await self._budget.reserve(2 * length)
        held = 2 * length
        try:
            try:
                body = await reader.readexactly(length)
            except asyncio.IncompleteReadError as exc:
                raise BridgeError("bridge stream ended inside a frame") from exc
            self._budget.give(length)
            held -= length
            async with self._parsing:
                try:
                    request, parsed = await self._decode(body)
                except BridgeError as exc:
                    self.misbehaviour.record("bridge_malformed_request", reason=str(exc)[:200])
                    await self._send(writer, _refusal(request_id_hint(body), "ProtocolError", str(exc)))
                    return False
            del body
            self._budget.give(length)
            held = parsed
            return await self._respond(request, reader, writer)
        finally:
            self._budget.give(held)

    async def _decode(self, body: bytes) -> tuple[AnyRequest, int]:
        """The request in ``body`` and the bytes its parsed form was charged, off the event loop when the
        body is large (the checks are short scans, each letting the loop run between them)."""
        off_loop = len(body) > PARSE_IN_THREAD_BYTES
        values = await _call(off_loop, request_values, body, self._max_request_values)
        parsed = parsed_size_bound(body, values)
        if not self._budget.take(parsed):
            raise BridgeError("the bridge is busy with other large requests of this sandbox; try again")
        try:
            return await _call(off_loop, parse_request, body), parsed
        except BaseException:
            self._budget.give(parsed)
            raise

    async def _respond(
        self, request: AnyRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if not hmac.compare_digest(request.token.encode(), self._token):
            self.misbehaviour.record("bridge_bad_token")
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


async def _call(off_loop: bool, function: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(function, *args) if off_loop else function(*args)
