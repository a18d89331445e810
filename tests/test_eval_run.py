"""``rlmbox eval`` end to end: a built-in suite by both methods through real containers and litellm to a
scripted server that solves the needle by rule; results, summary, resume, record/replay, --min-score."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from support.containers import rlmbox_containers
from support.openai_server import Reply, ScriptedOpenAIServer
from support.scripted_run import ROOT, cli_env

pytestmark = pytest.mark.docker


def needle_solver(request: dict) -> Reply:
    """The root model as a rule: in an RLM run, code that finds the needle; asked directly, the number."""
    messages = request["messages"]
    key = re.search(r"magic number for (\S+) mentioned", messages[-1]["content"] if len(messages) == 1 else
                    messages[1]["content"]).group(1)  # fmt: skip
    if messages[0]["role"] == "system":
        code = f"import re\nFINAL(re.search(r'numbers for {key} is: (\\d{{7}})', context).group(1))"
        return Reply(text=f"```repl\n{code}\n```")
    found = re.search(rf"numbers for {re.escape(key)} is: (\d{{7}})", messages[0]["content"])
    return Reply(text=found.group(1) if found else "not found")


def evaluate(runtime_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlmbox.cli", "eval", "--suite", "sniah", "--lengths", "2k", "--n", "2",
         "--model", ROOT, *args],
        capture_output=True, text=True, env=cli_env(runtime_dir), timeout=300, check=False,
    )  # fmt: skip


def results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_both_methods_score_record_resume_and_replay(runtime_dir, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    with ScriptedOpenAIServer(needle_solver) as server:
        first = evaluate(runtime_dir, "--api-base", server.url, "--out", str(out), "--cache", str(cache))
        assert first.returncode == 0, first.stderr
        rows = results(out)
        pairs = sorted((r["id"], r["method"]) for r in rows)
        assert pairs == [(f"sniah-2000-{i}", m) for i in (0, 1) for m in ("base", "rlm")]
        assert all(r["score"] == 1.0 and r["status"] == "completed" for r in rows)
        assert all(Path(r["trajectory"]).exists() for r in rows if r["method"] == "rlm")
        assert (
            "| rlm | 2,000 | 2 | 1.000 |" in first.stdout and "| base | 2,000 | 2 | 1.000 |" in first.stdout
        )
        summary = json.loads((out / "summary.json").read_text())
        assert (out / "summary.md").exists() and summary[0]["tasks"] == 2
        assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        again = evaluate(runtime_dir, "--api-base", server.url, "--out", str(out))
        assert again.returncode == 2 and "--resume" in again.stderr  # nothing overwritten
        resumed = evaluate(runtime_dir, "--api-base", server.url, "--out", str(out), "--resume")
        assert resumed.returncode == 0 and len(results(out)) == 4  # nothing re-run

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}/v1"
    replayed_out = tmp_path / "replayed"
    replay = evaluate(
        runtime_dir, "--api-base", dead, "--out", str(replayed_out), "--cache", str(cache), "--replay"
    )
    assert replay.returncode == 0, replay.stderr
    key = lambda r: (r["id"], r["method"])  # noqa: E731
    assert [(key(r), r["answer"]) for r in sorted(results(replayed_out), key=key)] == [
        (key(r), r["answer"]) for r in sorted(rows, key=key)
    ]
    assert rlmbox_containers(runtime_dir) == []


def test_min_score_fails_the_job_when_a_method_scores_below_it(runtime_dir, tmp_path):
    with ScriptedOpenAIServer(lambda request: Reply(text="1234567")) as server:
        done = evaluate(runtime_dir, "--api-base", server.url, "--out", str(tmp_path / "o"),
                        "--method", "base", "--min-score", "0.5")  # fmt: skip
    assert done.returncode == 1 and "base scored 0.000, below --min-score 0.5" in done.stderr


def test_a_task_file_with_a_bad_line_runs_the_good_ones(runtime_dir, tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    good = {"id": "t1", "query": "What is the special magic number for red-fox mentioned in the document?",
            "context": "One of the special magic numbers for red-fox is: 7654321.", "answer": "7654321",
            "scorer": "exact", "team": "blue"}  # fmt: skip
    tasks.write_text(json.dumps(good) + "\n{broken\n")
    with ScriptedOpenAIServer(needle_solver) as server:
        done = subprocess.run(
            [sys.executable, "-m", "rlmbox.cli", "eval", "--suite", str(tasks), "--method", "base",
             "--model", ROOT, "--api-base", server.url, "--out", str(tmp_path / "o")],
            capture_output=True, text=True, env=cli_env(runtime_dir), timeout=300, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{tasks}: line 2:" in done.stderr and "(skipped)" in done.stderr
    (row,) = results(tmp_path / "o")
    assert (row["score"], row["team"]) == (1.0, "blue")


def fifo_and_good_tasks(folder: Path) -> Path:
    """A task file whose first task's context_path is a FIFO nobody writes to, and a good second task."""
    os.mkfifo(folder / "pipe.txt")
    tasks = folder / "tasks.jsonl"
    stuck = {"id": "fifo", "query": "q", "context_path": "pipe.txt", "answer": "x", "scorer": "exact"}
    good = {"id": "good", "query": "What is the special magic number for red-fox mentioned in the document?",
            "context": "One of the special magic numbers for red-fox is: 7654321.", "answer": "7654321",
            "scorer": "exact"}  # fmt: skip
    tasks.write_text(f"{json.dumps(stuck)}\n{json.dumps(good)}\n")
    return tasks


@pytest.mark.timeout(240)
@pytest.mark.attack("host")
def test_a_task_whose_context_is_a_fifo_fails_and_the_others_are_scored(runtime_dir, tmp_path, observe):
    tasks, out = fifo_and_good_tasks(tmp_path), tmp_path / "o"
    with ScriptedOpenAIServer(needle_solver) as server:
        done = subprocess.run(
            [sys.executable, "-m", "rlmbox.cli", "eval", "--suite", str(tasks), "--model", ROOT,
             "--api-base", server.url, "--out", str(out)],
            capture_output=True, text=True, env=cli_env(runtime_dir), timeout=180, check=False,
        )  # fmt: skip
    # A failed task is a result like any other: the evaluation goes on and succeeds (no --min-score).
    assert done.returncode == 0, done.stderr
    refusal = f"ConfigError: context_path 'pipe.txt' ({tmp_path / 'pipe.txt'}) is a FIFO, not a regular file"
    rows = {(r["id"], r["method"]): r for r in results(out)}
    assert sorted(rows) == [("fifo", "base"), ("fifo", "rlm"), ("good", "base"), ("good", "rlm")]
    for method in ("base", "rlm"):
        assert (rows["fifo", method]["status"], rows["fifo", method]["score"]) == ("error", 0.0)
        assert rows["fifo", method]["error"] == refusal
        assert (rows["good", method]["status"], rows["good", method]["score"]) == ("completed", 1.0)
        assert f"fifo {method}: 0.00 (error: {refusal})" in done.stderr
    assert rlmbox_containers(runtime_dir) == []
    observe(
        "rlmbox eval on a task file whose context_path is a FIFO (before: the event loop blocked forever)",
        "that task refused as not a regular file; the others scored",
    )


@pytest.mark.timeout(240)
def test_sigterm_stops_an_eval_with_a_run_in_progress(runtime_dir, tmp_path):
    tasks = fifo_and_good_tasks(tmp_path)
    asked, release = threading.Event(), threading.Event()

    def root_model(request: dict) -> Reply:
        asked.set()  # the good task's run is in progress: its sandbox is up and its root model asked
        release.wait(timeout=120)
        return Reply(text="FINAL(too late)")

    with ScriptedOpenAIServer(root_model) as server:
        process = subprocess.Popen(
            [sys.executable, "-m", "rlmbox.cli", "eval", "--suite", str(tasks), "--method", "rlm",
             "--model", ROOT, "--api-base", server.url, "--out", str(tmp_path / "o")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(runtime_dir),
        )  # fmt: skip
        try:
            assert asked.wait(timeout=120), "the good task's run never asked its root model"
            assert rlmbox_containers(runtime_dir) != []
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            _, stderr = process.communicate(timeout=60)
            stopped_in = time.monotonic() - signalled
        finally:
            release.set()
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 143, stderr
    assert stopped_in < 30 and "Traceback" not in stderr
    assert rlmbox_containers(runtime_dir) == [] and list(runtime_dir.iterdir()) == []
