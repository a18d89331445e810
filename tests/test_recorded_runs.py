"""Real-model evaluations replayed offline, bit for bit: the regression suite for prompts and parsing.

tests/fixtures/recorded holds evaluations that Qwen2.5-Coder 0.5B ran on llama.cpp, every model call recorded
(scripts/record_fixtures.py, ``make record-fixtures``). Replayed with ``--replay``, in real sandboxes and
with no model server, each must ask exactly the recorded calls (a prompt that changed has no recording and
fails the task) and give exactly the recorded results. A change to prompts or parsing that alters a
recorded run fails here until it is recorded again on purpose."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support.containers import rlmbox_containers
from support.scripted_run import cli_env

pytestmark = pytest.mark.docker

FIXTURE = Path(__file__).parent / "fixtures" / "recorded"
RECORDED = json.loads((FIXTURE / "runs.json").read_text(encoding="utf-8"))
# What a run gives that depends on the clock, not on the model's replies.
VARYING = {"elapsed_s", "trajectory"}


def results(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    rows = [{key: value for key, value in row.items() if key not in VARYING} for row in rows]
    return sorted(rows, key=lambda row: (row["id"], row["method"]))


def test_the_recording_is_small_and_real():
    files = [path for path in FIXTURE.rglob("*") if path.is_file()]
    assert sum(path.stat().st_size for path in files) < 5_000_000
    calls = [json.loads(path.read_text(encoding="utf-8")) for path in (FIXTURE / "cache").rglob("*.json")]
    assert len(calls) >= 20 and {call["model"] for call in calls} == {RECORDED["model"]}
    assert all(call["prompt_tokens"] > 0 for call in calls)  # counted by the server, not made up


@pytest.mark.parametrize("name", sorted(RECORDED["runs"]))
def test_a_recorded_evaluation_replays_bit_for_bit(name, runtime_dir, tmp_path):
    out = tmp_path / name
    done = subprocess.run(
        [
            sys.executable, "-m", "rlmbox.cli", "eval", "--model", RECORDED["model"],
            *RECORDED["common"], *RECORDED["runs"][name],
            "--cache", str(FIXTURE / "cache"), "--replay", "--out", str(out),
        ],
        capture_output=True, text=True, timeout=600, check=False, env=cli_env(runtime_dir),
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    assert "no recorded answer" not in (out / "results.jsonl").read_text(encoding="utf-8"), (
        "a prompt changed: the recorded calls no longer match (make record-fixtures records them again)"
    )
    assert results(out / "results.jsonl") == results(FIXTURE / name / "results.jsonl")
    assert rlmbox_containers(runtime_dir) == []
