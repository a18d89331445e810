"""Faults a run must survive, or end cleanly from with its trajectory kept: a killed rlmbox process, a lost
container or daemon, a failing provider, Ctrl-C in the middle of a fan-out."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import docker
import pytest

from rlmbox import RLM, Settings

from support.attacks import run_attack
from support.containers import rlmbox_containers
from support.openai_server import Reply, Script, ScriptedOpenAIServer
from support.scripted_run import (
    ROOT,
    ROOT_SEEN,
    SUB,
    SUB_SEEN,
    cli_env,
    repl,
    scripted_settings,
    wait_for,
)

pytestmark = [pytest.mark.docker, pytest.mark.attack("faults")]


def events(trajectory: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(trajectory).read_text().splitlines()]


def kill_container_when_the_cell_runs(runtime_dir: Path, marker: Path) -> threading.Thread:
    """Kill the session's container from outside once the cell has written ``marker``."""

    def killer() -> None:
        wait_for(marker.exists)
        client = docker.from_env()
        (container_id,) = rlmbox_containers(runtime_dir)
        client.containers.get(container_id).kill()
        client.close()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    return thread


def test_a_container_killed_mid_run_is_replaced(runtime_dir, tmp_path, observe):
    marker = runtime_dir.parent / f"{runtime_dir.name}.started"
    killer = kill_container_when_the_cell_runs(runtime_dir, marker)
    try:
        run = _run_with_marker("import time\ntime.sleep(60)", marker, runtime_dir, tmp_path)
    finally:
        killer.join(timeout=30)
        marker.unlink(missing_ok=True)
    (death,) = [e for e in run.events if e["event"] == "kernel_died"]
    assert "restarted" in run.feedback[0]
    assert run.survived and run.leftovers == []
    observe(
        "container killed from outside mid-cell", f"reported ({death['reason']}); new container; run went on"
    )


def _run_with_marker(cell: str, marker: Path, runtime_dir: Path, tmp_path: Path, **limits):
    """Run ``cell`` after an ``llm_query`` that touches ``marker`` on the host: the cell is then running."""

    def sub_model(request: dict) -> Reply:
        marker.touch()
        return Reply(text="ok")

    return run_attack(
        [f"llm_query('start')\n{cell}"], runtime_dir, tmp_path, limits=limits, sub_model=sub_model
    )


def test_a_container_that_keeps_dying_ends_the_run_with_its_trajectory(runtime_dir, tmp_path, observe):
    marker = runtime_dir.parent / f"{runtime_dir.name}.started"
    killer = kill_container_when_the_cell_runs(runtime_dir, marker)
    try:
        run = _run_with_marker(
            "import time\ntime.sleep(60)", marker, runtime_dir, tmp_path, max_kernel_restarts=0
        )
    finally:
        killer.join(timeout=30)
        marker.unlink(missing_ok=True)
    assert run.result.status == "error" and run.result.error_type == "KernelDiedError"
    kinds = [e["event"] for e in run.events]
    assert kinds[-3:] == ["kernel_died", "node_finished", "run_finished"] and "root_call" in kinds
    assert run.leftovers == []
    observe(
        "container lost with no restarts left", f"status error ({run.result.error_type}); trajectory kept"
    )


def test_docker_daemon_unreachable_at_start(runtime_dir, tmp_path, monkeypatch, observe):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    script = Script({ROOT_SEEN: [Reply(text="FINAL(x)")]})
    with ScriptedOpenAIServer(script) as server:
        result = RLM(settings(server, runtime_dir, tmp_path)).run("ctx", "q")
    assert result.status == "error" and result.error_type == "DockerUnavailableError"
    assert "cannot reach the Docker daemon" in result.error
    assert [e["event"] for e in events(result.trajectory)][-1] == "run_finished"
    observe("Docker daemon unreachable", "status error: cannot reach the Docker daemon (how to start it)")


def settings(server: ScriptedOpenAIServer, runtime_dir: Path, tmp_path: Path, **llm) -> Settings:
    return scripted_settings(server.url, runtime_dir, tmp_path, llm={"max_retries": 2, **llm})


FIRST_TURN = repl("x = 1\nprint('first turn ran')")


@pytest.mark.parametrize(
    ("fault", "replies", "llm", "error_type"),
    [
        ("HTTP 500, every time", [Reply(status=500)] * 3, {}, "LLMError"),
        (
            "HTTP 429 with Retry-After, every time",
            [Reply(status=429, headers={"Retry-After": "0.2"})] * 3,
            {},
            "LLMRateLimitError",
        ),
        (
            "a reply slower than the timeout",
            [Reply(text="late", delay_s=5)] * 3,
            {"request_timeout_s": 0.5},
            "LLMTimeoutError",
        ),
        ("a malformed JSON body", [Reply(raw_body=b'{"choices": [')] * 3, {}, "LLMError"),
    ],
)
def test_provider_failures_end_the_run_cleanly_with_the_trajectory(
    runtime_dir, tmp_path, observe, fault, replies, llm, error_type
):
    script = Script({ROOT_SEEN: [FIRST_TURN, *replies]})
    with ScriptedOpenAIServer(script) as server:
        started = time.perf_counter()
        result = RLM(settings(server, runtime_dir, tmp_path, **llm)).run("ctx", "q")
        elapsed = time.perf_counter() - started
    assert result.status == "error" and result.error_type == error_type, result.error
    assert len(script.requests_for(ROOT_SEEN)) == 4  # the first turn, then 1 try + 2 retries
    kinds = [e["event"] for e in events(result.trajectory)]
    assert "cell" in kinds and kinds[-1] == "run_finished"  # the first turn's work is kept
    assert rlmbox_containers(runtime_dir) == []
    observe(
        f"provider: {fault}",
        f"retried twice, then status error ({error_type}) in {elapsed:.1f}s; trajectory kept",
    )


def test_retry_after_is_honoured_and_the_run_completes(runtime_dir, tmp_path, observe):
    script = Script({ROOT_SEEN: [Reply(status=429, headers={"Retry-After": "1"}), Reply(text="FINAL(ok)")]})
    with ScriptedOpenAIServer(script) as server:
        result = RLM(settings(server, runtime_dir, tmp_path)).run("ctx", "q")
    assert (result.status, result.answer) == ("completed", "ok")
    assert result.elapsed_s >= 1.0
    observe("provider: one 429 with Retry-After: 1", f"waited, retried, completed in {result.elapsed_s:.1f}s")


def test_connection_refused_is_a_clear_error(runtime_dir, tmp_path, observe):
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    config = Settings(
        llm={
            "model": ROOT,
            "api_base": f"http://127.0.0.1:{port}/v1",
            "api_key": "k",
            "retry_backoff_s": 0.01,
        },
        sandbox={"runtime_dir": runtime_dir},
        trajectory_dir=tmp_path / "runs",
    )
    result = RLM(config).run("ctx", "q")
    assert result.status == "error" and "connect" in result.error.lower()
    assert [e["event"] for e in events(result.trajectory)][-1] == "run_finished"
    observe("provider: connection refused", f"status error ({result.error_type}); trajectory kept")


@pytest.mark.parametrize(("name", "reply"), [("empty", Reply(text="")), ("null", Reply(text=None))])
def test_empty_replies_get_a_reminder_and_the_run_goes_on(runtime_dir, tmp_path, observe, name, reply):
    script = Script({ROOT_SEEN: [reply, Reply(text="FINAL(recovered)")]})
    with ScriptedOpenAIServer(script) as server:
        result = RLM(settings(server, runtime_dir, tmp_path)).run("ctx", "q")
    assert (result.status, result.answer) == ("completed", "recovered")
    reminder = script.requests_for(ROOT_SEEN)[1]["messages"][-1]["content"]
    assert "reply was empty" in reminder and "```repl" in reminder and "FINAL(" in reminder
    observe(f"provider: {name} content", "the model is reminded to write code; the run goes on")


def cli(runtime_dir: Path, *args: str) -> subprocess.Popen:
    env = cli_env(runtime_dir)
    return subprocess.Popen(
        [sys.executable, "-m", "rlmbox.cli", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_ctrl_c_during_a_batched_sub_call_cancels_every_call(runtime_dir, tmp_path, observe):
    (tmp_path / "c.txt").write_text("ctx")
    script = Script(
        {ROOT_SEEN: [repl("answers = llm_query_batched([f'q{i}' for i in range(8)])")]},
        default=Reply(text="slow", delay_s=60),
    )
    trajectory = tmp_path / "t.jsonl"
    with ScriptedOpenAIServer(script) as server:
        process = cli(
            runtime_dir, "run", "--context", str(tmp_path / "c.txt"), "--query", "q", "--model", ROOT,
            "--sub-model", SUB, "--api-base", server.url, "--trajectory", str(trajectory),
        )  # fmt: skip
        wait_for(lambda: len(script.requests_for(SUB_SEEN)) == 8, timeout=60)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        wait_for(lambda: server.abandoned == 8, timeout=10)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    assert rlmbox_containers(runtime_dir) == [] and list(runtime_dir.iterdir()) == []
    kinds = [e["event"] for e in events(trajectory)]
    assert kinds[0] == "run_started" and kinds[-1] == "run_interrupted"
    observe(
        "Ctrl-C during 8 in-flight sub-calls", "all 8 HTTP requests abandoned; container removed; exit 130"
    )


def test_the_next_start_reaps_what_a_killed_run_left(runtime_dir, tmp_path, observe):
    (tmp_path / "c.txt").write_text("ctx")
    script = Script(
        {ROOT_SEEN: [repl("llm_query('started')\nimport time\ntime.sleep(120)")]}, default=Reply(text="ok")
    )
    with ScriptedOpenAIServer(script) as server:
        process = cli(
            runtime_dir, "run", "--context", str(tmp_path / "c.txt"), "--query", "q", "--model", ROOT,
            "--sub-model", SUB, "--api-base", server.url, "--trajectory", str(tmp_path / "t.jsonl"),
        )  # fmt: skip
        wait_for(lambda: len(script.requests_for(SUB_SEEN)) == 1, timeout=60)  # the cell is running
        process.kill()  # SIGKILL: no clean-up code runs
        process.communicate(timeout=30)
    assert len(rlmbox_containers(runtime_dir)) == 1 and len(list(runtime_dir.iterdir())) == 1
    reaper = cli(runtime_dir, "exec")
    out, err = reaper.communicate("print('fresh')", timeout=120)
    assert reaper.returncode == 0 and out == "fresh\n", err
    assert rlmbox_containers(runtime_dir) == [] and list(runtime_dir.iterdir()) == []
    observe("rlmbox SIGKILLed mid-run", "orphan container and session directory removed by the next start")
