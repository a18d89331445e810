"""ZMTP 3.0 (NULL security) over a Unix socket: what the host needs to talk to a Jupyter kernel, bounded.

The host reads the kernel's ZMQ sockets with this small peer instead of libzmq, because the kernel is
hostile and libzmq is not built for a hostile peer: it buffers whole messages whatever their number of
frames, and a peer that disconnects while the host reads a many-frame message makes it abort the whole
process (``Assertion failed: !_more (src/fq.cpp)``). Here a message is read frame by frame from a buffer
the host sizes: a frame that would take a message past its byte or frame limit ends the connection before
its body is read, and a peer that vanishes mid-message ends only its own connection.

    channel = await ZMTPChannel.connect(path, "DEALER", ("ROUTER",), limits, on_lost, timeout=10)
    await channel.send([b"part 1", b"part 2"])
    frames = await channel.recv()

Only what rlmbox uses is spoken: DEALER and SUB sockets that connect once (never reconnect), NULL security,
ZMTP 3.0 framing (libzmq peers of 3.1 talk 3.0 to it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Self

__all__ = ["ChannelClosed", "MessageLimits", "ZMTPChannel"]

_MORE, _LONG, _COMMAND = 0x01, 0x02, 0x04
_NULL = b"NULL".ljust(20, b"\x00")
# signature (0xFF, 8 bytes of padding, 0x7F), version 3.0, mechanism, as-server 0, filler
_GREETING = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + _NULL + bytes(32)
_HANDSHAKE_BYTES = 4096  # the peer's READY command: a few short properties
_READ_AHEAD = 64 * 1024  # bytes buffered beyond what a reader waits for, before reading pauses
_SUBSCRIBE_ALL = b"\x01"


class ChannelClosed(ConnectionError):
    """The channel ended: the peer closed it, broke the protocol or a limit, or the host closed it."""


@dataclass(frozen=True)
class MessageLimits:
    """The most one message may hold: bytes over all its frames, and frames."""

    max_bytes: int
    max_frames: int


class ZMTPChannel(asyncio.Protocol):
    """One connected socket. ``recv`` is safe to cancel: a message half read is kept for the next call.

    ``on_lost(reason)`` is called once if the channel ends by the peer's doing (not by ``close``).
    """

    def __init__(self, limits: MessageLimits, on_lost: Callable[[str], None]) -> None:
        self._limits = limits
        self._on_lost = on_lost
        self._buffer = bytearray()
        self._frames: list[bytes] = []  # of the message being received
        self._frames_bytes = 0
        self._wanted = 0  # bytes the reader needs in the buffer
        self._waiter: asyncio.Future[None] | None = None
        self._reading = asyncio.Lock()
        self._writable = asyncio.Event()
        self._writable.set()
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self.closed: str | None = None

    @classmethod
    async def connect(
        cls,
        path: str,
        socket_type: str,
        peer_types: Iterable[str],
        limits: MessageLimits,
        on_lost: Callable[[str], None],
        *,
        timeout: float,
    ) -> Self:
        """Connect to the socket file at ``path`` and complete the handshake with a peer of ``peer_types``;
        a SUB subscribes to every message."""
        loop = asyncio.get_running_loop()
        channel = cls(limits, on_lost)
        try:
            async with asyncio.timeout(timeout):
                await loop.create_unix_connection(lambda: channel, path)
                await channel._handshake(socket_type, frozenset(peer_types))
        except BaseException:
            channel.close()
            raise
        if socket_type == "SUB":
            await channel.send([_SUBSCRIBE_ALL])
        return channel

    # -- the application's side ----------------------------------------------------------------------

    async def recv(self) -> list[bytes]:
        """The frames of the next message. Raises ChannelClosed once the channel has ended, and ends it on a
        message over the limits."""
        async with self._reading:
            while True:
                frame = self._next_frame()
                if frame is None:
                    await self._more()
                    continue
                flags, body = frame
                if flags & _COMMAND:
                    if self._frames:
                        self._violate("a command inside a message")
                    continue  # no command after the handshake matters here (ZMTP 3.0 has no heartbeats)
                self._frames.append(body)
                self._frames_bytes += len(body)
                if len(self._frames) > self._limits.max_frames:
                    self._violate(f"a message of more than {self._limits.max_frames} frames")
                if not flags & _MORE:
                    message, self._frames, self._frames_bytes = self._frames, [], 0
                    return message

    async def send(self, frames: Sequence[bytes]) -> None:
        """Send one message; waits while the peer is not reading (the transport's buffer is full)."""
        if self.closed is not None or self._transport is None:
            raise ChannelClosed(self.closed or "not connected")
        self._transport.write(_encode(frames))
        await self._writable.wait()
        if self.closed is not None:
            raise ChannelClosed(self.closed)

    def close(self) -> None:
        """End the channel from the host's side (``on_lost`` is not called). Idempotent."""
        if self.closed is None:
            self.closed = "closed by the host"
        self._wake()
        self._writable.set()
        if self._transport is not None:
            self._transport.abort()

    # -- asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._paused and len(self._buffer) >= max(self._wanted, _READ_AHEAD):
            assert self._transport is not None
            self._transport.pause_reading()
            self._paused = True
        if len(self._buffer) >= self._wanted:
            self._wake()

    def eof_received(self) -> bool:
        self._lose("the kernel closed it")
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose("the kernel closed it" if exc is None else f"it failed: {exc}")

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- internals -----------------------------------------------------------------------------------

    async def _handshake(self, socket_type: str, peer_types: frozenset[str]) -> None:
        assert self._transport is not None
        self._transport.write(_GREETING + _encode_command(b"READY", {b"Socket-Type": socket_type.encode()}))
        greeting = await self._take(len(_GREETING))
        if greeting[0] != 0xFF or not greeting[9] & 0x01 or greeting[10] < 3:
            self._violate("not a ZMTP 3 peer")
        if greeting[12:32] != _NULL:
            self._violate("a security mechanism other than NULL")
        while (frame := self._next_frame(_HANDSHAKE_BYTES)) is None:
            await self._more()
        flags, body = frame
        properties = _ready_properties(body) if flags & _COMMAND else None
        if properties is None:
            self._violate("no READY command in the handshake")
            return
        peer = properties.get("socket-type", b"").decode("ascii", "replace")
        if peer not in peer_types:
            self._violate(f"a {peer or 'nameless'} socket where {'/'.join(sorted(peer_types))} was expected")

    async def _take(self, size: int) -> bytes:
        """Exactly ``size`` bytes from the stream (the greeting has no frame around it)."""
        while len(self._buffer) < size:
            self._wanted = size
            await self._more()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _next_frame(self, limit: int | None = None) -> tuple[int, bytes] | None:
        """The next whole frame in the buffer as (flags, body), or None until more bytes arrive. A frame that
        would take the message past its byte limit ends the channel before its body is read."""
        buffer = self._buffer
        if len(buffer) < 2:
            self._wanted = 2
            return None
        flags = buffer[0]
        if flags & ~(_MORE | _LONG | _COMMAND) or (flags & _COMMAND and flags & _MORE):
            self._violate(f"a frame with invalid flags {flags:#04x}")
        head = 9 if flags & _LONG else 2
        if len(buffer) < head:
            self._wanted = head
            return None
        size = int.from_bytes(buffer[1:9], "big") if flags & _LONG else buffer[1]
        limit = self._limits.max_bytes if limit is None else limit
        if size > limit - self._frames_bytes:
            self._violate(f"a message of more than {limit:,} bytes")
        if len(buffer) < head + size:
            self._wanted = head + size
            return None
        body = bytes(buffer[head : head + size])
        del buffer[: head + size]
        self._wanted = 0
        return flags, body

    async def _more(self) -> None:
        """Wait for more bytes; raises ChannelClosed once the channel has ended."""
        if self.closed is not None:
            raise ChannelClosed(self.closed)
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self.closed is not None and len(self._buffer) < self._wanted:
            raise ChannelClosed(self.closed)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _lose(self, reason: str) -> None:
        if self.closed is not None:
            return
        self.closed = reason
        self._wake()
        self._writable.set()
        self._on_lost(reason)

    def _violate(self, reason: str) -> None:
        """The peer broke the protocol or a limit: end the channel."""
        self._lose(reason)
        if self._transport is not None:
            self._transport.abort()
        raise ChannelClosed(reason)


def _encode(frames: Sequence[bytes]) -> bytes:
    last = len(frames) - 1
    return b"".join(_frame(_MORE if index < last else 0, body) for index, body in enumerate(frames))


def _encode_command(name: bytes, properties: dict[bytes, bytes]) -> bytes:
    body = bytes([len(name)]) + name
    for key, value in properties.items():
        body += bytes([len(key)]) + key + len(value).to_bytes(4, "big") + value
    return _frame(_COMMAND, body)


def _frame(flags: int, body: bytes) -> bytes:
    if len(body) > 255:
        return bytes([flags | _LONG]) + len(body).to_bytes(8, "big") + body
    return bytes([flags, len(body)]) + body


def _ready_properties(body: bytes) -> dict[str, bytes] | None:
    """The properties of a READY command (names lower-cased), or None if ``body`` is not a valid one."""
    with contextlib.suppress(IndexError):
        if body[0] != 5 or body[1:6] != b"READY":
            return None
        properties: dict[str, bytes] = {}
        at = 6
        while at < len(body):
            name_size = body[at]
            name = body[at + 1 : at + 1 + name_size]
            at += 1 + name_size
            value_size = int.from_bytes(body[at : at + 4], "big")
            value = body[at + 4 : at + 4 + value_size]
            at += 4 + value_size
            if not name or len(name) != name_size or len(value) != value_size:
                return None
            properties[name.decode("ascii", "replace").lower()] = value
        return properties
    return None
