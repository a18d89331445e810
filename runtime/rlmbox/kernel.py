"""The host's connection to a sandboxed IPython kernel: Jupyter messages over ZMTP on the ``ipc`` sockets.

The connection is made once, after the kernel has bound its sockets and before any untrusted code runs, and
never again: if sandboxed code ever swapped a socket file, the host would not follow it. Everything the
kernel sends is untrusted. A message is read only up to its channel's byte and frame limits (``zmtp.py``),
its JSON only up to a number of values (``untrusted.py``), and its output only up to the cell's caps.
A channel the kernel breaks resolves ``lost``; reads on it raise ChannelLost.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rlmbox.misbehaviour import Misbehaviour
from rlmbox.protocol import DROPPED_MIME, FINAL_MIME
from rlmbox.untrusted import UntrustedDataError, loads
from rlmbox.zmtp import ChannelClosed, MessageLimits, ZMTPChannel

__all__ = [
    "MAX_MESSAGE_FRAMES",
    "MAX_MESSAGE_VALUES",
    "MAX_REPLY_BYTES",
    "ChannelLost",
    "KernelConnection",
    "KernelMessage",
    "RawCell",
    "decode_message",
    "max_iopub_bytes",
]

# What one message of the kernel may hold. An honest message is 6 or 7 frames (routing, delimiter,
# signature, header, parent header, metadata, content) of a few dozen JSON values; output is capped in the
# kernel (``rlmbox_kernel._output_cap``) far below the byte limits. Anything larger breaks the protocol.
MAX_MESSAGE_FRAMES = 16
MAX_MESSAGE_VALUES = 4096  # JSON values in each of a message's four JSON parts
MAX_REPLY_BYTES = 1024 * 1024  # shell and control: replies, tracebacks capped in the kernel
DELIMITER = b"<IDS|MSG>"
PROTOCOL_VERSION = "5.3"
_SOCKET_TYPES = {
    "shell": ("DEALER", ("ROUTER",)),
    "control": ("DEALER", ("ROUTER",)),
    "iopub": ("SUB", ("PUB", "XPUB")),
}


def max_iopub_bytes(max_output_bytes: int, max_final_chars: int) -> int:
    """Largest iopub message an honest kernel sends: its capped output JSON-escaped (6 bytes a character
    at most)."""
    return 1024 * 1024 + 6 * max(max_output_bytes, max_final_chars)


class ChannelLost(ConnectionError):
    """A kernel channel ended (the kernel broke it or died); nothing more will come from it."""


@dataclass(frozen=True)
class KernelMessage:
    """A message from the kernel whose signature checked out; ``content()`` parses its content on demand."""

    msg_type: str
    parent_id: str | None
    raw_content: bytes

    def content(self) -> dict[str, Any]:
        """The message's content (empty when it is not a JSON object); raises UntrustedDataError."""
        content = loads(self.raw_content, max_values=MAX_MESSAGE_VALUES)
        return content if isinstance(content, dict) else {}


def decode_message(frames: list[bytes], key: bytes) -> KernelMessage:
    """Check a Jupyter message's framing and signature and read its header; raises UntrustedDataError."""
    try:
        start = frames.index(DELIMITER) + 1
    except ValueError:
        raise UntrustedDataError("no message delimiter") from None
    parts = frames[start : start + 5]
    if len(parts) < 5:
        raise UntrustedDataError("a message of fewer than five parts")
    signature, header, parent, metadata, content = parts
    if not hmac.compare_digest(signature, _sign(key, (header, parent, metadata, content))):
        raise UntrustedDataError("a bad signature")
    header_value, parent_value = (loads(part, max_values=MAX_MESSAGE_VALUES) for part in (header, parent))
    msg_type = header_value.get("msg_type") if isinstance(header_value, dict) else None
    parent_id = parent_value.get("msg_id") if isinstance(parent_value, dict) else None
    if not isinstance(msg_type, str):
        raise UntrustedDataError("a header without a message type")
    return KernelMessage(msg_type, parent_id if isinstance(parent_id, str) else None, content)


def _sign(key: bytes, parts: tuple[bytes, ...]) -> bytes:
    digest = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        digest.update(part)
    return digest.hexdigest().encode()


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


class _Capped:
    """Accumulates text up to a byte budget and counts what it had to drop."""

    def __init__(self, limit: int) -> None:
        self._parts: list[str] = []
        self._room = limit
        self.dropped = 0

    def add(self, text: str) -> str:
        """Keep as much of ``text`` as the budget allows; returns what was kept."""
        size = len(text) if text.isascii() else len(text.encode("utf-8", "replace"))
        if size <= self._room:
            self._parts.append(text)
            self._room -= size
            return text
        if self._room == 0:
            self.dropped += size
            return ""
        kept = text.encode("utf-8", "replace")[: self._room].decode("utf-8", "ignore")
        self._parts.append(kept)
        self.dropped += size - len(kept.encode())
        self._room = 0
        return kept

    def text(self) -> str:
        return "".join(self._parts)


class RawCell:
    """What the kernel published for one execute request (partial when ``completed`` is False)."""

    def __init__(self, msg_id: str, max_output_bytes: int, max_final_chars: int) -> None:
        self.msg_id = msg_id
        self._stdout = _Capped(max_output_bytes)
        self._stderr = _Capped(max_output_bytes)
        self._other = _Capped(max_output_bytes)  # results, displays and tracebacks share one budget
        self._max_final_chars = max_final_chars
        self.dropped_at_source = 0
        self.result: str | None = None
        self.displays: list[str] = []
        self.final: str | None = None
        self.error: tuple[str, str, str] | None = None
        self.completed = False

    @property
    def stdout(self) -> str:
        return self._stdout.text()

    @property
    def stderr(self) -> str:
        return self._stderr.text()

    @property
    def dropped_bytes(self) -> int:
        """Output bytes lost to the caps: the kernel's (as it reports them) and the host's."""
        return self.dropped_at_source + self._stdout.dropped + self._stderr.dropped + self._other.dropped

    def _keep(self, text: object) -> str:
        """``text`` as far as the shared budget allows."""
        return self._other.add(str(text))

    def absorb(self, kind: str, content: dict[str, Any]) -> None:
        """Take in one iopub message of this cell."""
        if kind == "stream":
            (self._stdout if content.get("name") == "stdout" else self._stderr).add(
                str(content.get("text", ""))
            )
        elif kind in ("execute_result", "display_data"):
            data = content.get("data")
            if not isinstance(data, dict):
                return
            final = data.get(FINAL_MIME)
            dropped = data.get(DROPPED_MIME)
            if isinstance(final, dict) and isinstance(final.get("answer"), str):
                self._take_final(final["answer"])
            elif isinstance(dropped, dict) and isinstance(dropped.get("bytes"), int):
                self.dropped_at_source = min(max(dropped["bytes"], 0), 2**53)
            elif kind == "execute_result":
                self.result = self._keep(data.get("text/plain", ""))
            elif "text/plain" in data:
                self.displays.append(self._keep(data["text/plain"]))
        elif kind == "error":
            lines = content.get("traceback")
            traceback = "\n".join(map(str, lines)) if isinstance(lines, list) else str(lines or "")
            ename, evalue = str(content.get("ename", "Error"))[:200], str(content.get("evalue", ""))[:2000]
            self.error = (ename, evalue, self._keep(strip_ansi(traceback)))

    def _take_final(self, answer: str) -> None:
        if len(answer) <= self._max_final_chars:
            self.final = answer
            return
        message = f"final answer of {len(answer)} chars exceeds the {self._max_final_chars}-char limit"
        self.error = ("FinalAnswerTooLarge", message, f"FinalAnswerTooLarge: {message}")


class KernelConnection:
    """Shell, iopub and control channels to one kernel; ``connect`` once, ``close`` once.

    ``lost`` resolves, with a reason, when the kernel breaks a channel (a message over a limit, garbage
    framing, a closed socket); nothing is reconnected. Messages that do not decode are dropped and counted
    in ``misbehaviour``.
    """

    def __init__(
        self,
        connection_info: dict[str, Any],
        *,
        max_output_bytes: int,
        max_final_chars: int,
        misbehaviour: Misbehaviour,
    ) -> None:
        self._key = str(connection_info["key"]).encode()
        self._paths = {
            name: f"{connection_info['ip']}-{connection_info[f'{name}_port']}" for name in _SOCKET_TYPES
        }
        self._max_output_bytes = max_output_bytes
        self._max_final_chars = max_final_chars
        iopub_bytes = max_iopub_bytes(max_output_bytes, max_final_chars)
        self.limits = {
            "shell": MessageLimits(MAX_REPLY_BYTES, MAX_MESSAGE_FRAMES),
            "control": MessageLimits(MAX_REPLY_BYTES, MAX_MESSAGE_FRAMES),
            "iopub": MessageLimits(iopub_bytes, MAX_MESSAGE_FRAMES),
        }
        self.misbehaviour = misbehaviour
        self.lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._channels: dict[str, ZMTPChannel] = {}
        self._session_id = uuid.uuid4().hex

    async def connect(self, timeout: float) -> None:
        """Open the channels and wait until the kernel answers on shell and publishes on iopub."""
        async with asyncio.timeout(timeout):
            opened = await asyncio.gather(
                *(self._open(name, timeout) for name in _SOCKET_TYPES), return_exceptions=True
            )
            for name, channel in zip(_SOCKET_TYPES, opened, strict=True):
                if isinstance(channel, ZMTPChannel):
                    self._channels[name] = channel
                elif isinstance(channel, ChannelClosed | OSError):
                    self._on_lost(name)(f"connecting failed: {channel}")
                    raise ChannelLost(f"the kernel's {name} socket: {channel}") from channel
                else:
                    raise channel
            msg_id = await self._send("shell", "kernel_info_request", {})
            await self._reply("shell", msg_id)
            # ipykernel greets each new iopub subscriber; any message proves the subscription is live.
            while True:
                message = await self._next("iopub")
                if message.msg_type == "iopub_welcome" or message.parent_id == msg_id:
                    break

    async def _open(self, name: str, timeout: float) -> ZMTPChannel:
        socket_type, peer_types = _SOCKET_TYPES[name]
        return await ZMTPChannel.connect(
            self._paths[name],
            socket_type,
            peer_types,
            self.limits[name],
            self._on_lost(name),
            timeout=timeout,
        )

    def _on_lost(self, name: str) -> Callable[[str], None]:
        def lost(reason: str) -> None:
            if not self.lost.done():
                self.lost.set_result(f"the kernel broke its {name} channel ({reason})")

        return lost

    async def execute(self, code: str, timeout: float) -> RawCell:
        """Run ``code``. A cell still running after ``timeout`` comes back with ``completed`` False."""
        # stop_on_error would abort requests queued behind a failing cell; the host never queues any.
        content = {
            "code": code,
            "silent": False,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": False,
        }
        async with asyncio.timeout(timeout):
            msg_id = await self._send("shell", "execute_request", content)
        cell = RawCell(msg_id, self._max_output_bytes, self._max_final_chars)
        await self.finish(cell, timeout)
        return cell

    async def finish(self, cell: RawCell, timeout: float) -> bool:
        """Go on collecting ``cell``'s output until it ends or ``timeout`` passes; True if it ended."""
        try:
            async with asyncio.timeout(timeout):
                await self._collect(cell)
        except TimeoutError:
            return False
        with contextlib.suppress(TimeoutError):
            await self._reply("shell", cell.msg_id, timeout=1.0)
        return True

    async def interrupt(self, timeout: float) -> None:
        """Ask the kernel, over the control channel, to raise KeyboardInterrupt in the running cell."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                msg_id = await self._send("control", "interrupt_request", {})
                await self._reply("control", msg_id)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        if not self.lost.done():
            self.lost.cancel()

    async def _send(self, name: str, msg_type: str, content: dict[str, Any]) -> str:
        msg_id = uuid.uuid4().hex
        header = {
            "msg_id": msg_id,
            "msg_type": msg_type,
            "username": "rlmbox",
            "session": self._session_id,
            "date": datetime.now(UTC).isoformat(),
            "version": PROTOCOL_VERSION,
        }
        parts = (json.dumps(header).encode(), b"{}", b"{}", json.dumps(content).encode())
        try:
            await self._channels[name].send([DELIMITER, _sign(self._key, parts), *parts])
        except ChannelClosed as exc:
            raise ChannelLost(str(exc)) from None
        return msg_id

    async def _next(self, name: str) -> KernelMessage:
        """The next message on channel ``name`` that decodes; others are dropped and counted."""
        channel = self._channels[name]
        while True:
            try:
                frames = await channel.recv()
            except ChannelClosed as exc:
                raise ChannelLost(str(exc)) from None
            try:
                return decode_message(frames, self._key)
            except UntrustedDataError as exc:
                self.misbehaviour.record("undecodable_kernel_message", channel=name, reason=str(exc))

    async def _reply(self, name: str, msg_id: str, timeout: float | None = None) -> KernelMessage:
        async with asyncio.timeout(timeout):
            while True:
                message = await self._next(name)
                if message.parent_id == msg_id:
                    return message

    async def _collect(self, cell: RawCell) -> None:
        while True:
            message = await self._next("iopub")
            if message.parent_id != cell.msg_id:
                continue
            try:
                content = message.content()
            except UntrustedDataError as exc:
                self.misbehaviour.record("undecodable_kernel_message", channel="iopub", reason=str(exc))
                continue
            if message.msg_type == "status" and content.get("execution_state") == "idle":
                cell.completed = True
                return
            cell.absorb(message.msg_type, content)
