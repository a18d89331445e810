"""Call trees deeper than one level: child RLMs on their own sandboxes, one budget, cancellation reaching
every descendant. Real containers and bridge; litellm's real HTTP path to scripted models."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rlmbox import RLM, RunResult, SandboxPool, Settings

from support.containers import rlmbox_containers
from support.openai_server import Reply, ScriptedOpenAIServer
from support.scripted_run import ROOT, SUB, SUB_SEEN, cli_env, repl, scripted_settings, wait_for
from support.tree_script import TreeScript

pytestmark = pytest.mark.docker

NUMBERS = list(range(1, 31))  # sums to 465


def tree_settings(
    server: ScriptedOpenAIServer, runtime_dir: Path, tmp_path: Path, sandbox: dict | None = None, **limits
) -> Settings:
    """Two levels unless told otherwise, and 256 MiB sandboxes."""
    return scripted_settings(
        server.url,
        runtime_dir,
        tmp_path,
        sandbox={"memory": "256m", **(sandbox or {})},
        limits={"max_depth": 2, **limits},
    )


def events(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def cheap(reply: Reply) -> Reply:
    """The same reply, reported as costing 20 tokens (so token budgets are exact)."""
    return dataclasses.replace(reply, prompt_tokens=10, completion_tokens=10)


def test_depth_two_batched_children_work_on_their_own_contexts(runtime_dir, tmp_path):
    script = TreeScript(
        {
            "top": [
                repl(
                    "parts = rlm_query_batched([f'sum part {i}' for i in range(3)],"
                    " [context[i::3] for i in range(3)])\nprint(parts)"
                ),
                repl("FINAL(sum(int(p) for p in parts))"),
            ],
            "sum part": [repl("FINAL(str(sum(context)))")],
        }
    )
    with ScriptedOpenAIServer(script) as server:
        result = RLM(tree_settings(server, runtime_dir, tmp_path)).run(NUMBERS, "top: sum everything")
    assert (result.status, result.answer) == ("completed", "465"), result.error
    tree = result.tree
    assert {node.id: node.parent for node in tree.nodes} == {"1": None, "1.1": "1", "1.2": "1", "1.3": "1"}
    assert tree.node_count == 4 and tree.depth_reached == 2
    assert all(node.status == "completed" for node in tree.nodes)
    # Each child is an RLM driven by the sub-model, whose REPL holds only its own part of the context.
    children = script.requests_for("sum part")
    assert {request["model"] for request in children} == {SUB_SEEN}
    assert all("`context` is a list of 10 items" in r["messages"][0]["content"] for r in children)
    root_prompt = script.requests_for("top")[0]["messages"][0]["content"]
    assert "rlm_query_batched" in root_prompt and "depth 1 of 2" in root_prompt
    # One ledger: the result counts the whole tree, and says what each level spent.
    assert (result.iterations, result.sub_calls) == (2 + 3, 3)
    assert result.usage[ROOT].calls == 2 and result.usage[SUB].calls == 3
    assert tree.usage_by_depth[1][ROOT].calls == 2 and tree.usage_by_depth[2][SUB].calls == 3
    trajectory = events(result.trajectory)
    started = {e["node"]: (e["parent"], e["depth"]) for e in trajectory if e["event"] == "node_started"}
    assert started == {"1": (None, 1), "1.1": ("1", 2), "1.2": ("1", 2), "1.3": ("1", 2)}
    assert all("node" in e for e in trajectory if not e["event"].startswith("run_"))
    assert rlmbox_containers(runtime_dir) == []


def test_depth_three_tree_with_fewer_sandboxes_than_nodes(runtime_dir, tmp_path):
    halves = "[context[: len(context) // 2], context[len(context) // 2 :]]"
    script = TreeScript(
        {
            "top": [
                repl(
                    f"parts = rlm_query_batched(['half 0', 'half 1'], {halves})\nFINAL(sum(map(int, parts)))"
                )
            ],
            "half": [
                repl(
                    f"parts = rlm_query_batched(['quarter 0', 'quarter 1'], {halves})\n"
                    "FINAL(str(sum(map(int, parts))))"
                )
            ],
            # At the deepest level rlm_query is llm_query: the scripted sub-model echoes the number back.
            "quarter": [repl("FINAL(rlm_query(f'echo {sum(context)}'))")],
        }
    )
    with ScriptedOpenAIServer(script) as server:
        settings = tree_settings(server, runtime_dir, tmp_path, max_depth=3, max_sandboxes=3)
        result = RLM(settings).run(NUMBERS, "top: sum everything")
    assert (result.status, result.answer) == ("completed", "465"), result.error
    tree = result.tree
    assert sorted(node.id for node in tree.nodes) == [
        "1", "1.1", "1.1.1", "1.1.2", "1.2", "1.2.1", "1.2.2",
    ]  # fmt: skip
    assert tree.depth_reached == 3 and all(node.status == "completed" for node in tree.nodes)
    assert tree.peak_sandboxes == 3  # the cap held, and the tree did not deadlock under it
    assert sorted(r["messages"][0]["content"] for r in script.sub_requests) == [
        "echo 133", "echo 212", "echo 28", "echo 92",
    ]  # fmt: skip
    deepest = script.requests_for("quarter")[0]["messages"][0]["content"]
    assert "the deepest allowed" in deepest
    assert set(tree.usage_by_depth) == {1, 2, 3}
    assert tree.usage_by_depth[3][SUB].calls == 4 + 4  # four nodes' turns and their four sub-calls
    assert result.sub_calls == 2 + 4 + 4
    assert rlmbox_containers(runtime_dir) == []


def test_a_child_exhausting_the_shared_budget_stops_every_node(runtime_dir, tmp_path):
    fan_out = "parts = rlm_query_batched(['greedy', 'slow 1', 'slow 2'])\nprint(parts)"
    waiting: list[dict] = []
    siblings_waiting = threading.Event()

    def slow_second_turn(request: dict) -> Reply:
        waiting.append(request)  # this sibling has had its first turn and waits for its second
        if len(waiting) == 2:
            siblings_waiting.set()
        return cheap(Reply(text="FINAL(not reached)", delay_s=60))

    def greedy_first_turn(request: dict) -> Reply:
        # Answered once both siblings wait for their slow second turn, however long their sandboxes took
        # to start; it costs 100,000 tokens: far past the tree's 5,000.
        siblings_waiting.wait(timeout=60)
        return Reply(text="Greedy partial.\n```repl\nx = 1\n```", prompt_tokens=99_990, completion_tokens=10)

    script = TreeScript(
        {
            "top": [cheap(repl(fan_out, "Working.")), cheap(Reply(text="FINAL(not reached)"))],
            "greedy": [greedy_first_turn, cheap(Reply(text="FINAL(not reached)"))],
            "slow": [cheap(Reply(text="Slow partial.\n```repl\ny = 2\n```")), slow_second_turn],
        }
    )
    with ScriptedOpenAIServer(script) as server:
        result = RLM(tree_settings(server, runtime_dir, tmp_path, max_tokens=5000)).run("ctx", "top")
    assert (result.status, result.budget_limit, result.answer) == ("budget_exhausted", "tokens", "Working.")
    assert result.elapsed_s < 30  # nobody waited for the slow turns
    nodes = {node.id: node for node in result.tree.nodes}
    assert {n.status for n in nodes.values()} == {"budget_exhausted"}
    assert {n.budget_limit for n in nodes.values()} == {"tokens"}
    finished = {e["node"]: e for e in events(result.trajectory) if e["event"] == "node_finished"}
    assert finished["1.1"]["answer"]["preview"] == "Greedy partial."
    assert finished["1.2"]["answer"]["preview"] == finished["1.3"]["answer"]["preview"] == "Slow partial."
    assert "not reached" not in Path(result.trajectory).read_text()
    assert result.tree.usage_by_depth[2][SUB].prompt_tokens >= 99_990
    assert rlmbox_containers(runtime_dir) == []


def test_children_wait_for_the_host_without_using_up_the_parents_cell_time(runtime_dir, tmp_path):
    script = TreeScript(
        {
            "top": [repl("FINAL(rlm_query('slow child'))")],
            "slow child": [Reply(text="```repl\nx = 1\n```", delay_s=2.0), Reply(text="FINAL(done)")],
        }
    )
    with ScriptedOpenAIServer(script) as server:
        settings = tree_settings(server, runtime_dir, tmp_path, sandbox={"cell_timeout_s": 1.0})
        result = RLM(settings).run("ctx", "top")
    assert (result.status, result.answer) == ("completed", "done"), result.error
    (cell,) = [e for e in events(result.trajectory) if e["event"] == "cell" and e["node"] == "1"]
    assert cell["duration_s"] > 2.0 and not cell["timed_out"]


def test_a_child_killed_for_memory_is_an_error_string_for_its_parent(runtime_dir, tmp_path):
    bomb = "blocks = []\nwhile True:\n    blocks.append(bytearray(32 * 2**20))"
    script = TreeScript(
        {
            "top": [repl("answers = rlm_query_batched(['bomb', 'fine'])"), repl("FINAL(answers)")],
            "bomb": [repl(bomb)],
            "fine": [repl("FINAL('fine answer')")],
        }
    )
    with ScriptedOpenAIServer(script) as server:
        settings = tree_settings(server, runtime_dir, tmp_path, max_kernel_restarts=0)
        result = RLM(settings).run("ctx", "top")
    assert result.status == "completed", result.error
    answers = json.loads(result.answer)
    assert answers[0].startswith("[rlm_query failed: the child RLM 1.1 stopped (error:")
    assert "out of memory" in answers[0] and "256 MiB" in answers[0]
    assert answers[1] == "fine answer"
    statuses = {node.id: node.status for node in result.tree.nodes}
    assert statuses == {"1": "completed", "1.1": "error", "1.2": "completed"}
    assert rlmbox_containers(runtime_dir) == []


def test_at_the_depth_limit_rlm_query_is_llm_query_with_the_context(runtime_dir, tmp_path):
    script = TreeScript({"top": [repl("FINAL(rlm_query('echo summary of', context=['a', 'b']))")]})
    with ScriptedOpenAIServer(script) as server:
        result = RLM(tree_settings(server, runtime_dir, tmp_path, max_depth=1)).run("ctx", "top")
    assert result.status == "completed", result.error
    assert result.answer == 'summary of\n\nContext:\n["a", "b"]'
    assert result.tree.node_count == 1 and result.sub_calls == 1
    assert "rlm_query" not in script.requests_for("top")[0]["messages"][0]["content"]
    assert rlmbox_containers(runtime_dir) == []


def test_cancelling_a_run_mid_fan_out_removes_every_descendant(runtime_dir, tmp_path):
    script = TreeScript(
        {
            "top": [repl("parts = rlm_query_batched([f'sleepy {i}' for i in range(3)])")],
            "sleepy": [repl("import time\ntime.sleep(60)")],
        }
    )

    async def run_and_cancel(settings: Settings) -> list[str]:
        run = asyncio.ensure_future(RLM(settings).arun("ctx", "top", trajectory=tmp_path / "t.jsonl"))
        await asyncio.to_thread(wait_for, lambda: len(script.requests_for("sleepy")) == 3)
        await asyncio.sleep(1.0)  # the children's cells are running
        during = rlmbox_containers(runtime_dir)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        return during

    with ScriptedOpenAIServer(script) as server:
        during = asyncio.run(run_and_cancel(tree_settings(server, runtime_dir, tmp_path)))
    assert len(during) >= 4  # the root and its three children (and any warm sandbox)
    assert rlmbox_containers(runtime_dir) == [] and list(runtime_dir.iterdir()) == []
    trajectory = events(tmp_path / "t.jsonl")
    finished = {e["node"]: e["status"] for e in trajectory if e["event"] == "node_finished"}
    assert finished == dict.fromkeys(["1", "1.1", "1.2", "1.3"], "cancelled")
    assert trajectory[-1]["event"] == "run_interrupted"


def test_ctrl_c_on_the_cli_removes_a_depth_three_tree(runtime_dir, tmp_path):
    (tmp_path / "numbers.json").write_text(json.dumps(NUMBERS))
    script = TreeScript(
        {
            "top": [repl("parts = rlm_query_batched(['mid 0', 'mid 1'])")],
            "mid": [repl("parts = rlm_query_batched(['leaf 0', 'leaf 1'])")],
            "leaf": [repl("import time\ntime.sleep(60)")],
        }
    )
    with ScriptedOpenAIServer(script) as server:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "rlmbox.cli", "run", "--context", str(tmp_path / "numbers.json"),
                "--query", "top", "--model", ROOT, "--sub-model", SUB, "--api-base", server.url,
                "--max-depth", "3", "--warm-sandboxes", "0",
            ],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(runtime_dir),
        )  # fmt: skip
        wait_for(lambda: len(script.requests_for("leaf")) == 4, timeout=90)
        time.sleep(1.0)
        during = len(rlmbox_containers(runtime_dir))
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=90)
    assert during == 7
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert rlmbox_containers(runtime_dir) == [] and list(runtime_dir.iterdir()) == []


def test_cli_json_result_has_the_tree_totals(runtime_dir, tmp_path):
    (tmp_path / "numbers.json").write_text(json.dumps(NUMBERS))
    script = TreeScript(
        {
            "top": [repl("parts = rlm_query_batched(['part 0', 'part 1'], [context[:15], context[15:]])\n"
                         "FINAL(sum(map(int, parts)))")],
            "part": [repl("FINAL(str(sum(context)))")],
        }
    )  # fmt: skip
    with ScriptedOpenAIServer(script) as server:
        process = subprocess.run(  # noqa: PLW1510 (the exit code is asserted)
            [
                sys.executable, "-m", "rlmbox.cli", "run", "--context", str(tmp_path / "numbers.json"),
                "--query", "top", "--model", ROOT, "--sub-model", SUB, "--api-base", server.url,
                "--max-depth", "2", "--json",
            ],
            capture_output=True, text=True, env=cli_env(runtime_dir), timeout=120,
        )  # fmt: skip
    assert process.returncode == 0, process.stderr
    result = json.loads(process.stdout)
    assert result["answer"] == "465" and result["iterations"] == 3 and result["sub_calls"] == 2
    tree = result["tree"]
    assert tree["node_count"] == 3 and tree["depth_reached"] == 2
    assert tree["usage_by_depth"]["2"][SUB]["calls"] == 2
    assert [node["id"] for node in tree["nodes"]] == ["1", "1.1", "1.2"]
    assert rlmbox_containers(runtime_dir) == []


def test_the_trees_deadline_stops_every_node_as_out_of_budget(runtime_dir, tmp_path):
    script = TreeScript(
        {
            "top": [repl("parts = rlm_query_batched(['sleepy 0', 'sleepy 1'])", "Fanned out.")],
            "sleepy": [repl("import time\ntime.sleep(60)", "Sleeping.")],
        }
    )

    async def run_on_started_sandboxes(settings: Settings) -> RunResult:
        # The clock starts once a sandbox per node is up: the deadline falls while the children sleep
        # in their cells, however long containers take to start on this machine.
        async with SandboxPool(settings.sandbox, size=3) as pool:
            await pool.wait_ready(timeout=120)
            assert pool.ready == 3
            return await RLM(settings, pool=pool).arun("ctx", "top")

    with ScriptedOpenAIServer(script) as server:
        settings = tree_settings(server, runtime_dir, tmp_path, max_wall_s=6)
        result = asyncio.run(run_on_started_sandboxes(settings))
    assert (result.status, result.budget_limit, result.answer) == (
        "budget_exhausted",
        "wall_time",
        "Fanned out.",
    )
    assert [(n.id, n.status, n.budget_limit) for n in result.tree.nodes] == [
        ("1", "budget_exhausted", "wall_time"),
        ("1.1", "budget_exhausted", "wall_time"),
        ("1.2", "budget_exhausted", "wall_time"),
    ]
    assert len(script.requests_for("sleepy")) == 2  # both children were in their cells
    assert rlmbox_containers(runtime_dir) == []
