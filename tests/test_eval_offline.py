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
