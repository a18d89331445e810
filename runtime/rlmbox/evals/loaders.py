"""Loaders for the public datasets, from files a user downloaded: ``--suite NAME:PATH``.

- ``oolong-synth:FILE``: OOLONG-synth rows (``id``, ``context_window_text``, ``question``, ``answer``,
  ``answer_type``, ``task``, ``context_len``, ...), scored as OOLONG does.
- ``longbench-v2-codeqa:FILE``: LongBench-v2 rows of the "Code Repository Understanding" domain
  (``_id``, ``question``, ``choice_A``..``choice_D``, ``answer`` letter, ``context``), multiple choice.
- ``browsecomp-plus:FILE``: decrypted BrowseComp-Plus queries (``query_id``, ``query``, ``answer``, and
  ``evidence_docs``/``gold_docs``/``negative_docs`` of ``{docid, text}``); the context is the query's
  documents as a list, and a prediction scores when it contains the answer (the benchmark itself uses a
  model as judge).

A file is a JSON list of rows or JSON lines (exported from the Hugging Face parquet files, e.g. with
``datasets``' ``to_json``). A row that lacks a field is reported and skipped.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rlmbox._exceptions import ConfigError
from rlmbox.evals.suites.common import CHARS_PER_TOKEN
from rlmbox.evals.tasks import Task, TaskFileProblem
from rlmbox.files import read_regular_file

__all__ = ["LOADERS", "load_dataset"]

CODEQA_DOMAIN = "Code Repository Understanding"


def _rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(row number, row) for a JSON list or a JSON-lines file; a line that is not JSON is (number, None)."""
    text = read_regular_file(path).decode("utf-8")
    if text.lstrip().startswith("["):
        yield from enumerate(json.loads(text), start=1)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except ValueError:
                yield number, None


def _unwrap(answer: Any) -> Any:
    """OOLONG stores answers as the text of a Python list, e.g. "['numeric']" or "[12]"."""
    if isinstance(answer, str):
        try:
            answer = ast.literal_eval(answer)
        except (ValueError, SyntaxError):
            return answer.strip()
    if isinstance(answer, list | tuple) and len(answer) == 1:
        return answer[0]
    return answer


def oolong_synth_task(row: dict[str, Any]) -> Task | None:
    answer = _unwrap(row["answer"])
    if "NUMERIC" not in str(row.get("answer_type", "")).upper():
        answer = str(answer)  # a user id or a date is matched exactly, not scored by distance
    return Task(
        id=f"oolong-synth-{row['id']}",
        query=row["question"],
        context=row["context_window_text"],
        answer=answer,
        scorer="oolong",
        suite="oolong-synth",
        length=int(row.get("context_len") or len(row["context_window_text"]) // CHARS_PER_TOKEN),
        task=row.get("task"),
        answer_type=row.get("answer_type"),
    )


def codeqa_task(row: dict[str, Any]) -> Task | None:
    if row.get("domain") != CODEQA_DOMAIN:
        return None
    choices = "\n".join(f"({letter}) {row[f'choice_{letter}']}" for letter in "ABCD")
    return Task(
        id=f"longbench-v2-{row['_id']}",
        query=f"{row['question']}\n\n{choices}\n\nAnswer with the letter of the right choice.",
        context=row["context"],
        answer=row["answer"],
        scorer="choice",
        suite="longbench-v2-codeqa",
        length=len(row["context"]) // CHARS_PER_TOKEN,
        difficulty=row.get("difficulty"),
        length_class=row.get("length"),
    )


def browsecomp_plus_task(row: dict[str, Any]) -> Task | None:
    documents: dict[str, str] = {}
    for field in ("evidence_docs", "gold_docs", "negative_docs"):
        for doc in row.get(field) or []:
            documents[str(doc["docid"])] = str(doc["text"])
    context = [f"[doc {docid}]\n{text}" for docid, text in sorted(documents.items())]  # gold not first
    return Task(
        id=f"browsecomp-plus-{row['query_id']}",
        query=row["query"],
        context=context,
        answer=row["answer"],
        scorer="contains",
        suite="browsecomp-plus",
        length=sum(len(doc) for doc in context) // CHARS_PER_TOKEN,
        documents=len(context),
    )


LOADERS: dict[str, Callable[[dict[str, Any]], Task | None]] = {
    "oolong-synth": oolong_synth_task,
    "longbench-v2-codeqa": codeqa_task,
    "browsecomp-plus": browsecomp_plus_task,
}


def load_dataset(name: str, path: Path) -> tuple[list[Task], list[TaskFileProblem]]:
    """The tasks of a downloaded dataset file, and the rows that could not be read."""
    if name not in LOADERS:
        raise ConfigError(f"no loader named {name!r}; known: {', '.join(LOADERS)}")
    if not path.is_file():
        raise ConfigError(f"{name}: {path} is not a file")
    tasks: list[Task] = []
    problems: list[TaskFileProblem] = []
    try:
        rows = list(_rows(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc}") from exc
    for number, row in rows:
        if not isinstance(row, dict):
            problems.append(TaskFileProblem(number, "not a JSON object"))
            continue
        try:
            task = LOADERS[name](row)
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(TaskFileProblem(number, f"{type(exc).__name__}: {exc}"))
            continue
        if task is not None:
            tasks.append(task)
    return tasks, problems
