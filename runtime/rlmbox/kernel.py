"""The host's connection to a sandboxed IPython kernel over ZMQ ``ipc`` sockets (sole jupyter_client user).

The connection is made once, after the kernel has bound its sockets and before any untrusted code runs, with
ZMQ reconnection disabled: if sandboxed code ever swapped a socket file, the host would not follow it.
Everything the kernel sends is untrusted: sizes are capped by ZMQ (whole messages) and here (cell output).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import structlog
import zmq
import zmq.asyncio
from jupyter_client.asynchronous import AsyncKernelClient

from rlmbox.protocol import FINAL_MIME

__all__ = ["KernelConnection", "RawCell"]

log = structlog.get_logger(__name__)

# Per ZMQ frame and per socket queue: what a flooding kernel can make the host hold is bounded by about
# their product. A frame over the limit drops the connection (the cell then times out and the kernel is
# replaced); legitimate output is capped far below it anyway.
MAX_FRAME_BYTES = 8 * 1024 * 1024
RECEIVE_QUEUE_MESSAGES = 64
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
        size = len(text.encode("utf-8", "replace"))
        if size <= self._room:
            self._parts.append(text)
            self._room -= size
            return text
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
        return self._stdout.dropped + self._stderr.dropped + self._other.dropped

    def _keep(self, text: object) -> str:
        """``text`` as far as the shared budget allows."""
        return self._other.add(str(text))

    def absorb(self, kind: str, content: dict[str, Any]) -> None:
        """Take in one iopub message of this cell (its content already known to be a dict)."""
        if kind == "stream":
            (self._stdout if content.get("name") == "stdout" else self._stderr).add(
                str(content.get("text", ""))
            )
        elif kind in ("execute_result", "display_data"):
            data = content.get("data")
            if not isinstance(data, dict):
                return
            final = data.get(FINAL_MIME)
            if isinstance(final, dict) and isinstance(final.get("answer"), str):
                self._take_final(final["answer"])
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
    """Shell, iopub and control channels to one kernel; ``connect`` once, ``close`` once."""

    def __init__(
        self, connection_info: dict[str, Any], *, max_output_bytes: int, max_final_chars: int
    ) -> None:
        self._context = zmq.asyncio.Context()
        # Defaults for every socket of this context: never reconnect, never accept a giant message.
        self._context.setsockopt(zmq.RECONNECT_IVL, -1)
        self._context.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        self._context.setsockopt(zmq.RCVHWM, RECEIVE_QUEUE_MESSAGES)
        self._client = AsyncKernelClient(context=self._context)
        self._client.load_connection_info(connection_info)
        self._max_output_bytes = max_output_bytes
        self._max_final_chars = max_final_chars

    async def connect(self, timeout: float) -> None:
        """Open the channels and wait until the kernel answers on shell and publishes on iopub."""
        self._client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=True)
        msg_id = self._client.kernel_info()
        async with asyncio.timeout(timeout):
            await self._reply(self._client.shell_channel, msg_id)
            # ipykernel greets each new iopub subscriber; any message proves the subscription is live.
            while True:
                message = await self._client.iopub_channel.get_msg()
                if message.get("msg_type") == "iopub_welcome" or _parent_id(message) == msg_id:
                    break

    async def execute(self, code: str, timeout: float) -> RawCell:
        """Run ``code``. A cell still running after ``timeout`` comes back with ``completed`` False."""
        # stop_on_error would abort requests queued behind a failing cell; the host never queues any.
        msg_id = self._client.execute(code, store_history=False, allow_stdin=False, stop_on_error=False)
        cell = RawCell(msg_id, self._max_output_bytes, self._max_final_chars)
        await self.finish(cell, timeout)
        return cell

    async def finish(self, cell: RawCell, timeout: float) -> bool:
        """Go on collecting ``cell``'s output until it ends or ``timeout`` passes; True if it ended."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._collect(cell.msg_id, cell), timeout)
        if cell.completed:
            with contextlib.suppress(TimeoutError):
                await self._reply(self._client.shell_channel, cell.msg_id, timeout=1.0)
        return cell.completed

    async def interrupt(self, timeout: float) -> None:
        """Ask the kernel, over the control channel, to raise KeyboardInterrupt in the running cell."""
        message = self._client.session.msg("interrupt_request", {})
        self._client.control_channel.send(message)
        with contextlib.suppress(TimeoutError):
            await self._reply(self._client.control_channel, message["header"]["msg_id"], timeout=timeout)

    def close(self) -> None:
        self._client.stop_channels()
        self._context.destroy(linger=0)

    async def _reply(self, channel: Any, msg_id: str, timeout: float | None = None) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                message = await channel.get_msg()
                if _parent_id(message) == msg_id:
                    return message

    async def _collect(self, msg_id: str, cell: RawCell) -> None:
        while True:
            message = await self._client.iopub_channel.get_msg()
            content = message.get("content")
            if _parent_id(message) != msg_id or not isinstance(content, dict):
                continue
            if message.get("msg_type") == "status" and content.get("execution_state") == "idle":
                cell.completed = True
                return
            cell.absorb(str(message.get("msg_type")), content)


def _parent_id(message: dict[str, Any]) -> str | None:
    """The id of the request a kernel message answers, if the message is well-formed enough to say."""
    parent = message.get("parent_header")
    msg_id = parent.get("msg_id") if isinstance(parent, dict) else None
    return msg_id if isinstance(msg_id, str) else None
