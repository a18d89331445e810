"""A trajectory as the viewer shows it: the run, then each node of its call tree with its turns, each turn's
cells, and each cell's sub-calls and children.

``build_view`` is a pure function from the JSONL events to plain dicts (what the page's script reads), so
the grouping is tested without a browser.

A trajectory is untrusted: model output, cell output, or a file made by hand. Reading never raises on its
content. Invalid UTF-8 and lone surrogates become U+FFFD, ``NaN``, infinities and numbers too large for a
double become ``null``, a line that is not a JSON object with a string ``event`` is skipped, and values
nested deeper than ``MAX_NESTING`` are cut. ``build_view`` then checks each field as it reads it: texts are
strings (any other JSON value is shown as its JSON text), counts are finite numbers, anything else is
``None``. So every view is valid JSON of the shape the page expects.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rlmbox._exceptions import ConfigError
from rlmbox.files import read_regular_file
from rlmbox.untrusted import clean_text

__all__ = ["MAX_NESTING", "build_view", "parse_event", "read_events"]

Event = dict[str, Any]
Number = int | float

MAX_NESTING = 32  # deeper JSON values are replaced by CUT: no walk over a value can run out of stack
CUT = "(nested too deeply)"
_EXACT_DIGITS = 18  # longer integers are read as floats (ints of thousands of digits cannot be parsed)


# -- reading ------------------------------------------------------------------------------------------------


def read_events(path: Path) -> tuple[list[Event], int]:
    """The events of a trajectory file, and how many lines were skipped (a line cut by a crash, say)."""
    try:
        raw = read_regular_file(path, name=f"trajectory {path}")
    except FileNotFoundError as exc:
        raise ConfigError(f"trajectory {path} does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read trajectory {path}: {exc}") from exc
    events: list[Event] = []
    skipped = 0
    # Only "\n" ends a line: str.splitlines() would also split at U+2028, U+0085... which JSON strings
    # written with ensure_ascii=False may hold.
    for line in raw.decode("utf-8", errors="replace").split("\n"):
        if not line.strip():
            continue
        event = parse_event(line)
        if event is None:
            skipped += 1
        else:
            events.append(event)
    if not events:
        raise ConfigError(f"{path} holds no trajectory events (is it an rlmbox JSONL trajectory?)")
    return events, skipped


def parse_event(line: str) -> Event | None:
    """One trajectory line as a clean event, or None when it is not one."""
    try:
        value = json.loads(line, parse_constant=_no_number, parse_float=_float, parse_int=_int)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        return None
    if not isinstance(value, dict) or not isinstance(value.get("event"), str):
        return None
    return _clean(value, 0)


def _no_number(_name: str) -> None:
    return None  # NaN, Infinity, -Infinity: not JSON, and a page could not embed them


def _float(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


def _int(text: str) -> Number | None:
    return int(text) if len(text.lstrip("-")) <= _EXACT_DIGITS else _float(text)


def _clean(value: Any, depth: int) -> Any:
    """A parsed JSON value with its strings cleaned and its nesting cut at ``MAX_NESTING``."""
    if isinstance(value, str):
        return clean_text(value)
    if not isinstance(value, dict | list):
        return value
    if depth >= MAX_NESTING:
        return CUT
    if isinstance(value, list):
        return [_clean(item, depth + 1) for item in value]
    return {clean_text(key): _clean(item, depth + 1) for key, item in value.items()}


# -- fields, read as the page needs them --------------------------------------------------------------------


def _text(value: Any) -> str | None:
    """A text field: a string as is, any other JSON value as its JSON text, None as None."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _number(value: Any) -> Number | None:
    """A finite number, or None (a bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if isinstance(value, int) or math.isfinite(value) else None


def _flag(value: Any) -> bool:
    return value is True


def _key(value: Any) -> int | None:
    """An iteration or cell index: an int, or None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _total(values: Iterable[Any]) -> Number | None:
    """The sum of the numbers among ``values`` (0 for none), or None if it overflows."""
    total = sum(number for number in map(_number, values) if number is not None)
    return total if isinstance(total, int) or math.isfinite(total) else None


def _preview(digest: Any) -> str | None:
    """The text of a trajectory digest (``{"preview": ..., "chars": ...}``), marked when it was cut."""
    if not isinstance(digest, dict) or "preview" not in digest:
        return _text(digest)
    text = _text(digest["preview"]) or ""
    chars = _number(digest.get("chars"))
    if digest.get("truncated") is True and chars is not None and chars > len(text):
        text += f"\n[... {chars - len(text):,} more characters not kept in the trajectory]"
    return text


def _error(value: Any) -> str | None:
    """A cell's error (``{"ename": ..., "evalue": ...}``) as one line of text."""
    if isinstance(value, dict) and ("ename" in value or "evalue" in value):
        return f"{_text(value.get('ename')) or 'Error'}: {_text(value.get('evalue')) or ''}"
    return _text(value)


# -- grouping -----------------------------------------------------------------------------------------------


class _Tree:
    """The view being built: the run, and each node's turns and cells, keyed by id, iteration and index."""

    def __init__(self) -> None:
        self.run: dict[str, Any] = {"status": "running", "tokens": 0, "cost_known": True}
        self.nodes: dict[str, dict[str, Any]] = {}

    def node(self, node_id: str) -> dict[str, Any]:
        return self.nodes.setdefault(
            node_id,
            {
                "id": node_id,
                "parent": None,
                "depth": node_id.count(".") + 1,
                "turns": {},
                "status": "running",
            },
        )

    def turn(self, node_id: str, iteration: Any) -> dict[str, Any]:
        """A node's turn; an event without a valid iteration joins the node's last turn (1 if none)."""
        turns = self.node(node_id)["turns"]
        key = _key(iteration)
        if key is None:
            key = max(turns, default=1)
        return turns.setdefault(key, {"iteration": key, "cells": {}, "notes": []})

    def cell(self, node_id: str, iteration: Any, index: Any) -> dict[str, Any]:
        """A turn's cell; without a valid index, cell 0 (where FINAL_VAR lookups run)."""
        cells = self.turn(node_id, iteration)["cells"]
        key = _key(index) or 0
        return cells.setdefault(key, {"index": key, "sub_calls": [], "children": []})


def _run_started(tree: _Tree, node_id: str, event: Event) -> None:
    tree.run.update(
        run_id=_text(event.get("run_id")),
        query=_text(event.get("query")),
        context=_preview(event.get("context")),
        started=_number(event.get("time")),
    )


def _run_finished(tree: _Tree, node_id: str, event: Event) -> None:
    usage = event.get("usage")
    models = [u for u in usage.values() if isinstance(u, dict)] if isinstance(usage, dict) else []
    tree.run.update(
        status=_text(event.get("status")) or tree.run["status"],
        answer=_text(event.get("answer")),
        error=_text(event.get("error")),
        budget_limit=_text(event.get("budget_limit")),
        iterations=_number(event.get("iterations")),
        sub_calls=_number(event.get("sub_calls")),
        cost_usd=_number(event.get("cost_usd")),
        elapsed_s=_number(event.get("elapsed_s")),
        tokens=_total(u.get(k) for u in models for k in ("prompt_tokens", "completion_tokens")),
        cost_known=all(u.get("cost_known") is not False for u in models),
    )


def _run_interrupted(tree: _Tree, node_id: str, event: Event) -> None:
    _run_finished(tree, node_id, event)
    tree.run["status"] = "interrupted"


def _node_started(tree: _Tree, node_id: str, event: Event) -> None:
    entry = tree.node(node_id)
    parent = _text(event.get("parent")) or None
    entry.update(
        parent=parent,
        depth=_number(event.get("depth")) or entry["depth"],
        model=_text(event.get("model")),
        query=_preview(event.get("query")),
        context=_preview(event.get("context")),
    )
    if parent is not None and "parent_iteration" in event:
        spot = tree.cell(parent, event["parent_iteration"], event.get("parent_cell"))
        spot["children"].append(node_id)


def _node_finished(tree: _Tree, node_id: str, event: Event) -> None:
    tree.node(node_id).update(
        status=_text(event.get("status")) or "running",
        answer=_preview(event.get("answer")),
        error=_text(event.get("error")),
        budget_limit=_text(event.get("budget_limit")),
        iterations=_number(event.get("iterations")),
        sub_calls=_number(event.get("sub_calls")),
        tokens=_number(event.get("tokens")),
        elapsed_s=_number(event.get("elapsed_s")),
    )


def _system_prompt(tree: _Tree, node_id: str, event: Event) -> None:
    tree.node(node_id)["system_prompt"] = _text(event.get("text"))


def _root_call(tree: _Tree, node_id: str, event: Event) -> None:
    tree.turn(node_id, event.get("iteration")).update(
        reply=_text(event.get("reply")),
        model=_text(event.get("model")),
        prompt_tokens=_number(event.get("prompt_tokens")),
        completion_tokens=_number(event.get("completion_tokens")),
        cost_usd=_number(event.get("cost_usd")),
        duration_s=_number(event.get("duration_s")),
    )


def _resample_call(tree: _Tree, node_id: str, event: Event) -> None:
    """The reply repeated an earlier one and was asked for again: the turn shows the new reply, a note the
    first, and counts both calls."""
    turn = tree.turn(node_id, event.get("iteration"))
    params = event.get("params") if isinstance(event.get("params"), dict) else {}
    sampling = ", ".join(f"{key} {_text(value)}" for key, value in sorted(params.items()))
    first = _text(turn.get("reply")) or ""
    turn["notes"].append(
        f"the reply repeated an earlier one and was asked for again ({sampling}): {first[:300]}"
    )
    spent = {key: turn.get(key) for key in ("prompt_tokens", "completion_tokens", "cost_usd", "duration_s")}
    _root_call(tree, node_id, event)
    for key, before in spent.items():
        if before is not None:
            turn[key] = _total([before, turn.get(key)])


def _cell(tree: _Tree, node_id: str, event: Event) -> None:
    tree.cell(node_id, event.get("iteration"), event.get("index")).update(
        code=_text(event.get("code")),
        stdout=_preview(event.get("stdout")),
        stderr=_preview(event.get("stderr")),
        result=_text(event.get("result")),
        error=_error(event.get("error")),
        final=_text(event.get("final")),
        duration_s=_number(event.get("duration_s")),
        timed_out=_flag(event.get("timed_out")),
    )


def _sub_call(tree: _Tree, node_id: str, event: Event) -> None:
    tree.cell(node_id, event.get("iteration"), event.get("cell"))["sub_calls"].append(
        {
            "model": _text(event.get("model")),
            "prompt": _preview(event.get("prompt")),
            "response": _preview(event.get("response")),
            "error": _text(event.get("error")),
            "tokens": _total([event.get("prompt_tokens"), event.get("completion_tokens")]),
            "cost_usd": _number(event.get("cost_usd")),
            "duration_s": _number(event.get("duration_s")),
        }
    )


def _note(tree: _Tree, node_id: str, event: Event) -> None:
    if event["event"] == "kernel_died":
        text = f"kernel died: {_text(event.get('reason'))}"
    else:
        found = "found" if event.get("found") else "not found"
        text = f"FINAL_VAR({_text(event.get('variable'))!r}): {found}"
    tree.turn(node_id, event.get("iteration") or None)["notes"].append(text)  # iteration 0: the last turn


_HANDLERS: dict[str, Callable[[_Tree, str, Event], None]] = {
    "run_started": _run_started,
    "run_finished": _run_finished,
    "run_interrupted": _run_interrupted,
    "node_started": _node_started,
    "node_finished": _node_finished,
    "system_prompt": _system_prompt,
    "root_call": _root_call,
    "resample_call": _resample_call,
    "cell": _cell,
    "sub_call": _sub_call,
    "kernel_died": _note,
    "final_var": _note,
}


def build_view(events: list[Event]) -> dict[str, Any]:
    """Group the events (as ``read_events`` returns them) by node, turn and cell; nodes come in call-tree
    order, each with its ``level``."""
    tree = _Tree()
    for event in events:
        handler = _HANDLERS.get(event["event"])
        if handler is not None:
            handler(tree, _text(event.get("node")) or "1", event)
    for entry in tree.nodes.values():
        entry["turns"] = [_close_turn(t) for _, t in sorted(entry["turns"].items())]
    return {"run": tree.run, "nodes": _tree_order(tree.nodes)}


def _close_turn(turn: dict[str, Any]) -> dict[str, Any]:
    cells = [c for _, c in sorted(turn["cells"].items())]
    sub_calls = [s for c in cells for s in c["sub_calls"]]
    turn["cells"] = cells
    turn["sub_call_count"] = len(sub_calls)
    turn["tokens"] = _total(
        [turn.get("prompt_tokens"), turn.get("completion_tokens"), *(s["tokens"] for s in sub_calls)]
    )
    costs = [turn.get("cost_usd"), *(s["cost_usd"] for s in sub_calls)]
    turn["cost_usd"] = _total(costs) if any(c is not None for c in costs) else None
    turn["seconds"] = _total([turn.get("duration_s"), *(c.get("duration_s") for c in cells)])
    return turn


def _tree_order(nodes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The nodes depth-first, children in id order, each with its ``level`` below its root.

    A node whose parent is not in the trajectory is a root; so is the first node of a parent cycle (which
    only a hand-made file can hold). Iterative: a chain of any length cannot overflow a stack.
    """
    by_id = sorted(nodes.values(), key=lambda n: _id_key(n["id"]))
    children: dict[str | None, list[dict[str, Any]]] = {}
    for entry in by_id:
        parent = entry["parent"] if entry["parent"] in nodes else None
        children.setdefault(parent, []).append(entry)
    ordered: list[dict[str, Any]] = []
    placed: set[str] = set()
    for start in [*children.get(None, []), *by_id]:
        stack = [(start, 0)]
        while stack:
            entry, level = stack.pop()
            if entry["id"] in placed:
                continue
            placed.add(entry["id"])
            ordered.append({**entry, "level": level})
            stack.extend((child, level + 1) for child in reversed(children.get(entry["id"], [])))
    return ordered


def _id_key(node_id: str) -> list[tuple[int, int, str]]:
    """Sorts "1.2" before "1.10": ASCII digit parts by value (compared as text, so any length), then text."""
    return [
        (0, len(part.lstrip("0")), part.lstrip("0")) if part.isascii() and part.isdigit() else (1, 0, part)
        for part in node_id.split(".")
    ]
