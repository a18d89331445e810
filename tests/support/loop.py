"""The turn loop without Docker or HTTP: a scripted LM client and a FakeSandbox.

result, lm, sandbox = run(tmp_path, ["```repl\nx = 1\n```", "FINAL(42)"])
"""

from __future__ import annotations

import json
from collections.abc import Callable

from rlmbox import RLM, CellResult, FakeSandbox, Settings
from rlmbox.llm import Completion

__all__ = ["ScriptedLM", "events", "fake", "run", "settings"]

Reply = str | None | Exception


class ScriptedLM:
    """Answers the root model's calls from a list; records every call."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies = list(replies)
        self.calls: list[tuple[str, list[dict[str, str]]]] = []
        self.params: list[dict | None] = []  # each call's own parameters

    async def complete(self, model, messages, *, timeout_s=None, params=None):
        self.calls.append((model, [dict(m) for m in messages]))
        self.params.append(params)
        reply = self.replies.pop(0) if self.replies else "still thinking"
        if isinstance(reply, Exception):
            raise reply
        return Completion(reply or "", model, 100, 10, 0.001, 0.01, 1)


def settings(tmp_path, llm_overrides: dict | None = None, **limits) -> Settings:
    llm = {"model": "root-model", **(llm_overrides or {})}
    return Settings(llm=llm, limits=limits, trajectory_dir=tmp_path)


def fake(handler: Callable[[str], CellResult] = lambda code: CellResult(stdout=f"ran {code.strip()}\n")):
    return FakeSandbox(handler)


def run(tmp_path, replies, sandbox=None, llm_overrides=None, **limits):
    """A run of the scripted ``replies`` on a FakeSandbox; ``llm_overrides`` go to the LLM settings, the
    other keywords to the limits."""
    lm = ScriptedLM(replies)
    sandbox = sandbox or fake()
    run_settings = settings(tmp_path, llm_overrides, **limits)
    result = RLM(run_settings, sandbox=sandbox, lm=lm).run("the context", "the question")
    return result, lm, sandbox


def events(result) -> list[dict]:
    with open(result.trajectory) as handle:
        return [json.loads(line) for line in handle]
