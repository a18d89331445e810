"""The local model for real: llama.cpp's server with Qwen2.5-Coder-0.5B, reached through rlmbox's LM client
(litellm), started and stopped as a block and from the command line, with no process left behind."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from rlmbox.config import LLMSettings
from rlmbox.llm import LMClient
from rlmbox.local_model import LocalModelServer, ProcessId, default_dir, stop_process

from support.cli import rlmbox

pytestmark = pytest.mark.realmodel

SMALL = "qwen2.5-coder-0.5b"
QUESTION = [{"role": "user", "content": "Write a Python function that adds two numbers. Code only."}]


def test_a_chat_completion_through_the_lm_client():
    with LocalModelServer(SMALL, ctx_size=2048, prompt_cache=False) as server:
        settings = LLMSettings(
            api_base=server.api_base,
            api_key="local",  # the server checks none, but litellm's openai provider wants one
            completion_kwargs={"temperature": 0, "max_tokens": 48},
        )
        answer = asyncio.run(LMClient(settings).complete(server.litellm_model, QUESTION))
        process = server.process
    assert answer.text.strip()
    assert answer.prompt_tokens > 0 and answer.completion_tokens > 0
    assert not process.alive()


def test_without_the_prompt_cache_identical_requests_get_identical_replies():
    body = {"model": SMALL, "messages": QUESTION, "temperature": 0, "max_tokens": 48}
    with LocalModelServer(SMALL, ctx_size=2048, prompt_cache=False) as server:
        replies = [
            httpx.post(f"{server.api_base}/chat/completions", json=body, timeout=120, trust_env=False).json()
            for _ in range(2)
        ]
        process = server.process
    assert [reply["timings"]["cache_n"] for reply in replies] == [0, 0]
    first, second = (reply["choices"][0]["message"]["content"] for reply in replies)
    assert first.strip() and first == second
    assert not process.alive()


def test_cli_start_status_stop(tmp_path):
    cache_dir = tmp_path / "local-model"  # its own state file, the installed server and models
    cache_dir.mkdir()
    for name in ("venv", "models"):
        (cache_dir / name).symlink_to(default_dir() / name)
    env = {"RLMBOX_LOCAL_MODEL_DIR": str(cache_dir)}
    started = rlmbox(
        "local-model", "start", "--model", SMALL, "--port", "0", "--ctx-size", "2048", "--json", env=env
    )
    assert started.returncode == 0, started.stderr
    record = json.loads(started.stdout)
    process = ProcessId(record["pid"], record["start_ticks"])
    try:
        assert record["litellm_model"] == f"openai/{SMALL}"
        models = httpx.get(f"{record['api_base']}/models", trust_env=False).json()
        assert SMALL in json.dumps(models)
        shown = rlmbox("local-model", "status", "--json", env=env)
        assert shown.returncode == 0
        now = json.loads(shown.stdout)
        assert now["running"] and now["record"]["pid"] == record["pid"] and now["rss_bytes"] > 100 * 2**20
        assert rlmbox("local-model", "stop", env=env).returncode == 0
        assert not process.alive()
        assert rlmbox("local-model", "status", env=env).returncode == 1
    finally:
        stop_process(process, grace=1)
