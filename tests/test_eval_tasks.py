"""Task files: JSONL, malformed lines reported with their numbers and skipped, unknown fields kept."""

from __future__ import annotations

import json

from rlmbox.evals import Task, read_tasks, write_tasks


def test_reads_good_lines_and_reports_bad_ones_by_number(tmp_path):
    path = tmp_path / "tasks.jsonl"
    lines = [
        json.dumps({"id": "a", "query": "q", "context": "ctx", "answer": 1, "scorer": "exact", "team": "x"}),
        "",
        "{not json",
        json.dumps({"id": "b", "query": "q", "answer": 1, "scorer": "exact"}),  # no context
        json.dumps({"id": "c", "query": "q", "context": "c", "answer": 1, "scorer": "f1"}),  # unknown scorer
        json.dumps(
            {"id": "a", "query": "q", "context": "ctx", "answer": 2, "scorer": "exact"}
        ),  # repeated id
        json.dumps(
            {"id": "d", "query": "q", "context_path": "docs/d.json", "answer": [], "scorer": "pairs_f1"}
        ),
    ]
    path.write_text("\n".join(lines) + "\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "d.json").write_text('["one", "two"]')
    tasks, problems = read_tasks(path)
    assert [t.id for t in tasks] == ["a", "d"]
    assert [p.line for p in problems] == [3, 4, 5, 6]
    assert "context" in problems[1].message and "scorer" in problems[2].message
    assert "duplicate" in problems[3].message
    assert tasks[0].extra == {"team": "x"}
    assert tasks[1].load_context(tmp_path) == ["one", "two"]


def test_written_tasks_read_back_the_same(tmp_path):
    tasks = [
        Task(id="1", query="q", context={"k": [1]}, answer="x", scorer="contains", length=8000),
        Task(id="2", query="q", context="text", answer=[["1", "2"]], scorer="pairs_f1"),
    ]
    assert write_tasks(tasks, tmp_path / "t.jsonl") == 2
    again, problems = read_tasks(tmp_path / "t.jsonl")
    assert again == tasks and problems == []


def test_a_context_path_may_not_leave_the_task_files_folder(tmp_path):
    import pytest

    (tmp_path / "secret.txt").write_text("do not send")
    base = tmp_path / "tasks"
    base.mkdir()
    for escape in ("../secret.txt", str(tmp_path / "secret.txt")):
        task = Task(id="x", query="q", context_path=escape, answer="a", scorer="exact")
        with pytest.raises(ValueError, match="leaves the task file's folder"):
            task.load_context(base)
