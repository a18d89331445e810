"""Running an evaluation: every task by every method, K at a time, each result appended as it finishes.

Methods: ``rlm`` (this runtime) and ``base`` (one direct call with the context in the prompt, cut to the
model's window with a visible marker when too long, as the paper's baseline). ``DIR/results.jsonl`` gains
one line per task and method; with ``resume`` the pairs already there are skipped, so a crash or Ctrl-C
loses nothing but the runs in flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from rlmbox._exceptions import ConfigError, LLMContextWindowError
from rlmbox.config import Settings
from rlmbox.evals.recording import CompletionClient
from rlmbox.evals.scorers import score
from rlmbox.evals.tasks import Task
from rlmbox.files import read_regular_file
from rlmbox.llm import Completion, LMClient, load_litellm, window_chars
from rlmbox.rlm import RLM
from rlmbox.sandbox.pool import SandboxPool

__all__ = [
    "METHODS",
    "EvalResult",
    "SummaryRow",
    "base_messages",
    "mean_scores",
    "read_results",
    "run_eval",
    "summarize",
    "summary_markdown",
]

Method = Literal["rlm", "base"]
METHODS: tuple[Method, ...] = ("rlm", "base")
RESULTS_FILE = "results.jsonl"
BASE_FIT_ATTEMPTS = 3
TRUNCATION_MARKER = "\n[... context truncated: the first {shown:,} of {total:,} characters are shown ...]"


class EvalResult(BaseModel):
    """One task answered by one method. Fields of the task the format does not define are kept."""

    model_config = ConfigDict(extra="allow")

    id: str
    method: str
    suite: str | None = None
    length: int | None = None
    answer: str | None
    gold: Any
    score: float
    status: str
    iterations: int = 0
    sub_calls: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    elapsed_s: float
    trajectory: str | None = None
    error: str | None = None


def read_results(path: Path) -> list[EvalResult]:
    """The results recorded so far (a line cut short by a crash is ignored)."""
    if not path.exists():
        return []
    results = []
    for line in read_regular_file(path).decode("utf-8").splitlines():
        try:
            results.append(EvalResult.model_validate_json(line))
        except ValueError:
            continue
    return results


async def run_eval(
    tasks: Sequence[Task],
    *,
    task_dir: Path,
    methods: Sequence[Method],
    settings: Settings,
    out: Path,
    concurrency: int = 2,
    lm: CompletionClient | None = None,
    resume: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_result: Callable[[EvalResult], None] | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> list[EvalResult]:
    """Run every (task, method) not yet in ``out/results.jsonl``; returns every result there.

    ``on_start`` hears how many runs are left to do; ``on_result`` hears each as it finishes; ``on_event``
    hears the rlm runs' trajectory events (live progress).
    """
    if not settings.llm.model:
        raise ConfigError("no root model: pass --model or set RLMBOX_MODEL")
    results_path = out / RESULTS_FILE
    done = await asyncio.to_thread(_prepare, results_path, resume)
    # Both methods read litellm's model table: its first import (seconds) must not count in a task's time.
    await asyncio.to_thread(load_litellm)
    client: CompletionClient = lm or LMClient(settings.llm)
    limit = asyncio.Semaphore(concurrency)

    todo = [(task, method) for task in tasks for method in methods if (task.id, method) not in done]
    if on_start is not None:
        on_start(len(todo))
    rlm_runs = sum(method == "rlm" for _, method in todo)
    # Sandboxes for the next rlm runs start while the current ones work; runs wait for them rather than
    # start more, so at most 2K sandboxes exist (K running, K warming up).
    pool = SandboxPool(settings.sandbox, size=min(concurrency, rlm_runs))

    async def one(task: Task, method: Method) -> None:
        async with limit:
            result = await _answer(task, method, task_dir, settings, client, out, pool, on_event)
        with results_path.open("a", encoding="utf-8") as handle:
            handle.write(result.model_dump_json() + "\n")
        if on_result is not None:
            on_result(result)

    async with pool, asyncio.TaskGroup() as group:
        for task, method in todo:
            group.create_task(one(task, method))
    return await asyncio.to_thread(read_results, results_path)


def _prepare(results_path: Path, resume: bool) -> set[tuple[str, str]]:
    """Make the output folder; the (task, method) pairs already done. Refuses to overwrite results."""
    if results_path.exists() and not resume:
        raise ConfigError(f"{results_path} exists: pass --resume to continue it, or choose another --out")
    results_path.parent.mkdir(parents=True, exist_ok=True)
    if results_path.exists():  # a line cut short by a crash would swallow the next result: drop it
        data = read_regular_file(results_path)
        if data and not data.endswith(b"\n"):
            results_path.write_bytes(data[: data.rfind(b"\n") + 1])
    return {(r.id, r.method) for r in read_results(results_path)}


async def _answer(
    task: Task,
    method: Method,
    task_dir: Path,
    settings: Settings,
    lm: CompletionClient,
    out: Path,
    pool: SandboxPool,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> EvalResult:
    """One task by one method. Whatever goes wrong becomes a result with status ``error``: one task never
    ends the evaluation."""
    started = time.perf_counter()
    outcome: dict[str, Any]
    try:
        context = await asyncio.to_thread(task.load_context, task_dir)
        if method == "rlm":
            trajectory = out / "trajectories" / f"{file_name(task.id)}.{method}.jsonl"
            rlm = RLM(settings, lm=lm, pool=pool, wait_for_pool=True)  # type: ignore[arg-type]
            run = await rlm.arun(context, task.query, trajectory=trajectory, on_event=on_event)
            outcome = {
                "answer": run.answer,
                "status": run.status,
                "iterations": run.iterations,
                "sub_calls": run.sub_calls,
                "tokens": sum(u.prompt_tokens + u.completion_tokens for u in run.usage.values()),
                "cost_usd": run.cost_usd,
                "trajectory": run.trajectory,
                "error": run.error,
            }
        else:
            model = settings.llm.model
            assert model is not None
            room = window_chars(settings.llm, model)
            completion = await _complete_base(lm, model, context, task.query, room)
            outcome = {
                "answer": completion.text,
                "status": "completed",
                "iterations": 1,
                "tokens": completion.prompt_tokens + completion.completion_tokens,
                "cost_usd": completion.cost_usd or 0.0,
            }
    except Exception as exc:  # the boundary of one task: a provider, a sandbox, a bad file, a bug
        outcome = {"answer": None, "status": "error", "error": f"{type(exc).__name__}: {exc}"}
    try:
        points = score(task.scorer, outcome["answer"], task.answer)
    except Exception as exc:  # a gold answer of the wrong shape for its scorer
        points, outcome["error"] = 0.0, f"scoring failed: {type(exc).__name__}: {exc}"
    extra = task.extra
    return EvalResult(
        # The task's own fields first, so that none can replace a result field.
        **{key: value for key, value in extra.items() if key not in EvalResult.model_fields},
        id=task.id,
        method=method,
        suite=extra.get("suite") if isinstance(extra.get("suite"), str) else None,
        length=extra.get("length") if type(extra.get("length")) is int else None,
        gold=task.answer,
        score=points,
        elapsed_s=round(time.perf_counter() - started, 3),
        **outcome,
    )


def file_name(task_id: str) -> str:
    """A task id made safe as a file name (ids come from task files)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", task_id)[:80].lstrip(".")
    return f"{safe}-{hashlib.sha256(task_id.encode()).hexdigest()[:8]}"


async def _complete_base(
    lm: CompletionClient, model: str, context: Any, query: str, room_chars: int
) -> Completion:
    """The baseline's call, its context cut by a quarter more each time the provider says the prompt is
    still over the window (the window in characters is an estimate: records full of digits and dates have
    fewer characters per token than prose)."""
    for _ in range(BASE_FIT_ATTEMPTS):
        try:
            return await lm.complete(model, base_messages(context, query, room_chars))
        except LLMContextWindowError:
            room_chars = room_chars * 3 // 4
    return await lm.complete(model, base_messages(context, query, room_chars))


def base_messages(context: Any, query: str, room_chars: int) -> list[dict[str, str]]:
    """The baseline's single prompt: the context, cut to the model's window (in characters) with a marker,
    then the query."""
    text = context if isinstance(context, str) else json.dumps(context, ensure_ascii=False)
    room = max(0, room_chars - len(query) - 200)
    if len(text) > room:
        text = text[:room] + TRUNCATION_MARKER.format(shown=room, total=len(text))
    return [{"role": "user", "content": f"{text}\n\nQuery: {query}"}]


class SummaryRow(BaseModel):
    method: str
    length: int | None
    tasks: int
    score: float
    errors: int
    mean_elapsed_s: float
    mean_sub_calls: float
    cost_usd: float


def summarize(results: Sequence[EvalResult]) -> list[SummaryRow]:
    """One row per method and context length: mean score, errors, time, sub-calls and spend."""
    groups: dict[tuple[str, int | None], list[EvalResult]] = {}
    for result in results:
        groups.setdefault((result.method, result.length), []).append(result)
    return [
        SummaryRow(
            method=method,
            length=length,
            tasks=len(group),
            score=round(statistics.fmean(r.score for r in group), 4),
            errors=sum(r.status == "error" for r in group),
            mean_elapsed_s=round(statistics.fmean(r.elapsed_s for r in group), 3),
            mean_sub_calls=round(statistics.fmean(r.sub_calls for r in group), 2),
            cost_usd=round(sum(r.cost_usd for r in group), 6),
        )
        for (method, length), group in sorted(groups.items(), key=lambda item: (item[0][0], item[0][1] or 0))
    ]


def mean_scores(results: Sequence[EvalResult]) -> dict[str, float]:
    """Each method's mean score over all its results."""
    by_method: dict[str, list[float]] = {}
    for result in results:
        by_method.setdefault(result.method, []).append(result.score)
    return {method: statistics.fmean(scores) for method, scores in by_method.items()}


def summary_markdown(rows: Sequence[SummaryRow]) -> str:
    lines = [
        "| method | length (tokens) | tasks | score | errors | time/task (s) | sub-calls/task | cost (USD) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        length = f"{row.length:,}" if row.length is not None else "-"
        lines.append(
            f"| {row.method} | {length} | {row.tasks} | {row.score:.3f} | {row.errors} | "
            f"{row.mean_elapsed_s:.2f} | {row.mean_sub_calls:.1f} | {row.cost_usd:.4f} |"
        )
    return "\n".join(lines)
