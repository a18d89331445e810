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


def test_messages_that_fail_to_decode_are_skipped_whatever_the_decoder_raises():
    """The kernel holds the signing key, so it can sign bytes that make the JSON decoder raise anything
    (a RecursionError for deeply nested arrays): the host skips them and reads on."""
    from types import SimpleNamespace

    from rlmbox.kernel import KernelConnection

    class Channel:
        def __init__(self) -> None:
            self.queue: list[object] = [RecursionError("nested"), ValueError("Invalid Signature"), {"ok": 1}]

        async def get_msg(self) -> dict:
            item = self.queue.pop(0)
            if isinstance(item, BaseException):
                raise item
            return item

    connection = SimpleNamespace(undecodable=0)
    message = asyncio.run(KernelConnection._next(connection, Channel()))
    assert message == {"ok": 1} and connection.undecodable == 2


def test_a_socket_error_is_not_mistaken_for_a_bad_message():
    from types import SimpleNamespace

    import pytest

    from rlmbox.kernel import KernelConnection

    class Closed:
        async def get_msg(self) -> dict:
            raise zmq.ZMQError(zmq.ENOTSOCK)

    with pytest.raises(zmq.ZMQError):
        asyncio.run(KernelConnection._next(SimpleNamespace(undecodable=0), Closed()))


def test_each_channel_of_a_live_kernel_has_its_frame_limit(local_config):
    """Per-channel limits rely on jupyter_client creating each socket when its channel is first named."""
    import warnings

    from rlmbox import AsyncSandbox
    from rlmbox.kernel import MAX_REPLY_FRAME_BYTES

    async def main() -> dict[str, int]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            async with AsyncSandbox(local_config) as sandbox:
                client = sandbox.backend._kernel._client
                return {
                    name: getattr(client, f"{name}_channel").socket.getsockopt(zmq.MAXMSGSIZE)
                    for name in ("shell", "control", "iopub")
                }

    limits = asyncio.run(main())
    expected_iopub = max_frame_bytes(local_config.max_cell_output_bytes, local_config.max_final_chars)
    assert limits == {
        "shell": MAX_REPLY_FRAME_BYTES,
        "control": MAX_REPLY_FRAME_BYTES,
        "iopub": expected_iopub,
    }
