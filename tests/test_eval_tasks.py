"""Task files: JSONL, malformed lines reported with their numbers and skipped, unknown fields kept."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from rlmbox import ConfigError
from rlmbox.evals import Task, read_tasks, write_tasks
from rlmbox.files import read_regular_file


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
    (tmp_path / "secret.txt").write_text("do not send")
    base = tmp_path / "tasks"
    base.mkdir()
    for escape in ("../secret.txt", str(tmp_path / "secret.txt")):
        task = Task(id="x", query="q", context_path=escape, answer="a", scorer="exact")
        with pytest.raises(ValueError, match="leaves the task file's folder"):
            task.load_context(base)


@pytest.mark.timeout(20)
def test_a_context_path_that_is_not_a_regular_file_is_refused_without_waiting(runtime_dir):
    """A FIFO nobody writes to, a directory and a socket in the task file's folder: refused, never opened."""
    os.mkfifo(runtime_dir / "pipe")
    (runtime_dir / "folder").mkdir()
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(runtime_dir / "sock"))
        for name, kind in (("pipe", "a FIFO"), ("folder", "a directory"), ("sock", "a socket")):
            task = Task(id=name, query="q", context_path=name, answer="a", scorer="exact")
            with pytest.raises(ConfigError) as refused:
                task.load_context(runtime_dir)
            path = runtime_dir / name
            assert str(refused.value) == f"context_path {name!r} ({path}) is {kind}, not a regular file"


@pytest.mark.timeout(20)
def test_a_task_file_or_a_dataset_that_is_a_fifo_or_a_device_is_refused(tmp_path):
    os.mkfifo(tmp_path / "tasks.jsonl")
    with pytest.raises(ConfigError, match="is a FIFO, not a regular file"):
        read_tasks(tmp_path / "tasks.jsonl")
    with pytest.raises(ConfigError, match=r"^/dev/zero is a character device, not a regular file$"):
        read_regular_file(Path("/dev/zero"))  # read, it would never end


def test_a_context_file_in_the_folder_is_still_read_through_a_link_that_stays_inside(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "text.txt").write_text("the context")
    (tmp_path / "link.txt").symlink_to(tmp_path / "docs" / "text.txt")
    task = Task(id="x", query="q", context_path="link.txt", answer="a", scorer="exact")
    assert task.load_context(tmp_path) == "the context"
