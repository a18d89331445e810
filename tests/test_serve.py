"""``rlmbox serve`` as a real server process, used through the official ``openai`` client; the RLM behind it
runs in real containers against scripted models."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import httpx
import openai
import pytest

from support.containers import rlmbox_containers
from support.openai_server import Reply, ScriptedOpenAIServer
from support.scripted_run import API_KEY, ROOT, SUB, repl, wait_for
from support.serving import start_serve
from support.tree_script import TreeScript

pytestmark = pytest.mark.docker

TOKEN = "serve-token-0123456789"
MODEL = f"rlmbox/{ROOT}"


@dataclass
class Served:
    url: str
    runtime_dir: Path
    runs: Path
    script: TreeScript

    def client(self, token: str = TOKEN) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=token, max_retries=0, timeout=120)


SCRIPT = {
    "top": [repl("FINAL(sum(context))")],
    "length question": [repl("FINAL(len(context))", "Measuring.")],
    "slow": [Reply(text="```repl\nx = 1\n```", delay_s=4), repl("FINAL('slow done')")],
    "sleepy": [repl("import time\ntime.sleep(60)", "Sleeping on it.")],
}


def start_server(runtime_dir: Path, runs: Path, upstream: str, log: TextIO) -> tuple[subprocess.Popen, str]:
    """``rlmbox serve`` in front of the scripted models; returns the process and its base URL."""
    flags = [
        "--token", TOKEN, "--model", ROOT, "--sub-model", SUB, "--api-base", upstream, "--max-runs", "2",
        "--max-body", "1m", "--timeout", "8", "--warm-sandboxes", "0", "--memory", "256m",
    ]  # fmt: skip
    return start_serve(flags, runtime_dir=runtime_dir, runs=runs, log=log)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    from conftest import IN_CI, docker_problem

    if (problem := docker_problem()) is not None:
        if IN_CI:
            pytest.fail(f"Docker tests must run in CI: {problem}")
        pytest.skip(problem)
    runtime_dir = Path(tempfile.mkdtemp(prefix="rbs-", dir="/tmp"))
    runs = Path(tempfile.mkdtemp(prefix="rlmbox-serve-runs-"))
    script = TreeScript(SCRIPT)
    with ScriptedOpenAIServer(script) as upstream, (runs / "server.log").open("w") as log:
        process, url = start_server(runtime_dir, runs, upstream.url, log)
        try:
            yield Served(url, runtime_dir, runs, script)
        finally:
            process.terminate()
            process.wait(timeout=60)
    assert rlmbox_containers(runtime_dir) == []
    shutil.rmtree(runtime_dir, ignore_errors=True)
    shutil.rmtree(runs, ignore_errors=True)


def test_models_and_a_completion_through_the_openai_client(served):
    client = served.client()
    assert [m.id for m in client.models.list().data] == [MODEL]
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "top: add them up"}],
        extra_body={"context": [1, 2, 3]},
    )
    assert answer.choices[0].message.content == "6" and answer.choices[0].finish_reason == "stop"
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens > 0
    run = answer.model_extra["rlmbox"]
    assert run["status"] == "completed" and run["iterations"] == 1
    assert (served.runs / f"{run['run_id']}.jsonl").exists()


def test_without_a_context_field_the_last_user_message_is_the_context(served):
    answer = served.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "length question"}, {"role": "user", "content": "x" * 5000}],
    )
    assert answer.choices[0].message.content == "5000"


def test_streaming_sends_progress_then_the_answer_and_usage(served):
    chunks = list(
        served.client().chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "top: stream it"}],
            extra_body={"context": [4, 5]},
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    progress = [c.model_extra["rlmbox_progress"] for c in chunks if c.model_extra.get("rlmbox_progress")]
    assert [p["event"] for p in progress] == ["node_started", "root_call", "cell", "node_finished"]
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "9"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_refusals_are_openai_errors(served):
    for guess in ("guess", " " + TOKEN, TOKEN[:-1]):
        with pytest.raises(openai.AuthenticationError) as denied:
            served.client(token=guess).models.list()
        assert denied.value.code == "invalid_api_key"
    for header in (b"Bearer \xa0", b"Bearer \xff", f"bearer {TOKEN}".encode(), TOKEN.encode()):
        assert httpx.get(f"{served.url}/v1/models", headers={"Authorization": header}).status_code == 401
    with pytest.raises(openai.NotFoundError) as unknown:
        served.client().chat.completions.create(
            model="rlmbox/openai/gpt-5", messages=[{"role": "user", "content": "q"}]
        )
    assert unknown.value.code == "model_not_found" and MODEL in unknown.value.message
    headers = {"Authorization": f"Bearer {TOKEN}"}
    too_big = httpx.post(
        f"{served.url}/v1/chat/completions",
        headers=headers,
        json={"model": MODEL, "messages": [{"role": "user", "content": "q"}], "context": "x" * 2_000_000},
    )
    assert too_big.status_code == 413 and "limit" in too_big.json()["error"]["message"]
    garbage = httpx.post(f"{served.url}/v1/chat/completions", headers=headers, content=b"{not json")
    assert garbage.status_code == 400 and garbage.json()["error"]["type"] == "invalid_request_error"
    no_user = httpx.post(
        f"{served.url}/v1/chat/completions",
        headers=headers,
        json={"model": MODEL, "messages": [{"role": "system", "content": "q"}]},
    )
    assert no_user.status_code == 400 and "no user message" in no_user.json()["error"]["message"]


def test_runs_past_the_cap_are_turned_away(served):
    answers: list[str] = []

    def slow() -> None:
        reply = served.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "slow"}], extra_body={"context": "c"}
        )
        answers.append(reply.choices[0].message.content)

    threads = [threading.Thread(target=slow) for _ in range(2)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(served.script.requests_for("slow")) == 2, timeout=60)
    with pytest.raises(openai.RateLimitError, match="2 runs are already in progress"):
        served.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "top"}], extra_body={"context": [1]}
        )
    for thread in threads:
        thread.join(timeout=120)
    assert answers == ["slow done", "slow done"]


def test_a_client_that_hangs_up_ends_its_run_and_its_container(served):
    before = set(served.runs.glob("*.jsonl"))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{served.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {TOKEN}"},
            json={"model": MODEL, "messages": [{"role": "user", "content": "sleepy"}], "context": "c"},
            timeout=3,
        )
    wait_for(lambda: set(served.runs.glob("*.jsonl")) - before, timeout=10)
    (trajectory,) = set(served.runs.glob("*.jsonl")) - before
    wait_for(lambda: '"run_interrupted"' in trajectory.read_text(), timeout=30)
    wait_for(lambda: rlmbox_containers(served.runtime_dir) == [], timeout=30)
    last = json.loads(trajectory.read_text().splitlines()[-1])
    assert last["event"] == "run_interrupted"


def test_a_run_past_the_servers_time_limit_returns_its_partial_answer(served):
    started = time.monotonic()
    answer = served.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "sleepy"}], extra_body={"context": "c"}
    )
    assert time.monotonic() - started < 60
    assert answer.choices[0].finish_reason == "length"
    assert answer.choices[0].message.content == "Sleeping on it."
    assert answer.model_extra["rlmbox"]["status"] == "budget_exhausted"
    assert API_KEY not in json.dumps(answer.model_dump())


def test_stopping_the_server_ends_the_runs_in_progress(runtime_dir, tmp_path):
    script = TreeScript(SCRIPT)
    with ScriptedOpenAIServer(script) as upstream, (tmp_path / "server.log").open("w") as log:
        process, url = start_server(runtime_dir, tmp_path, upstream.url, log)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0, timeout=120)
        request = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "sleepy"}],
            "extra_body": {"context": "c"},
        }
        failures: list[Exception] = []

        def ask() -> None:
            try:
                client.chat.completions.create(**request)
            except Exception as exc:
                failures.append(exc)

        caller = threading.Thread(target=ask)
        caller.start()
        wait_for(lambda: len(script.requests_for("sleepy")) == 1 and len(rlmbox_containers(runtime_dir)) == 1)
        process.terminate()
        assert process.wait(timeout=30) == 143
        caller.join(timeout=30)
    assert len(failures) == 1 and isinstance(failures[0], openai.APIError)  # the client hears the run ended
    assert rlmbox_containers(runtime_dir) == []
