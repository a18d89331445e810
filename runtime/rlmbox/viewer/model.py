"""A trajectory as the viewer shows it: the run, then each node of its call tree with its turns, each turn's
cells, and each cell's sub-calls and children.

``build_view`` is a pure function from the JSONL events to plain dicts (what the page's script reads), so
the grouping is tested without a browser.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlmbox._exceptions import ConfigError

__all__ = ["build_view", "read_events"]

Event = dict[str, Any]


def read_events(path: Path) -> tuple[list[Event], int]:
    """The events of a trajectory file, and how many lines were skipped (a line cut by a crash, say)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise ConfigError(f"trajectory {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read trajectory {path}: {exc}") from exc
    events: list[Event] = []
    skipped = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if isinstance(event, dict) and isinstance(event.get("event"), str):
            events.append(event)
        else:
            skipped += 1
    if not events:
        raise ConfigError(f"{path} holds no trajectory events (is it an rlmbox JSONL trajectory?)")
    return events, skipped


def build_view(events: list[Event]) -> dict[str, Any]:
    """Group the events by node, turn and cell."""
    run: dict[str, Any] = {"status": "running"}
    nodes: dict[str, dict[str, Any]] = {}

    def node(node_id: str) -> dict[str, Any]:
        return nodes.setdefault(
            node_id,
            {
                "id": node_id,
                "parent": None,
                "depth": node_id.count(".") + 1,
                "turns": {},
                "status": "running",
            },
        )

    def turn(node_id: str, iteration: int) -> dict[str, Any]:
        turns = node(node_id)["turns"]
        return turns.setdefault(iteration, {"iteration": iteration, "cells": {}, "notes": []})

    def cell(node_id: str, iteration: int, index: int) -> dict[str, Any]:
        cells = turn(node_id, iteration)["cells"]
        return cells.setdefault(index, {"index": index, "sub_calls": [], "children": []})

    for event in events:
        kind = event["event"]
        node_id = str(event.get("node", "1"))
        if kind == "run_started":
            run.update(
                run_id=event.get("run_id"),
                query=event.get("query"),
                context=event.get("context"),
                started=event.get("time"),
            )
        elif kind in ("run_finished", "run_interrupted"):
            run.update({k: v for k, v in event.items() if k not in ("event", "node")})
            if kind == "run_interrupted":
                run["status"] = "interrupted"
        elif kind == "node_started":
            entry = node(node_id)
            entry.update(
                parent=event.get("parent"),
                depth=event.get("depth", entry["depth"]),
                model=event.get("model"),
                query=_preview(event.get("query")),
                context=event.get("context"),
                limits=event.get("limits"),
            )
            parent = event.get("parent")
            if parent is not None and "parent_iteration" in event:
                spot = cell(str(parent), event["parent_iteration"], event.get("parent_cell", 0))
                spot["children"].append(node_id)
        elif kind == "node_finished":
            node(node_id).update({k: v for k, v in event.items() if k not in ("event", "node", "time")})
            node(node_id)["answer"] = _preview(event.get("answer"))
        elif kind == "system_prompt":
            node(node_id)["system_prompt"] = event.get("text")
        elif kind == "root_call":
            turn(node_id, event["iteration"]).update(
                reply=event.get("reply"),
                model=event.get("model"),
                prompt_tokens=event.get("prompt_tokens"),
                completion_tokens=event.get("completion_tokens"),
                cost_usd=event.get("cost_usd"),
                duration_s=event.get("duration_s"),
            )
        elif kind == "cell":
            cell(node_id, event["iteration"], event["index"]).update(
                code=event.get("code"),
                stdout=_preview(event.get("stdout")),
                stderr=_preview(event.get("stderr")),
                result=event.get("result"),
                error=event.get("error"),
                final=event.get("final"),
                duration_s=event.get("duration_s"),
                timed_out=event.get("timed_out"),
            )
        elif kind == "sub_call":
            cell(node_id, event.get("iteration", 0), event.get("cell", 0))["sub_calls"].append(
                {
                    "model": event.get("model"),
                    "prompt": _preview(event.get("prompt")),
                    "response": _preview(event.get("response")),
                    "error": event.get("error"),
                    "tokens": (event.get("prompt_tokens") or 0) + (event.get("completion_tokens") or 0),
                    "cost_usd": event.get("cost_usd"),
                    "duration_s": event.get("duration_s"),
                }
            )
        elif kind in ("kernel_died", "final_var"):
            text = (
                f"kernel died: {event.get('reason')}"
                if kind == "kernel_died"
                else f"FINAL_VAR({event.get('variable')!r}): {'found' if event.get('found') else 'not found'}"
            )
            iteration = event.get("iteration") or max(node(node_id)["turns"], default=1)
            turn(node_id, iteration)["notes"].append(text)
    for entry in nodes.values():
        entry["turns"] = [_close_turn(t) for _, t in sorted(entry["turns"].items())]
    ordered = sorted(nodes.values(), key=lambda n: [int(p) for p in n["id"].split(".") if p.isdigit()])
    return {"run": run, "nodes": ordered}


def _close_turn(turn: dict[str, Any]) -> dict[str, Any]:
    cells = [c for _, c in sorted(turn["cells"].items())]
    sub_calls = [s for c in cells for s in c["sub_calls"]]
    turn["cells"] = cells
    turn["sub_call_count"] = len(sub_calls)
    turn["tokens"] = (
        (turn.get("prompt_tokens") or 0)
        + (turn.get("completion_tokens") or 0)
        + sum(s["tokens"] for s in sub_calls)
    )
    costs = [turn.get("cost_usd"), *(s["cost_usd"] for s in sub_calls)]
    turn["cost_usd"] = sum(c for c in costs if c) if any(c is not None for c in costs) else None
    turn["seconds"] = (turn.get("duration_s") or 0) + sum(c.get("duration_s") or 0 for c in cells)
    return turn


def _preview(digest: Any) -> str | None:
    """The text of a trajectory digest (``{"preview": ..., "chars": ...}``), marked when it was cut."""
    if digest is None or isinstance(digest, str):
        return digest
    if isinstance(digest, dict) and "preview" in digest:
        text = str(digest["preview"])
        if digest.get("truncated"):
            text += (
                f"\n[... {digest.get('chars', 0) - len(text):,} more characters not kept in the trajectory]"
            )
        return text
    return json.dumps(digest)
