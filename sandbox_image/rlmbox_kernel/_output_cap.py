"""Caps, inside the kernel, what one cell may publish, so that a flood costs the sandbox and not the host.

Every message the kernel sends passes through its Jupyter session's ``send``; ``install`` wraps it. Per
cell (per parent request) stdout, stderr and everything else (results, displays, tracebacks) each get a
byte budget equal to the host's own cap, so honest output reaches the host whole and the host's caps only
ever bite on a kernel that bypasses this module. What is dropped is counted and reported to the host once,
at the end of the cell, on a MIME type of its own. Rich MIME types (images, HTML) are dropped: the host only
reads ``text/plain``.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

from rlmbox_kernel._wire import DROPPED_MIME, FINAL_MIME

# Tracebacks in execute replies (the host reads them from iopub) and messages of kinds the host ignores.
MAX_REPLY_BYTES = 64 * 1024
MAX_EVALUE_CHARS = 2000
_TRACKED_CELLS = 8
_PUBLISHED = ("display_data", "execute_result", "update_display_data")


def cut(text: str, room: int) -> tuple[str, int]:
    """``text`` cut to at most ``room`` UTF-8 bytes (never mid-character), and how many bytes were cut.

    Large ASCII text (the usual flood) is cut without being copied whole.
    """
    room = max(room, 0)
    if text.isascii():
        return (text, 0) if len(text) <= room else (text[:room], len(text) - room)
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= room:
        return text, 0
    kept = encoded[:room].decode("utf-8", "ignore")
    return kept, len(encoded) - len(kept.encode("utf-8"))


class _Budget:
    """What one cell may still publish on each channel, and how much it had dropped."""

    def __init__(self, limit: int) -> None:
        self.room = {"stdout": limit, "stderr": limit, "other": limit}
        self.dropped = 0

    def take(self, channel: str, text: str) -> str:
        kept, dropped = cut(text, self.room[channel])
        used = len(kept) if kept.isascii() else len(kept.encode("utf-8", "replace"))
        self.room[channel] = max(0, self.room[channel] - used)
        self.dropped += dropped
        return kept


class OutputCap:
    """Limits each cell's published bytes; ``limit(msg)`` returns the message to send, or None to drop it."""

    def __init__(self, max_cell_bytes: int) -> None:
        self._max_cell_bytes = max_cell_bytes
        self._budgets: OrderedDict[str, _Budget] = OrderedDict()

    def budget(self, parent_id: str) -> _Budget:
        budget = self._budgets.get(parent_id)
        if budget is None:
            budget = self._budgets[parent_id] = _Budget(self._max_cell_bytes)
            while len(self._budgets) > _TRACKED_CELLS:
                self._budgets.popitem(last=False)
        return budget

    def take_dropped(self, parent_id: str) -> int:
        """The bytes dropped so far from the output of request ``parent_id``; the count starts again."""
        budget = self._budgets.get(parent_id)
        if budget is None:
            return 0
        dropped, budget.dropped = budget.dropped, 0
        return dropped

    def limit(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        kind = msg["header"]["msg_type"]
        content = msg.get("content")
        if not isinstance(content, dict):
            return msg
        budget = self.budget(str(msg.get("parent_header", {}).get("msg_id", "")))
        if kind == "stream":
            channel = "stderr" if content.get("name") == "stderr" else "stdout"
            content["text"] = budget.take(channel, str(content.get("text", "")))
            return msg if content["text"] else None
        if kind in _PUBLISHED:
            return self._limit_data(msg, content, budget)
        if kind == "error":
            content["evalue"] = cut(str(content.get("evalue", "")), MAX_EVALUE_CHARS)[0]
            content["traceback"] = [budget.take("other", "\n".join(map(str, content.get("traceback", []))))]
            return msg
        if kind == "execute_reply" and isinstance(content.get("traceback"), list):
            content["evalue"] = cut(str(content.get("evalue", "")), MAX_EVALUE_CHARS)[0]
            content["traceback"] = [cut("\n".join(map(str, content["traceback"])), MAX_REPLY_BYTES)[0]]
            return msg
        if kind not in ("status", "execute_input") and _size(content) > MAX_REPLY_BYTES:
            budget.dropped += _size(content)
            return None
        return msg

    def _limit_data(
        self, msg: dict[str, Any], content: dict[str, Any], budget: _Budget
    ) -> dict[str, Any] | None:
        data = content.get("data")
        if not isinstance(data, dict) or FINAL_MIME in data or DROPPED_MIME in data:
            return msg  # FINAL bounds its own answer; the drop report is ours
        kept: dict[str, Any] = {}
        for mime, value in data.items():
            if mime == "text/plain" and isinstance(value, str):
                kept[mime] = budget.take("other", value)
            else:
                budget.dropped += _size(value)
        content["data"], content["metadata"] = kept, {}
        return msg if kept.get("text/plain") else None


def _size(value: Any) -> int:
    try:
        return len(json.dumps(value, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass"))
    except (TypeError, ValueError):
        return 0


def install(shell: Any, max_cell_bytes: int) -> OutputCap:
    """Route every message of ``shell``'s kernel through an OutputCap. Just before a request's final idle
    status (all its output is flushed by then), report what its cell dropped."""
    cap = OutputCap(max_cell_bytes)
    session = shell.kernel.session
    send = session.send
    lock = threading.Lock()  # the IOPub thread sends streams, the shell and control threads the rest

    def capped_send(  # Session.send's signature: ipykernel passes up to nine arguments by position
        stream: Any,
        msg_or_type: Any,
        content: Any = None,
        parent: Any = None,
        ident: Any = None,
        buffers: Any = None,
        track: bool = False,
        header: Any = None,
        metadata: Any = None,
    ) -> Any:
        if isinstance(msg_or_type, str):
            msg_or_type = session.msg(
                msg_or_type, content=content, parent=parent, header=header, metadata=metadata
            )
        with lock:
            msg = cap.limit(msg_or_type)
            is_idle = (
                msg is not None
                and msg["header"]["msg_type"] == "status"
                and msg["content"].get("execution_state") == "idle"
            )
            dropped = cap.take_dropped(str(msg["parent_header"].get("msg_id", ""))) if is_idle else 0
        if msg is None:
            return None
        if dropped:
            notice = f"[{dropped} bytes of output dropped in the sandbox: over {max_cell_bytes} a cell]"
            report = {"data": {DROPPED_MIME: {"bytes": dropped}, "text/plain": notice}, "metadata": {}}
            send(stream, session.msg("display_data", report, parent=msg["parent_header"]))
        return send(stream, msg, ident=ident, buffers=buffers, track=track)

    session.send = capped_send
    return cap
