"""The host's ZMTP peer, against libzmq sockets bound as ipykernel binds them, and against a raw hostile
peer."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from rlmbox.zmtp import ChannelClosed, MessageLimits, ZMTPChannel

LIMITS = MessageLimits(max_bytes=1 << 20, max_frames=16)
# A libzmq peer's greeting and READY, as ipykernel's ROUTER and XPUB sockets send them (ZMTP 3.1).
GREETING = b"\xff" + bytes(7) + b"\x01\x7f" + b"\x03\x01" + b"NULL".ljust(20, b"\x00") + bytes(32)


def ready(socket_type: bytes) -> bytes:
    body = b"\x05READY" + b"\x0bSocket-Type" + len(socket_type).to_bytes(4, "big") + socket_type
    return bytes([0x04, len(body)]) + body


def frame(body: bytes, more: bool = False) -> bytes:
    flags = 0x01 if more else 0x00
    if len(body) > 255:
        return bytes([flags | 0x02]) + len(body).to_bytes(8, "big") + body
    return bytes([flags, len(body)]) + body


class RawPeer:
    """A listening Unix socket that plays a hostile kernel: greets like libzmq, then sends what it is told."""

    def __init__(self, path: Path, socket_type: bytes = b"ROUTER", greeting: bytes = GREETING) -> None:
        self.path = path
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(1)
        self.connected = threading.Event()
        self.conn: socket.socket | None = None
        self._greeting = greeting + ready(socket_type)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.conn, _ = self._server.accept()
        self.conn.sendall(self._greeting)
        self.connected.set()
        with contextlib.suppress(OSError):  # read what the host sends, as a kernel would, until closed
            while self.conn.recv(65536):
                pass

    def send(self, data: bytes) -> None:
        assert self.connected.wait(5) and self.conn is not None
        self.conn.sendall(data)

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.shutdown(socket.SHUT_RDWR)  # also wakes the reading thread
            self.conn.close()
        self._server.close()


def run(main: Callable[[], object]) -> object:
    return asyncio.run(asyncio.wait_for(main(), 20))  # type: ignore[arg-type]


async def connect(path: Path, socket_type: str = "DEALER", limits: MessageLimits = LIMITS, lost=None):
    peers = ("ROUTER",) if socket_type == "DEALER" else ("PUB", "XPUB")
    on_lost = lost.append if lost is not None else (lambda reason: None)
    return await ZMTPChannel.connect(str(path), socket_type, peers, limits, on_lost, timeout=5)


def test_talks_to_a_libzmq_router_and_xpub_like_ipykernel(tmp_path):
    async def main():
        context = zmq.asyncio.Context()
        router, xpub = context.socket(zmq.ROUTER), context.socket(zmq.XPUB)
        router.bind(f"ipc://{tmp_path}/shell")
        xpub.bind(f"ipc://{tmp_path}/iopub")
        try:
            dealer = await connect(tmp_path / "shell")
            sub = await connect(tmp_path / "iopub", "SUB")
            subscription = await xpub.recv()
            await dealer.send([b"request", b"x" * 1000])
            identity, *request = await router.recv_multipart()
            await router.send_multipart([identity, b"reply", b"y" * 300])
            reply = await dealer.recv()
            await xpub.send_multipart([b"topic", b"z" * 70_000])
            published = await sub.recv()
            dealer.close()
            sub.close()
            return subscription, request, reply, published
        finally:
            context.destroy(linger=0)

    subscription, request, reply, published = run(main)
    assert subscription == b"\x01"  # subscribed to everything
    assert request == [b"request", b"x" * 1000]
    assert reply == [b"reply", b"y" * 300]
    assert published == [b"topic", b"z" * 70_000]


def test_a_message_over_the_frame_limit_ends_the_channel(tmp_path):
    async def main():
        context = zmq.asyncio.Context()
        xpub = context.socket(zmq.XPUB)
        xpub.bind(f"ipc://{tmp_path}/iopub")
        lost: list[str] = []
        try:
            sub = await connect(tmp_path / "iopub", "SUB", lost=lost)
            await xpub.recv()
            await xpub.send_multipart([b"f"] * 16)  # at the limit: delivered
            at_limit = await sub.recv()
            await xpub.send_multipart([b"f"] * 17)  # one over: the channel ends
            with pytest.raises(ChannelClosed, match="more than 16 frames"):
                await sub.recv()
            return at_limit, lost
        finally:
            context.destroy(linger=0)

    at_limit, lost = run(main)
    assert len(at_limit) == 16
    assert lost == ["a message of more than 16 frames"]


def test_a_message_over_the_byte_limit_ends_the_channel_before_its_body_arrives(tmp_path):
    """The kernel announces a terabyte frame and sends nothing more: the host gives up on the header alone,
    without waiting for (or making room for) the body."""
    peer = RawPeer(tmp_path / "k")

    async def main():
        lost: list[str] = []
        channel = await connect(
            tmp_path / "k", lost=lost, limits=MessageLimits(max_bytes=1000, max_frames=16)
        )
        peer.send(frame(b"a" * 600, more=True) + frame(b"b" * 400))  # exactly 1000 bytes: delivered
        whole = await channel.recv()
        peer.send(frame(b"a" * 600, more=True) + frame(b"b" * 401))  # 1001 bytes: refused
        with pytest.raises(ChannelClosed, match="more than 1,000 bytes"):
            await channel.recv()
        return whole, lost

    try:
        whole, lost = run(main)
    finally:
        peer.close()
    assert [len(part) for part in whole] == [600, 400]
    assert lost == ["a message of more than 1,000 bytes"]

    peer = RawPeer(tmp_path / "k2")

    async def huge():
        channel = await connect(tmp_path / "k2")
        peer.send(b"\x02" + (2**40).to_bytes(8, "big"))
        with pytest.raises(ChannelClosed, match="more than"):
            await channel.recv()

    try:
        run(huge)
    finally:
        peer.close()


def test_a_peer_that_vanishes_mid_message_ends_only_its_channel(tmp_path):
    """What made libzmq abort the host: the kernel dies between two frames of one message."""
    peer = RawPeer(tmp_path / "k")

    async def main():
        lost: list[str] = []
        channel = await connect(tmp_path / "k", lost=lost)
        peer.send(frame(b"first", more=True) + frame(b"second", more=True))
        peer.close()
        with pytest.raises(ChannelClosed) as closed:
            await channel.recv()  # never a partial message
        return lost, str(closed.value)

    lost, reason = run(main)
    # An end of stream, or a reset when the kernel went with bytes of the host's still unread.
    assert reason in ("the kernel closed it", "it failed: [Errno 104] Connection reset by peer")
    assert lost == [reason]


def test_a_cancelled_read_loses_nothing(tmp_path):
    """``recv`` under a timeout: a message half received when the timeout fires is completed by the next
    call, not left half read (which would garble every later message)."""
    peer = RawPeer(tmp_path / "k")

    async def main():
        channel = await connect(tmp_path / "k")
        peer.send(frame(b"one", more=True))
        reading = asyncio.ensure_future(channel.recv())
        async with asyncio.timeout(10):
            while channel._frames != [b"one"]:  # noqa: ASYNC110 - the state to observe has no event
                await asyncio.sleep(0.001)
        reading.cancel()  # as a cell's time limit would, with half the message taken
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        peer.send(frame(b"two") + frame(b"three"))
        return await channel.recv(), await channel.recv()

    try:
        assert run(main) == ([b"one", b"two"], [b"three"])
    finally:
        peer.close()


@pytest.mark.parametrize(
    ("greeting", "socket_type", "error"),
    [
        (b"HTTP/1.1 200 OK\r\n".ljust(64, b" "), b"ROUTER", "not a ZMTP 3 peer"),
        (GREETING[:12] + b"CURVE".ljust(20, b"\x00") + bytes(32), b"ROUTER", "other than NULL"),
        (GREETING, b"PUB", "a PUB socket where ROUTER was expected"),
    ],
)
def test_a_peer_that_is_not_the_expected_kernel_socket_is_refused(tmp_path, greeting, socket_type, error):
    peer = RawPeer(tmp_path / "k", socket_type, greeting)

    async def main():
        with pytest.raises(ChannelClosed, match=error):
            await connect(tmp_path / "k")

    try:
        run(main)
    finally:
        peer.close()


def test_a_command_inside_a_message_and_reserved_flags_are_refused(tmp_path):
    for data, error in (
        (frame(b"one", more=True) + bytes([0x04, 4]) + b"\x03FOO", "a command inside a message"),
        (b"\x08\x01x", "invalid flags"),
    ):
        peer = RawPeer(tmp_path / f"k{len(data)}")

        async def main(peer=peer, data=data, error=error):
            channel = await connect(peer.path)
            peer.send(data)
            with pytest.raises(ChannelClosed, match=error):
                await channel.recv()

        try:
            run(main)
        finally:
            peer.close()


def test_a_replaced_socket_file_is_never_reconnected_to(tmp_path):
    """If the kernel's end went away and something else bound the same path, the host never follows."""

    async def main():
        context = zmq.asyncio.Context()
        endpoint = f"ipc://{tmp_path}/k-2"
        original = context.socket(zmq.XPUB)
        original.bind(endpoint)
        lost: list[str] = []
        try:
            sub = await connect(tmp_path / "k-2", "SUB", lost=lost)
            await original.recv()
            await original.send(b"from the kernel")
            first = await sub.recv()
            original.close(linger=0)
            impostor = context.socket(zmq.XPUB)
            impostor.bind(endpoint)
            await impostor.send(b"from an impostor")
            with pytest.raises(ChannelClosed):
                await sub.recv()
            return first, lost
        finally:
            context.destroy(linger=0)

    first, lost = run(main)
    assert first == [b"from the kernel"]
    assert lost == ["the kernel closed it"]


def test_an_unread_channel_buffers_little_while_the_kernel_floods_it(tmp_path):
    """Nobody reads between cells: the host stops reading the socket once a little is buffered, and the
    flood waits in the kernel."""
    peer = RawPeer(tmp_path / "k")

    async def main():
        channel = await connect(tmp_path / "k")
        flood = threading.Thread(target=lambda: _send_quietly(peer, frame(b"x" * 60_000) * 1000))
        flood.start()
        async with asyncio.timeout(10):
            while not channel._paused:  # noqa: ASYNC110 - the state to observe has no event
                await asyncio.sleep(0.001)
        buffered = len(channel._buffer)  # final: a paused transport reads nothing more
        channel.close()
        await asyncio.to_thread(flood.join, 10)  # the loop must run for the close to happen
        return buffered

    try:
        buffered = run(main)
    finally:
        peer.close()
    assert buffered <= 64 * 1024 + 256 * 1024  # the read-ahead, plus at most one read of the transport


def _send_quietly(peer: RawPeer, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the host closed its end: the flood is over
        peer.send(data)
