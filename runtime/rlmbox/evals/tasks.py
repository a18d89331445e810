"""Evaluation tasks and the JSONL files that hold them, one task a line.

    {"id": "...", "query": "...", "context": str | list | dict (or "context_path": relative path),
     "answer": ..., "scorer": "exact" | "contains" | "choice" | "oolong" | "pairs_f1", ...other fields, kept}

A malformed line is reported with its number and skipped; it never stops the others from loading.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from rlmbox.files import open_regular_file, read_regular_file

__all__ = ["ScorerName", "Task", "TaskFileProblem", "read_tasks", "write_tasks"]

ScorerName = Literal["exact", "contains", "choice", "oolong", "pairs_f1"]


class Task(BaseModel):
    """One question about one context, with its gold answer and how to score a prediction."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    query: str
    context: str | list[Any] | dict[str, Any] | None = None
    context_path: str | None = None
    answer: Any
    scorer: ScorerName

    @model_validator(mode="after")
    def _one_context(self) -> Task:
        if (self.context is None) == (self.context_path is None):
            raise ValueError("give exactly one of context and context_path")
        return self

    @property
    def extra(self) -> dict[str, Any]:
        """Fields the format does not define (kept in the results)."""
        return dict(self.model_extra or {})

    def load_context(self, base: Path) -> str | list[Any] | dict[str, Any]:
        """The context, or the file at ``context_path`` (relative to ``base``, the task file's folder).

        The file must be a regular file inside that folder (a ConfigError says why not); it is opened
        without waiting, so a FIFO or a device never blocks. Blocking file I/O: call it off the event loop.
        """
        if self.context is not None:
            return self.context
        assert self.context_path is not None
        path = (base / self.context_path).resolve()
        if not path.is_relative_to(base.resolve()):  # a task file may not send any file of yours
            raise ValueError(f"context_path {self.context_path!r} leaves the task file's folder")
        # Resolved above: a symbolic link appearing in its place since is refused rather than followed.
        name = f"context_path {self.context_path!r} ({path})"
        text = read_regular_file(path, name=name, follow_symlinks=False).decode("utf-8")
        return json.loads(text) if path.suffix == ".json" else text


@dataclass(frozen=True)
class TaskFileProblem:
    """A line of a task file that could not be read as a task."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def read_tasks(path: Path) -> tuple[list[Task], list[TaskFileProblem]]:
    """Every well-formed task of a JSONL file, and what was wrong with each other non-blank line.

    ``path`` must be a regular file (a ConfigError says what it is otherwise)."""
    tasks: list[Task] = []
    problems: list[TaskFileProblem] = []
    seen: set[str] = set()
    with io.TextIOWrapper(open_regular_file(path, name=f"task file {path}"), encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                task = Task.model_validate_json(line)
            except ValidationError as exc:
                problems.append(TaskFileProblem(number, _first_error(exc)))
                continue
            if task.id in seen:
                problems.append(TaskFileProblem(number, f"duplicate task id {task.id!r}"))
                continue
            seen.add(task.id)
            tasks.append(task)
    return tasks, problems


def write_tasks(tasks: Iterable[Task], path: Path) -> int:
    """Write ``tasks`` as JSONL; returns how many."""
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for task in tasks:
            handle.write(task.model_dump_json(exclude_none=True) + "\n")
            count += 1
    return count


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error.get("loc", ())) or "line"
    return f"{where}: {error.get('msg', 'invalid')}"
