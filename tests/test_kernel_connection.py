"""The host's ZMQ settings for kernel channels, checked against real sockets (no container needed)."""

from __future__ import annotations

import asyncio

import zmq
import zmq.asyncio

from rlmbox.kernel import RECEIVE_QUEUE_MESSAGES, kernel_context, max_frame_bytes


async def _receive(socket: zmq.asyncio.Socket, timeout: float) -> bytes | None:
    try:
        return await asyncio.wait_for(socket.recv(), timeout)
    except TimeoutError:
        return None


def test_a_replaced_socket_file_is_never_reconnected_to(tmp_path):
    """If the kernel's end of a socket went away and something else bound the same path, the host must not
    follow it there."""
    endpoint = f"ipc://{tmp_path}/k-1"

    async def main() -> tuple[bytes | None, bytes | None]:
        host = kernel_context()
        kernel = zmq.asyncio.Context()
        subscriber = host.socket(zmq.SUB)
        subscriber.setsockopt(zmq.SUBSCRIBE, b"")
        original = kernel.socket(zmq.PUB)
        original.bind(endpoint)
        subscriber.connect(endpoint)
        first = None
        for _ in range(50):  # a PUB drops messages until the subscription has arrived
            await original.send(b"from the kernel")
            if (first := await _receive(subscriber, 0.05)) is not None:
                break
        original.close(linger=0)
        impostor = kernel.socket(zmq.PUB)
        impostor.bind(endpoint)
        second = None
        for _ in range(20):
            await impostor.send(b"from an impostor")
            if (second := await _receive(subscriber, 0.05)) is not None:
                break
        host.destroy(linger=0)
        kernel.destroy(linger=0)
        return first, second

    first, second = asyncio.run(main())
    assert first == b"from the kernel"
    assert second is None


def test_host_receive_queues_are_short():
    context = kernel_context()
    socket = context.socket(zmq.SUB)
    try:
        assert socket.getsockopt(zmq.RCVHWM) == RECEIVE_QUEUE_MESSAGES <= 16
        assert socket.getsockopt(zmq.RECONNECT_IVL) == -1
    finally:
        context.destroy(linger=0)


def test_frame_limit_fits_the_largest_honest_message():
    # Capped output or a final answer, every character escaped as \uXXXX, plus room for the envelope.
    assert max_frame_bytes(2_000_000, 1_000_000) == 1024 * 1024 + 12_000_000
    assert max_frame_bytes(10, 5_000_000) > 6 * 5_000_000
