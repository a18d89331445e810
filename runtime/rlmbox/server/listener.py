"""The server's accept loop: every connection is admitted here, before aiohttp's protocol sees it.

Why not asyncio's (``loop.create_server``)? When ``accept()`` fails for want of descriptors (EMFILE,
ENFILE), CPython 3.11's ``BaseSelectorEventLoop._accept_connection`` reports it to the loop's exception
handler (a traceback on stderr), unregisters the socket and schedules a retry in 1 s, but does not return:
it fails, reports and schedules a retry again for every remaining turn of its batch (the listen backlog,
128 under aiohttp). Each wake-up so writes up to 128 tracebacks and leaves up to 128 retries, which come
due a little apart and each wake it again: the retries pile up (nearly 2,000 pending after 12 s) and the
log grows faster and faster while the descriptors stay exhausted (CPython gh-151615, fixed upstream by
returning after the first failure). Here the first failure ends the batch, the socket is retried after
50 ms, doubling to 1 s, and the failure is logged at most once per ``LOG_INTERVAL_S``.

The loop also enforces the cap on pending connections (accepted, no request with a valid token yet, see
``ConnectionGate``): past it the oldest pending connection is reset to make room, so connections that
trickle their headers cannot keep a new client out (one that sends its request at once is authenticated
long before it becomes the oldest).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import resource
import socket
import struct
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

import structlog

from rlmbox.log import LOG_INTERVAL_S, Throttled

__all__ = ["ConnectionGate", "Listener", "raise_fd_limit"]

log = structlog.get_logger(__name__)

ProtocolFactory = Callable[[], asyncio.Protocol]
ACCEPT_BATCH = 64
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 1.0
BACKLOG = 128
# SO_LINGER on with a zero timeout: close() sends a reset and leaves no TIME_WAIT behind.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


def raise_fd_limit() -> tuple[int, int]:
    """Raise this process's soft descriptor limit (RLIMIT_NOFILE) to its hard limit; returns both as they
    now are. Descriptors past 1024 are safe here: on Linux asyncio waits with epoll, and zmq, httpcore and
    the Docker client with their own poll, not ``select()``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard and hard != resource.RLIM_INFINITY:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft, hard


class ConnectionGate:
    """Counts open connections, and among them the pending ones: accepted, but no request on them has
    presented a valid token yet. A connection stops being pending when the auth middleware calls
    ``authenticated`` with its transport; it then stays out of the count until it closes."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._open: set[_Connection] = set()
        self._pending: dict[_Connection, None] = {}  # oldest first
        self._by_transport: dict[asyncio.BaseTransport, _Connection] = {}

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def connections(self) -> int:
        return len(self._open)

    def full(self) -> bool:
        return len(self._pending) >= self.cap

    def admit(self, protocol: asyncio.Protocol, sock: socket.socket) -> _Connection:
        """A new connection on ``sock``, pending, to be served by ``protocol``."""
        connection = _Connection(protocol, self, sock)
        self._open.add(connection)
        self._pending[connection] = None
        return connection

    def evict_oldest(self) -> None:
        """Reset the oldest pending connection (there is one: the gate is full)."""
        next(iter(self._pending)).reset()

    def authenticated(self, transport: asyncio.BaseTransport | None) -> None:
        """A request on ``transport`` presented a valid token."""
        connection = self._by_transport.pop(transport, None) if transport is not None else None
        if connection is not None:
            self._pending.pop(connection, None)

    def _made(self, connection: _Connection, transport: asyncio.BaseTransport) -> None:
        if connection in self._pending:
            self._by_transport[transport] = connection

    def _closed(self, connection: _Connection, transport: asyncio.BaseTransport | None) -> None:
        self._open.discard(connection)
        self._pending.pop(connection, None)
        if transport is not None:
            self._by_transport.pop(transport, None)


class _Connection(asyncio.Protocol):
    """aiohttp's protocol for one connection, passed every call unchanged; the gate hears when the
    connection is made and when it is lost."""

    def __init__(self, inner: asyncio.Protocol, gate: ConnectionGate, sock: socket.socket) -> None:
        self._inner = inner
        self._gate = gate
        self.sock = sock
        self.transport: asyncio.BaseTransport | None = None
        self.evicted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._gate._made(self, transport)
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.release()
        self._inner.connection_lost(exc)

    def release(self) -> None:
        self._gate._closed(self, self.transport)

    def reset(self) -> None:
        """Close with a reset, now, whether or not its transport exists yet: the connection leaves the
        gate's counts at once."""
        self.evicted = True
        self.release()
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        if isinstance(self.transport, asyncio.Transport):
            self.transport.abort()
        else:  # accepted a moment ago: its transport is not made yet, and never will be
            self.sock.close()

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class Listener:
    """Accepts connections on a listening socket and hands each to ``protocol_factory`` (aiohttp's
    ``web.Server``), first making room when the gate is full. ``async with await Listener.bind(...)``
    accepts until exit."""

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: ProtocolFactory,
        gate: ConnectionGate,
        *,
        log_interval_s: float = LOG_INTERVAL_S,
    ) -> None:
        self._sock = sock
        self._factory = protocol_factory
        self._gate = gate
        self._loop = asyncio.get_running_loop()
        self._connecting: set[asyncio.Task[None]] = set()
        self._retry: asyncio.TimerHandle | None = None
        self._delay = RETRY_FIRST_S
        self._failing_since: float | None = None
        self._failures = 0
        self._accept_failed = Throttled(log.warning, "serve.accept_failed", log_interval_s)
        self._evicted = Throttled(log.warning, "serve.pending_evicted", log_interval_s)
        self._connect_failed = Throttled(log.warning, "serve.connection_failed", log_interval_s)
        self._closed = False

    @classmethod
    async def bind(
        cls, host: str, port: int, protocol_factory: ProtocolFactory, gate: ConnectionGate
    ) -> Self:
        """Listen on the first address ``host`` resolves to (``OSError`` if it cannot)."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return cls(sock, protocol_factory, gate)

    @property
    def url(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def __aenter__(self) -> Self:
        self._loop.add_reader(self._sock.fileno(), self._on_readable)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop accepting and close the listening socket; connections already made stay open."""
        if self._closed:
            return
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        for task in self._connecting:
            task.cancel()
        await asyncio.gather(*self._connecting, return_exceptions=True)

    # -- the accept loop ---------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ENOMEM, or worse: wait, then try again
                self._pause(exc)
                return
            self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        if self._failing_since is not None:
            log.warning(
                "serve.accepting_again",
                failed_accepts=self._failures,
                after_s=round(time.monotonic() - self._failing_since, 1),
            )
            self._failing_since, self._failures, self._delay = None, 0, RETRY_FIRST_S
            self._accept_failed.reset()
        if self._gate.full():
            self._gate.evict_oldest()
            self._evicted(pending=self._gate.pending, cap=self._gate.cap)
        connection = self._gate.admit(self._factory(), conn)
        task = self._loop.create_task(self._connect(conn, connection))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, conn: socket.socket, connection: _Connection) -> None:
        if connection.evicted:  # reset before its turn came
            return
        try:
            await self._loop.connect_accepted_socket(lambda: connection, conn)
        except BaseException as exc:
            connection.release()
            conn.close()
            if not isinstance(exc, OSError):  # cancelled (the server is stopping), or a bug
                raise
            self._connect_failed(error=str(exc))  # the client left before its transport was made

    def _pause(self, exc: OSError) -> None:
        self._loop.remove_reader(self._sock.fileno())
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        self._failures += 1
        self._accept_failed(
            error=errno.errorcode.get(exc.errno or 0, str(exc)),
            open_connections=self._gate.connections,
            pending=self._gate.pending,
            fd_limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        )
        self._retry = self._loop.call_later(self._delay, self._resume)
        self._delay = min(self._delay * 2, RETRY_MAX_S)

    def _resume(self) -> None:
        self._retry = None
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._on_readable)
