"""RLM runs driven by a real model: Qwen2.5-Coder served by llama.cpp on this machine, through litellm, with
code in real containers. A small model is weak; what must hold whatever it writes: the run ends with a
defined status and exit code, no container is left, the trajectory is complete and valid, and a final
answer it wrote in any accepted form is returned. One guided task the 1.5B model solves through code.

The server runs without its prompt cache and the model at temperature 0, so a run is the same every time."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlmbox.local_model import LocalModelServer

from support.containers import rlmbox_containers
from support.scripted_run import cli_env

pytestmark = [pytest.mark.realmodel, pytest.mark.docker]

WINDOW = 8192
SMALL, LARGE = "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"


@pytest.fixture(scope="module")
def small() -> Iterator[LocalModelServer]:
    with LocalModelServer(SMALL, ctx_size=WINDOW, prompt_cache=False) as server:
        yield server


@pytest.fixture(scope="module")
def large() -> Iterator[LocalModelServer]:
    with LocalModelServer(LARGE, ctx_size=WINDOW, prompt_cache=False) as server:
        yield server


def run_cli(
    server: LocalModelServer, runtime_dir: Path, tmp_path: Path, context: str, query: str, *flags: str
):
    """``rlmbox run --json`` against ``server``; returns (exit code, result, trajectory events)."""
    context_file = tmp_path / "context.txt"
    context_file.write_text(context)
    trajectory = tmp_path / "run.jsonl"
    done = subprocess.run(
        [
            sys.executable, "-m", "rlmbox.cli", "run", "--context", str(context_file), "--query", query,
            "--model", server.litellm_model, "--api-base", server.api_base,
            "--root-window", str(WINDOW), "--sub-window", str(WINDOW),
            "--completion-kwargs", json.dumps({"temperature": 0, "max_tokens": 512}),
            "--trajectory", str(trajectory), "--json", *flags,
        ],
        capture_output=True, text=True, timeout=900, check=False,
        env={**cli_env(runtime_dir), "RLMBOX_API_KEY": "local"},  # litellm's openai provider wants a key
    )  # fmt: skip
    assert done.stdout.strip(), done.stderr
    result = json.loads(done.stdout)
    lines = trajectory.read_bytes().decode("utf-8").splitlines()  # strict: valid UTF-8
    return done.returncode, result, [json.loads(line) for line in lines]


def assert_well_ended(code: int, result: dict, events: list[dict], runtime_dir: Path) -> None:
    assert result["status"] in ("completed", "budget_exhausted", "error")
    assert (code == 0) == (result["status"] == "completed")
    assert events[0]["event"] == "run_started" and events[-1]["event"] == "run_finished"
    assert events[-1]["status"] == result["status"]
    if result["status"] == "completed":
        assert isinstance(result["answer"], str) and result["answer"].strip()
    assert rlmbox_containers(runtime_dir) == []


def test_a_small_model_run_ends_well_whatever_it_writes(small, runtime_dir, tmp_path):
    context = "\n".join(
        f"Line {n}: the {['red', 'green', 'blue'][n % 3]} box holds {n * 7} coins." for n in range(300)
    )
    code, result, events = run_cli(
        small,
        runtime_dir,
        tmp_path,
        context,
        "How many coins does the box on line 120 hold?",
        "--max-iterations",
        "6",
        "--max-time",
        "180",  # on a busy machine the run, not the test's timeout, must end it (as budget_exhausted)
    )
    assert_well_ended(code, result, events, runtime_dir)


def test_the_larger_model_finds_a_value_through_code(large, runtime_dir, tmp_path):
    """A guided query: the task says what the code should do, and the 1.5B model writes and runs it."""
    names = ["amber", "birch", "cobalt", "dune", "ember", "fjord", "garnet", "harbor"]
    context = "\n".join(f"{name}-{n}: {1000 + 37 * n + i}" for n in range(60) for i, name in enumerate(names))
    query = (
        "The context is a str of lines 'name: number'. With Python, find the line whose name is 'cobalt-42' "
        "and give its number as the final answer."
    )
    code, result, events = run_cli(large, runtime_dir, tmp_path, context, query, "--max-iterations", "8")
    assert_well_ended(code, result, events, runtime_dir)
    assert result["status"] == "completed"
    assert "2556" in result["answer"]  # 1000 + 37 * 42 + 2
    assert any(e["event"] == "cell" for e in events)  # found by running code
