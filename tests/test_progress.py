"""Live progress: counted from a run's events, drawn on a terminal only."""

from __future__ import annotations

import asyncio
import io
import os
import pty
import subprocess
import sys

import pytest

from rlmbox.progress import Progress, StatusLine

from support.openai_server import ScriptedOpenAIServer
from support.scripted_run import ROOT, SUB, cli_env, repl
from support.tree_script import TreeScript


class Clock:
    now = 10.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_counts_turns_cells_sub_calls_and_spend():
    clock = Clock()
    progress = Progress(clock)
    for event in (
        {"event": "node_started", "node": "1"},
        {"event": "root_call", "prompt_tokens": 100, "completion_tokens": 20, "cost_usd": 0.01},
        {"event": "sub_calls_started", "count": 5},
        *[{"event": "sub_call", "prompt_tokens": 10, "completion_tokens": 2, "cost_usd": None}] * 3,
        {"event": "cell"},
    ):
        progress(event)
    clock.now += 2.5
    assert progress.line() == (
        "turn 1 · cells 1 · sub-calls 3 done, 2 in flight · tokens 156 · $0.0100 · 2.5s"
    )


def test_the_status_line_is_drawn_on_a_terminal_and_cleared_after():
    async def draw(stream: io.StringIO) -> None:
        async with StatusLine(stream, lambda: "working", interval=0.01) as status:
            await asyncio.sleep(0.05)
            status.print_above("a result")

    terminal, pipe = Terminal(), io.StringIO()
    asyncio.run(draw(terminal))
    asyncio.run(draw(pipe))
    assert "\rworking" in terminal.getvalue() and "a result\n" in terminal.getvalue()
    assert terminal.getvalue().endswith("\r" + " " * len("working") + "\r")
    assert pipe.getvalue() == "a result\n"  # not a terminal: only the plain lines


@pytest.mark.docker
def test_rlmbox_run_shows_progress_on_a_terminal_and_nothing_when_piped(runtime_dir, tmp_path):
    (tmp_path / "c.txt").write_text("ctx")
    script = TreeScript(
        {"q": [repl("import time\nanswers = llm_query_batched(['echo a', 'echo b'])\ntime.sleep(1)"),
               repl("FINAL('done')")]}
    )  # fmt: skip
    with ScriptedOpenAIServer(script) as server:
        command = [
            sys.executable, "-m", "rlmbox.cli", "run", "--context", str(tmp_path / "c.txt"), "--query", "q",
            "--model", ROOT, "--sub-model", SUB, "--api-base", server.url,
        ]  # fmt: skip
        leader, follower = pty.openpty()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=follower, env=cli_env(runtime_dir))
        os.close(follower)
        drawn = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            drawn += chunk
        assert process.wait(timeout=60) == 0
        os.close(leader)
        piped = subprocess.run(command, capture_output=True, text=True, env=cli_env(runtime_dir), check=True)
    assert process.stdout.read() == b"done\n"
    assert b"\rturn 1 \xc2\xb7 cells 0 \xc2\xb7 sub-calls 2 done, 0 in flight" in drawn
    assert b"status: completed" in drawn
    assert piped.stdout == "done\n" and "\r" not in piped.stderr and "in flight" not in piped.stderr
