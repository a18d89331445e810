"""Loaders for downloaded datasets, each on a small fixture written in that dataset's format."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rlmbox.evals import read_tasks, score
from rlmbox.evals.loaders import load_dataset

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"


def test_oolong_synth_rows_become_oolong_scored_tasks():
    tasks, problems = load_dataset("oolong-synth", FIXTURES / "oolong_synth.jsonl")
    assert [t.id for t in tasks] == ["oolong-synth-101", "oolong-synth-102"]
    assert [p.line for p in problems] == [3] and "question" in problems[0].message
    count, label = tasks
    assert count.answer == 2 and count.length == 1024 and count.extra["task"] == "TASK_TYPE.COUNT"
    assert label.answer == "human being"
    assert score("oolong", "I counted. Answer: 2", count.answer) == 1.0
    assert score("oolong", "Label: human being", label.answer) == 1.0


def test_longbench_v2_keeps_the_code_questions_as_multiple_choice():
    tasks, problems = load_dataset("longbench-v2-codeqa", FIXTURES / "longbench_v2.json")
    assert problems == [] and [t.id for t in tasks] == ["longbench-v2-66f1a", "longbench-v2-66f1b"]
    first = tasks[0]
    assert "(B) 6" in first.query and first.answer == "B" and "def twice" in first.context
    assert first.scorer == "choice"
    for said in ("B", "Answer: (B)", "B) 6", "twice adds x to itself, so the answer is B."):
        assert score(first.scorer, said, first.answer) == 1.0, said
    assert score(first.scorer, "Answer: C", first.answer) == 0.0


def test_browsecomp_plus_gives_each_query_its_documents():
    tasks, problems = load_dataset("browsecomp-plus", FIXTURES / "browsecomp_plus.jsonl")
    assert [p.line for p in problems] == [2]
    (task,) = tasks
    assert isinstance(task.context, list) and len(task.context) == 3  # the shared gold/evidence doc once
    assert task.context[0].startswith("[doc d-019]")  # ordered by id, not with the answer first
    assert score("contains", "It was Ada Lindqvist, in 1911.", task.answer) == 1.0


def test_a_dataset_dumps_to_a_task_file(tmp_path):
    suite = f"oolong-synth:{FIXTURES / 'oolong_synth.jsonl'}"
    done = subprocess.run(
        [sys.executable, "-m", "rlmbox.cli", "eval", "--suite", suite, "--dump", str(tmp_path / "t.jsonl")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "line 3" in done.stderr and "(skipped)" in done.stderr
    tasks, problems = read_tasks(tmp_path / "t.jsonl")
    assert len(tasks) == 2 and problems == []
