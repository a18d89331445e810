"""The host's connection to a sandboxed IPython kernel over ZMQ ``ipc`` sockets (sole jupyter_client user).

The connection is made once, after the kernel has bound its sockets and before any untrusted code runs, with
ZMQ reconnection disabled: if sandboxed code ever swapped a socket file, the host would not follow it.
Everything the kernel sends is untrusted: sizes are capped by ZMQ (whole messages) and here (cell output).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import re
import time
from typing import Any

import structlog
import zmq
import zmq.asyncio
from jupyter_client.asynchronous import AsyncKernelClient

from rlmbox.protocol import FINAL_MIME

__all__ = ["KernelConnection", "RawCell"]

log = structlog.get_logger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


class _Capped:
    """Accumulates text up to a byte budget and counts what it had to drop."""

    def __init__(self, limit: int) -> None:
        self._parts: list[str] = []
        self._room = limit
        self.dropped = 0

    def add(self, text: str) -> None:
        size = len(text.encode("utf-8", "replace"))
        if size <= self._room:
            self._parts.append(text)
            self._room -= size
            return
        kept = text.encode("utf-8", "replace")[: self._room].decode("utf-8", "ignore")
        self._parts.append(kept)
        self.dropped += size - len(kept.encode())
        self._room = 0

    def text(self) -> str:
        return "".join(self._parts)


class RawCell:
    """What the kernel published for one execute request (partial when ``completed`` is False)."""

    def __init__(self, msg_id: str, max_output_bytes: int) -> None:
        self.msg_id = msg_id
        self._stdout = _Capped(max_output_bytes)
        self._stderr = _Capped(max_output_bytes)
        self._limit = max_output_bytes
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
        return self._stdout.dropped + self._stderr.dropped

    def absorb(self, kind: str, content: dict[str, Any]) -> None:
        """Take in one iopub message of this cell."""
        if kind == "stream":
            (self._stdout if content.get("name") == "stdout" else self._stderr).add(
                str(content.get("text", ""))
            )
        elif kind in ("execute_result", "display_data"):
            data = content.get("data") or {}
            final = data.get(FINAL_MIME)
            if isinstance(final, dict) and isinstance(final.get("answer"), str):
                self.final = final["answer"]
            elif kind == "execute_result":
                self.result = str(data.get("text/plain", ""))[: self._limit]
            elif "text/plain" in data:
                self.displays.append(str(data["text/plain"])[: self._limit])
        elif kind == "error":
            traceback = strip_ansi("\n".join(str(line) for line in content.get("traceback", [])))
            self.error = (
                str(content.get("ename", "Error")),
                str(content.get("evalue", "")),
                traceback[: self._limit],
            )


class KernelConnection:
    """Shell, iopub and control channels to one kernel; ``connect`` once, ``close`` once."""

    def __init__(self, connection_info: dict[str, Any], *, max_output_bytes: int) -> None:
        self._context = zmq.asyncio.Context()
        # Defaults for every socket of this context: never reconnect, never accept a giant message.
        self._context.setsockopt(zmq.RECONNECT_IVL, -1)
        self._context.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self._client = AsyncKernelClient(context=self._context)
        self._client.load_connection_info(connection_info)
        self._max_output_bytes = max_output_bytes

    async def connect(self, timeout: float) -> None:
        """Open the channels and wait until the kernel answers on shell and publishes on iopub."""
        self._client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=True)
        msg_id = self._client.kernel_info()
        async with asyncio.timeout(timeout):
            await self._reply(self._client.shell_channel, msg_id)
            # ipykernel greets each new iopub subscriber; any message proves the subscription is live.
            while True:
                message = await self._client.iopub_channel.get_msg()
                if message["msg_type"] == "iopub_welcome" or message["parent_header"].get("msg_id") == msg_id:
                    break

    async def execute(self, code: str, timeout: float) -> RawCell:
        """Run ``code``. A cell still running after ``timeout`` comes back with ``completed`` False."""
        # stop_on_error would abort requests queued behind a failing cell; the host never queues any.
        msg_id = self._client.execute(code, store_history=False, allow_stdin=False, stop_on_error=False)
        cell = RawCell(msg_id, self._max_output_bytes)
        try:
            await asyncio.wait_for(self._collect(msg_id, cell), timeout)
        except TimeoutError:
            return cell
        with contextlib.suppress(TimeoutError):
            await self._reply(self._client.shell_channel, msg_id, timeout=1.0)
        return cell

    async def interrupt(self, timeout: float) -> None:
        """Ask the kernel, over the control channel, to raise KeyboardInterrupt in the running cell."""
        message = self._client.session.msg("interrupt_request", {})
        self._client.control_channel.send(message)
        with contextlib.suppress(TimeoutError):
            await self._reply(self._client.control_channel, message["header"]["msg_id"], timeout=timeout)

    async def drain_until_idle(self, msg_id: str, timeout: float) -> bool:
        """After an interrupt: wait for cell ``msg_id`` to end. True if it did within ``timeout``."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                message = await self._client.iopub_channel.get_msg(timeout=remaining)
            except queue.Empty:
                return False
            if (
                message["msg_type"] == "status"
                and message["content"].get("execution_state") == "idle"
                and message["parent_header"].get("msg_id") == msg_id
            ):
                return True
        return False

    def close(self) -> None:
        self._client.stop_channels()
        self._context.destroy(linger=0)

    async def _reply(self, channel: Any, msg_id: str, timeout: float | None = None) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                message = await channel.get_msg()
                if message["parent_header"].get("msg_id") == msg_id:
                    return message

    async def _collect(self, msg_id: str, cell: RawCell) -> None:
        while True:
            message = await self._client.iopub_channel.get_msg()
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            content = message["content"]
            if message["msg_type"] == "status" and content.get("execution_state") == "idle":
                cell.completed = True
                return
            cell.absorb(message["msg_type"], content)
