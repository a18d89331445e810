"""Decoding the kernel's Jupyter messages on the host: framing, signature, bounded JSON, channel limits."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

import pytest

from rlmbox.kernel import (
    DELIMITER,
    MAX_MESSAGE_FRAMES,
    MAX_MESSAGE_VALUES,
    MAX_REPLY_BYTES,
    KernelConnection,
    decode_message,
    max_iopub_bytes,
)
from rlmbox.misbehaviour import Misbehaviour
from rlmbox.untrusted import UntrustedDataError

KEY = b"0123456789abcdef"


def signed(
    header: bytes, parent: bytes, content: bytes, key: bytes = KEY, topic: bytes = b"stream"
) -> list[bytes]:
    parts = [header, parent, b"{}", content]
    digest = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        digest.update(part)
    return [topic, DELIMITER, digest.hexdigest().encode(), *parts]


HEADER = json.dumps({"msg_id": "m1", "msg_type": "stream"}).encode()
PARENT = json.dumps({"msg_id": "cell-1"}).encode()
CONTENT = json.dumps({"name": "stdout", "text": "hello"}).encode()


def test_the_iopub_limit_fits_the_largest_honest_message():
    # Capped output or a final answer, every character escaped as \uXXXX, plus room for the envelope.
    assert max_iopub_bytes(2_000_000, 1_000_000) == 1024 * 1024 + 12_000_000
    assert max_iopub_bytes(10, 5_000_000) > 6 * 5_000_000


def test_a_signed_message_decodes_and_its_content_is_parsed_on_demand():
    message = decode_message(signed(HEADER, PARENT, CONTENT), KEY)
    assert (message.msg_type, message.parent_id) == ("stream", "cell-1")
    assert message.content() == {"name": "stdout", "text": "hello"}


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        (signed(HEADER, PARENT, CONTENT, key=b"another key"), "bad signature"),
        (signed(HEADER, PARENT, CONTENT)[2:], "no message delimiter"),
        (signed(HEADER, PARENT, CONTENT)[:5], "fewer than five parts"),
        (signed(b'{"msg_id": "m1"}', PARENT, CONTENT), "without a message type"),
        (signed(b"[" + b"[]," * MAX_MESSAGE_VALUES + b"[]]", PARENT, CONTENT), "more than"),
        (signed(HEADER, b"\x80\x81 not json", CONTENT), "not valid JSON"),
    ],
    ids=["signature", "delimiter", "parts", "type", "values", "garbage"],
)
def test_messages_the_host_cannot_trust_are_refused(frames, reason):
    with pytest.raises(UntrustedDataError, match=reason):
        decode_message(frames, KEY)


def test_content_with_too_many_values_or_bad_unicode_is_handled_when_read():
    flood = decode_message(signed(HEADER, PARENT, b"[" + b"0," * MAX_MESSAGE_VALUES + b"0]"), KEY)
    with pytest.raises(UntrustedDataError):
        flood.content()
    surrogate = decode_message(signed(HEADER, PARENT, b'{"name": "stdout", "text": "a\\ud800b"}'), KEY)
    assert surrogate.content()["text"] == "a\ufffdb"


class Channel:
    def __init__(self, messages: list[list[bytes]]) -> None:
        self.messages = messages

    async def recv(self) -> list[bytes]:
        return self.messages.pop(0)


def test_undecodable_messages_are_dropped_and_counted_against_the_sandbox():
    """The kernel holds the signing key, so it can sign anything: the host skips what does not decode,
    reads on, and counts each against the sandbox."""
    garbage = [
        [b"\xff" * 100],
        signed(HEADER, PARENT, CONTENT, key=b"forged"),
        signed(HEADER, PARENT, CONTENT),
    ]

    async def main() -> tuple[str | None, Misbehaviour]:
        misbehaviour = Misbehaviour("test")
        info = {
            "key": KEY.decode(),
            "ip": "/nonexistent/k",
            **{f"{n}_port": 1 for n in ("shell", "iopub", "control")},
        }
        connection = KernelConnection(
            info, max_output_bytes=1000, max_final_chars=1000, misbehaviour=misbehaviour
        )
        connection._channels["iopub"] = Channel(garbage)  # type: ignore[assignment]
        message = await connection._next("iopub")
        return message.parent_id, misbehaviour

    parent_id, misbehaviour = asyncio.run(main())
    assert parent_id == "cell-1"
    assert misbehaviour.counts == {"undecodable_kernel_message": 2}


def test_each_channel_of_a_live_kernel_has_its_limits(local_config):
    import warnings

    from rlmbox import AsyncSandbox

    async def main() -> dict:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            async with AsyncSandbox(local_config) as sandbox:
                kernel = sandbox.backend._kernel
                limits = {name: channel._limits for name, channel in kernel._channels.items()}
                cell = await sandbox.execute("print('still talking')")
                return {"limits": limits, "stdout": cell.stdout}

    seen = asyncio.run(main())
    iopub = max_iopub_bytes(local_config.max_cell_output_bytes, local_config.max_final_chars)
    assert {name: (lim.max_bytes, lim.max_frames) for name, lim in seen["limits"].items()} == {
        "shell": (MAX_REPLY_BYTES, MAX_MESSAGE_FRAMES),
        "control": (MAX_REPLY_BYTES, MAX_MESSAGE_FRAMES),
        "iopub": (iopub, MAX_MESSAGE_FRAMES),
    }
    assert seen["stdout"] == "still talking\n"
