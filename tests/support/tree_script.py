"""Scripted models for a whole call tree: each node's root model is scripted by the start of its query.

Every node's first user message starts with ``Query: <its query>``; a reply is chosen by the longest script
key that query starts with and by how many turns the node has had. Requests without a system prompt are
plain sub-model calls (``llm_query``, or ``rlm_query`` at the depth limit) and go to ``sub``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from support.openai_server import Reply

__all__ = ["TreeScript", "echo"]

Step = Reply | Callable[[dict[str, Any]], Reply]


def echo(request: dict[str, Any]) -> Reply:
    """A sub-model that answers with the text after 'echo ' in its prompt."""
    prompt = request["messages"][-1]["content"]
    return Reply(text=prompt.split("echo ", 1)[-1].strip())


class TreeScript:
    """``ScriptedOpenAIServer(TreeScript({"top": [...], "part": [...]}, sub=echo))``"""

    def __init__(self, turns: Mapping[str, Sequence[Step]], *, sub: Step = echo) -> None:
        self.turns = dict(turns)
        self.sub = sub
        self._lock = threading.Lock()
        self.node_requests: list[dict[str, Any]] = []
        self.sub_requests: list[dict[str, Any]] = []

    def __call__(self, request: dict[str, Any]) -> Reply:
        messages = request["messages"]
        if messages[0]["role"] != "system":
            with self._lock:
                self.sub_requests.append(request)
            return _reply(self.sub, request)
        with self._lock:
            self.node_requests.append(request)
        query = query_of(request)
        key = max((k for k in self.turns if query.startswith(k)), key=len, default=None)
        if key is None:
            return Reply(status=500, error_message=f"no script for query {query!r}")
        steps = self.turns[key]
        turn = sum(1 for message in messages if message["role"] == "assistant")
        if turn >= len(steps):
            return Reply(status=500, error_message=f"script for {key!r} has no turn {turn + 1}")
        return _reply(steps[turn], request)

    def requests_for(self, query_start: str) -> list[dict[str, Any]]:
        """Root-model requests of the nodes whose query starts with ``query_start``."""
        with self._lock:
            return [r for r in self.node_requests if query_of(r).startswith(query_start)]


def query_of(request: dict[str, Any]) -> str:
    first_user = request["messages"][1]["content"]
    return first_user.removeprefix("Query: ").split("\n\n", 1)[0]


def _reply(step: Step, request: dict[str, Any]) -> Reply:
    return step(request) if callable(step) else step
