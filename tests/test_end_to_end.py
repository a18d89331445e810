"""Whole runs: a real container and bridge, and litellm's real HTTP path to a scripted OpenAI server."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlmbox import RLM, Settings

from support.containers import rlmbox_containers
from support.openai_server import Reply, Script, ScriptedOpenAIServer
from support.scripted_run import API_KEY, ROOT, ROOT_SEEN, SUB, SUB_SEEN, cli_env, repl, scripted_settings

pytestmark = pytest.mark.docker


def sub_answer(request: dict) -> Reply:
    """The sub-model: finds 'code=NNN' in its prompt, or says NONE."""
    match = re.search(r"code=(\d+)", request["messages"][-1]["content"])
    return Reply(text=match.group(1) if match else "NONE")


def run_settings(server: ScriptedOpenAIServer, runtime_dir: Path, tmp_path: Path, **limits) -> Settings:
    return scripted_settings(server.url, runtime_dir, tmp_path, limits=limits)


CONTEXT = "\n".join(f"record {i}: " + ("code=4711" if i == 737 else "nothing here") for i in range(2000))


def test_multi_turn_run_with_sub_calls_and_final_var(runtime_dir, tmp_path):
    script = Script(
        {
            ROOT_SEEN: [
                repl("lines = context.splitlines()\nprint(len(lines))"),
                repl(
                    "chunks = ['\\n'.join(lines[i:i + 500]) for i in range(0, len(lines), 500)]\n"
                    "answers = llm_query_batched(chunks)\nprint(answers)"
                ),
                repl("check = llm_query(chunks[1])\nanswer = f'the code is {check}'\nFINAL_VAR('answer')"),
            ],
        },
    )
    script.add(SUB_SEEN, *[sub_answer] * 5)
    with ScriptedOpenAIServer(script) as server:
        result = RLM(run_settings(server, runtime_dir, tmp_path)).run(CONTEXT, "What is the code?")
    assert result.status == "completed", result.error
    assert result.answer == "the code is 4711"
    assert (result.iterations, result.sub_calls) == (3, 5)
    assert result.usage[SUB].calls == 5 and result.usage[ROOT].calls == 3
    root_requests = script.requests_for(ROOT_SEEN)
    assert "2000" in root_requests[1]["messages"][-1]["content"]  # turn 1's output reached turn 2
    assert "['NONE', '4711', 'NONE', 'NONE']" in root_requests[2]["messages"][-1]["content"]
    assert all(CONTEXT not in json.dumps(r) for r in root_requests)
    trajectory = Path(result.trajectory).read_text()
    assert API_KEY not in trajectory
    assert trajectory.count('"event": "sub_call"') == 5
    assert rlmbox_containers(runtime_dir) == []


def test_error_in_a_cell_is_fed_back_and_recovered(runtime_dir, tmp_path):
    script = Script(
        {ROOT_SEEN: [repl("total = undefined_name + 1"), repl("total = 41 + 1"), Reply(text="FINAL(42)")]}
    )
    with ScriptedOpenAIServer(script) as server:
        result = RLM(run_settings(server, runtime_dir, tmp_path)).run("ctx", "q")
    assert (result.status, result.answer) == ("completed", "42")
    fed_back = script.requests_for(ROOT_SEEN)[1]["messages"][-1]["content"]
    assert "NameError" in fed_back and "undefined_name" in fed_back


def test_final_called_in_code(runtime_dir, tmp_path):
    script = Script({ROOT_SEEN: [repl("FINAL(sum(range(10)))")]})
    with ScriptedOpenAIServer(script) as server:
        result = RLM(run_settings(server, runtime_dir, tmp_path)).run("ctx", "q")
    assert (result.status, result.answer, result.iterations) == ("completed", "45", 1)


def test_sub_call_budget_is_enforced_in_the_kernel(runtime_dir, tmp_path):
    script = Script(
        {
            ROOT_SEEN: [
                repl(
                    "try:\n    llm_query_batched(['a', 'b', 'c'])\n"
                    "except BudgetExceededError as exc:\n    print('refused:', exc)"
                ),
                Reply(text="FINAL(gave up)"),
            ]
        },
        default=Reply(text="sub answer"),
    )
    with ScriptedOpenAIServer(script) as server:
        result = RLM(run_settings(server, runtime_dir, tmp_path, max_sub_calls=2)).run("ctx", "q")
    assert result.sub_calls == 0 and script.requests_for(SUB_SEEN) == []
    assert (
        "refused: 3 sub-calls requested but only 2 of 2 remain"
        in (script.requests_for(ROOT_SEEN)[1]["messages"][-1]["content"])
    )


def test_iteration_budget_exhaustion(runtime_dir, tmp_path):
    script = Script({ROOT_SEEN: [repl("x = 1"), repl("x += 1"), Reply(text="FINAL(partial: x is 2)")]})
    with ScriptedOpenAIServer(script) as server:
        result = RLM(run_settings(server, runtime_dir, tmp_path, max_iterations=2)).run("ctx", "q")
    assert result.status == "budget_exhausted" and result.budget_limit == "iterations"
    assert result.answer == "partial: x is 2"


def test_provider_500_is_retried(runtime_dir, tmp_path):
    script = Script({ROOT_SEEN: [Reply(status=500), Reply(text="FINAL(after retry)")]})
    with ScriptedOpenAIServer(script) as server:
        result = RLM(run_settings(server, runtime_dir, tmp_path)).run("ctx", "q")
    assert (result.status, result.answer) == ("completed", "after retry")
    assert len(script.requests_for(ROOT_SEEN)) == 2


# -- the CLI contract --------------------------------------------------------------------------------------


def rlmbox(*args: str, runtime_dir: Path, stdin: str | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = cli_env(runtime_dir)
    return subprocess.run(
        [sys.executable, "-m", "rlmbox.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
        **kwargs,
    )


def test_cli_run_json_contract(runtime_dir, tmp_path):
    context = tmp_path / "big.txt"
    context.write_text(CONTEXT)
    script = Script(
        {ROOT_SEEN: [repl("hits = [l for l in context.splitlines() if 'code=' in l]\nFINAL(hits[0])")]}
    )
    with ScriptedOpenAIServer(script) as server:
        done = rlmbox(
            "run", "--context", str(context), "--query", "Which record has the code?",
            "--model", ROOT, "--api-base", server.url, "--json",
            "--trajectory", str(tmp_path / "t.jsonl"),
            runtime_dir=runtime_dir,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # exactly one JSON object on stdout
    required = {
        "answer",
        "status",
        "iterations",
        "sub_calls",
        "usage",
        "cost_usd",
        "elapsed_s",
        "trajectory",
        "error",
    }
    assert required <= result.keys()
    assert result["status"] == "completed" and result["answer"] == "record 737: code=4711"
    assert Path(result["trajectory"]).exists()
    assert API_KEY not in Path(result["trajectory"]).read_text()


def test_cli_exec_prints_the_cell_result(runtime_dir, tmp_path):
    context = tmp_path / "docs.json"
    context.write_text(json.dumps(["a", "bb", "ccc"]))
    done = rlmbox(
        "exec", "--context", str(context), stdin="print([len(d) for d in context])", runtime_dir=runtime_dir
    )
    assert (done.returncode, done.stdout) == (0, "[1, 2, 3]\n")
    failed = rlmbox("exec", "--json", stdin="1/0", runtime_dir=runtime_dir)
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["error"]["ename"] == "ZeroDivisionError"


def test_cli_budget_exhaustion_exits_non_zero(runtime_dir, tmp_path):
    context = tmp_path / "c.txt"
    context.write_text("ctx")
    script = Script({ROOT_SEEN: [repl("x = 1"), Reply(text="no idea")]})
    with ScriptedOpenAIServer(script) as server:
        done = rlmbox(
            "run", "--context", str(context), "--query", "q", "--model", ROOT, "--api-base", server.url,
            "--max-iterations", "1", "--json", "--trajectory", str(tmp_path / "t.jsonl"),
            runtime_dir=runtime_dir,
        )  # fmt: skip
    assert done.returncode == 5
    assert json.loads(done.stdout)["status"] == "budget_exhausted"


def test_cli_unknown_provider_is_a_clear_error(runtime_dir, tmp_path):
    context = tmp_path / "c.txt"
    context.write_text("ctx")
    done = rlmbox(
        "run", "--context", str(context), "--query", "q", "--model", "nosuchprovider/model",
        "--trajectory", str(tmp_path / "t.jsonl"), runtime_dir=runtime_dir,
    )  # fmt: skip
    assert done.returncode == 4
    assert "nosuchprovider/model" in done.stderr and "Traceback" not in done.stderr
    assert rlmbox_containers(runtime_dir) == []


def test_cli_demo_runs_offline_end_to_end(runtime_dir, tmp_path):
    """`rlmbox demo` with no model: the scripted policy drives a real container, bridge and sub-calls."""
    from rlmbox.demo.haystack import make_haystack

    done = rlmbox(
        "demo", "--size", "500000", "--seed", "3", "--json", "--trajectory", str(tmp_path / "t.jsonl"),
        runtime_dir=runtime_dir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "not a language model" in done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "completed"
    assert result["answer"] == make_haystack(500_000, seed=3).answer
    assert result["sub_calls"] >= 3 and result["iterations"] == 3
    assert rlmbox_containers(runtime_dir) == []
