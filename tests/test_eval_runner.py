"""The evaluation runner without containers: the base method against a fake model client."""

from __future__ import annotations

import asyncio

from rlmbox import Settings
from rlmbox.evals import Task
from rlmbox.evals.runner import read_results, run_eval
from rlmbox.llm import Completion


class Echo:
    """Answers with the last word of the prompt's context line."""

    async def complete(self, model, messages, *, timeout_s=None, params=None):
        return Completion(messages[0]["content"].split()[0], model, 10, 1, 0.001, 0.0, 1)


def evaluate(tasks, out, *, resume=False):
    settings = Settings(llm={"model": "openai/m"})
    return asyncio.run(
        run_eval(tasks, task_dir=out, methods=["base"], settings=settings, out=out, lm=Echo(), resume=resume)
    )


def test_a_task_whose_fields_clash_or_whose_gold_is_malformed_does_not_end_the_run(tmp_path):
    tasks = [
        Task(id="clash", query="q", context="yes", answer="yes", scorer="exact",
             status="draft", gold="fake", length="long", score=5, team="blue"),
        Task(id="bad-gold", query="q", context="(1, 2)", answer=7, scorer="pairs_f1"),
        Task(id="fine", query="q", context="ok", answer="ok", scorer="exact", length=8000),
    ]  # fmt: skip
    results = {r.id: r for r in evaluate(tasks, tmp_path)}
    clash = results["clash"]
    assert (clash.status, clash.gold, clash.score, clash.length, clash.team) == (
        "completed",
        "yes",
        1.0,
        None,
        "blue",
    )
    assert results["bad-gold"].score == 0.0 and "scoring failed" in results["bad-gold"].error
    assert results["fine"].length == 8000 and results["fine"].score == 1.0


def test_resume_after_a_line_cut_short_loses_no_result(tmp_path):
    tasks = [Task(id=f"t{i}", query="q", context="a", answer="a", scorer="exact") for i in range(3)]
    evaluate(tasks[:2], tmp_path)
    path = tmp_path / "results.jsonl"
    path.write_bytes(path.read_bytes() + b'{"id": "t2", "meth')  # a crash in the middle of a write
    results = evaluate(tasks, tmp_path, resume=True)
    assert sorted(r.id for r in results) == ["t0", "t1", "t2"]
    assert len(read_results(path)) == 3 and path.read_bytes().endswith(b"\n")


def test_resuming_with_other_arguments_is_refused(tmp_path):
    import os
    import subprocess
    import sys

    def dump_free_eval(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "rlmbox.cli", "eval", "--suite", "sniah", "--lengths", "2k", "--n", "1",
             "--method", "base", "--model", "openai/none", "--api-base", "http://127.0.0.1:9/v1",
             "--out", str(tmp_path), *extra],
            capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "RLMBOX_MAX_RETRIES": "0"},
        )  # fmt: skip

    first = dump_free_eval()
    assert first.returncode == 0, first.stderr  # the call fails, the task is recorded as an error
    changed = dump_free_eval("--resume", "--seed", "5")
    assert changed.returncode == 2 and "seed differ" in changed.stderr
    same = dump_free_eval("--resume")
    assert same.returncode == 0, same.stderr


def test_the_baseline_is_cut_further_when_the_server_says_it_is_still_over_the_window(tmp_path):
    """Seen with llama.cpp on OOLONG: records of dates and numbers hold fewer characters per token than the
    estimate, and every base call at 2k and 8k tokens was refused (2,477 tokens for a 2,048 window)."""
    from rlmbox import LLMContextWindowError

    class Window:
        def __init__(self) -> None:
            self.sizes: list[int] = []

        async def complete(self, model, messages, *, timeout_s=None, params=None):
            self.sizes.append(len(messages[0]["content"]))
            if self.sizes[-1] > 3_000:
                raise LLMContextWindowError("the prompt is longer than the window of model 'openai/m'")
            return Completion("yes", model, 10, 1, 0.001, 0.0, 1)

    lm = Window()
    settings = Settings(llm={"model": "openai/m", "root_window": 1500})  # about 4,500 characters
    task = Task(id="long", query="q", context="y" * 20_000, answer="yes", scorer="exact")
    (result,) = asyncio.run(
        run_eval([task], task_dir=tmp_path, methods=["base"], settings=settings, out=tmp_path, lm=lm)
    )
    assert (result.status, result.score) == ("completed", 1.0)
    assert lm.sizes[0] > 3_000 >= lm.sizes[-1] and lm.sizes == sorted(lm.sizes, reverse=True)
