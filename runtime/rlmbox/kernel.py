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

from rlmbox.protocol import DROPPED_MIME, FINAL_MIME

__all__ = ["KernelConnection", "RawCell", "kernel_context", "max_frame_bytes"]

log = structlog.get_logger(__name__)

# What a kernel can make the host hold is bounded by (messages queued per socket) x (largest frame). The
# kernel caps its own output at the source (``rlmbox_kernel._output_cap``) far below these; a frame over a
# limit is a protocol violation: ZMQ drops the connection, the host notices at once and replaces the kernel.
RECEIVE_QUEUE_MESSAGES = 4
MAX_REPLY_FRAME_BYTES = 1024 * 1024  # shell and control replies: small, tracebacks capped in the kernel


def max_frame_bytes(max_output_bytes: int, max_final_chars: int) -> int:
    """Largest iopub frame an honest kernel sends: its capped output JSON-escaped (6 bytes a char at most)."""
    return 1024 * 1024 + 6 * max(max_output_bytes, max_final_chars)


def kernel_context() -> zmq.asyncio.Context:
    """A ZMQ context whose sockets never reconnect (a swapped socket file is never followed) and queue
    little."""
    context = zmq.asyncio.Context()
    context.setsockopt(zmq.RECONNECT_IVL, -1)
    context.setsockopt(zmq.RCVHWM, RECEIVE_QUEUE_MESSAGES)
    return context


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

    ``lost`` resolves, with a reason, when the kernel breaks a channel (an oversize frame, a closed socket);
    nothing is reconnected.
    """

    def __init__(
        self, connection_info: dict[str, Any], *, max_output_bytes: int, max_final_chars: int
    ) -> None:
        self._context = kernel_context()
        self._client = AsyncKernelClient(context=self._context)
        self._client.load_connection_info(connection_info)
        self._max_output_bytes = max_output_bytes
        self._max_final_chars = max_final_chars
        self.max_frame_bytes = max_frame_bytes(max_output_bytes, max_final_chars)
        self.lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._monitors: list[asyncio.Task[None]] = []
        self.undecodable = 0

    async def connect(self, timeout: float) -> None:
        """Open the channels and wait until the kernel answers on shell and publishes on iopub."""
        # A channel's socket is created, with the context's current options, the first time it is named.
        self._context.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY_FRAME_BYTES)
        channels = {"shell": self._client.shell_channel, "control": self._client.control_channel}
        self._context.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes)
        channels["iopub"] = self._client.iopub_channel
        self._client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=True)
        for name, channel in channels.items():
            self._monitors.append(asyncio.ensure_future(self._watch(name, channel.socket)))
        msg_id = self._client.kernel_info()
        async with asyncio.timeout(timeout):
            await self._reply(self._client.shell_channel, msg_id)
            # ipykernel greets each new iopub subscriber; any message proves the subscription is live.
            while True:
                message = await self._next(self._client.iopub_channel)
                if message.get("msg_type") == "iopub_welcome" or _parent_id(message) == msg_id:
                    break

    async def _watch(self, name: str, socket: zmq.asyncio.Socket) -> None:
        """Resolve ``lost`` when the kernel's end of ``socket`` goes away."""
        monitor = socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        try:
            await monitor.recv_multipart()
        except zmq.ZMQError:
            return  # the context is being torn down
        finally:
            with contextlib.suppress(zmq.ZMQError):
                socket.disable_monitor()
                monitor.close(linger=0)
        if not self.lost.done():
            limit = MAX_REPLY_FRAME_BYTES if name != "iopub" else self.max_frame_bytes
            reason = f"a message over {limit / 2**20:.1f} MiB, or a closed socket"
            self.lost.set_result(f"the kernel broke its {name} channel ({reason})")

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
        for monitor in self._monitors:
            monitor.cancel()
        self._client.stop_channels()
        self._context.destroy(linger=0)

    async def _next(self, channel: Any) -> dict[str, Any]:
        """The next message on ``channel`` that decodes. Frames that do not (a bad signature, content that is
        not JSON, garbage) are dropped: jupyter_client has consumed them by the time it raises."""
        while True:
            try:
                return await channel.get_msg()
            except zmq.ZMQError:
                raise  # the socket itself failed: nothing more will come
            except Exception as exc:  # anything the bytes made the decoder raise (RecursionError included)
                self.undecodable += 1
                if self.undecodable == 1:
                    log.warning("kernel.undecodable_message", error=str(exc)[:200])

    async def _reply(self, channel: Any, msg_id: str, timeout: float | None = None) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                message = await self._next(channel)
                if _parent_id(message) == msg_id:
                    return message

    async def _collect(self, msg_id: str, cell: RawCell) -> None:
        while True:
            message = await self._next(self._client.iopub_channel)
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
