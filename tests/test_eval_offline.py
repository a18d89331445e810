"""The offline test-double policies against the suites: in-process, then end to end at 1M tokens."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rlmbox.evals import score
from rlmbox.evals.offline_policy import EVAL_ROOT_MODEL, EVAL_SUB_MODEL, eval_root_policy
from rlmbox.evals.suites import SUITES

from support.containers import rlmbox_containers
from support.scripted_run import cli_env


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_the_policy_answers_every_question_kind_when_it_sees_everything(suite):
    for task in SUITES[suite]([4_000], 10, 4):
        reply = eval_root_policy([{"role": "user", "content": f"{task.context}\n\nQuery: {task.query}"}])
        assert score(task.scorer, reply, task.answer) == 1.0, (task.query, reply, task.answer)


@pytest.mark.docker
def test_every_suite_end_to_end_at_a_million_tokens(runtime_dir, tmp_path):
    """Harness, generators, scorers and runtime agree: rlm scores 1.0 everywhere; base, which sees only
    what fits its window, does not at 1M tokens."""
    summary = {}
    for suite in sorted(SUITES):
        out = tmp_path / suite
        done = subprocess.run(
            [sys.executable, "-m", "rlmbox.cli", "eval", "--suite", suite, "--lengths", "8k,1m", "--n", "2",
             "--model", EVAL_ROOT_MODEL, "--sub-model", EVAL_SUB_MODEL, "--concurrency", "2",
             "--out", str(out), "--min-score", "0"],
            capture_output=True, text=True, env=cli_env(runtime_dir), timeout=600, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "test doubles, not language models" in done.stderr
        for row in json.loads((out / "summary.json").read_text()):
            summary[(suite, row["method"], row["length"])] = row
    for (suite, method, length), row in summary.items():
        assert row["errors"] == 0, (suite, method, length)
        if method == "rlm":
            assert row["score"] == 1.0, (suite, length, row)
            assert row["mean_sub_calls"] >= (10 if length == 1_000_000 else 1)
    assert all(summary[(suite, "base", 8_000)]["score"] == 1.0 for suite in SUITES)
    assert summary[("sniah", "base", 1_000_000)]["score"] == 0.0
    assert sum(summary[(s, "base", 1_000_000)]["score"] for s in SUITES) < len(SUITES) - 0.5
    assert rlmbox_containers(runtime_dir) == []


@pytest.mark.docker
def test_ctrl_c_keeps_finished_results_and_resume_completes_the_rest(runtime_dir, tmp_path):
    import signal

    from support.scripted_run import wait_for

    out = tmp_path / "out"
    command = [sys.executable, "-m", "rlmbox.cli", "eval", "--suite", "oolong", "--lengths", "8k", "--n", "6",
               "--method", "rlm", "--model", EVAL_ROOT_MODEL, "--sub-model", EVAL_SUB_MODEL,
               "--concurrency", "1", "--out", str(out)]  # fmt: skip
    first = subprocess.Popen(
        command, env=cli_env(runtime_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    results = out / "results.jsonl"
    wait_for(lambda: results.exists() and results.read_text().count("\n") >= 2, timeout=120)
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=60)
    assert first.returncode == 130, stderr
    kept = [json.loads(line) for line in results.read_text().splitlines()]
    assert 2 <= len(kept) < 6 and rlmbox_containers(runtime_dir) == []
    resumed = subprocess.run([*command, "--resume"], env=cli_env(runtime_dir), capture_output=True, text=True,
                             timeout=300, check=False)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    final = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(r["id"] for r in final) == [f"oolong-8000-{i}" for i in range(6)]
    assert final[: len(kept)] == kept and all(r["score"] == 1.0 for r in final)
