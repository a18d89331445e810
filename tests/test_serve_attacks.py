"""Escape suite, serve: one client of ``rlmbox serve`` attacks the host through its run, while another
client's run goes on beside it. Before, one hostile cell could end the server, and every client's run
with it, leaving containers behind.

One server process serves both clients, each with its own root model; both runs use the server's
sub-model. The neighbour (``support.neighbour.NeighbourModels``) sends a new ``llm_query`` cell each turn
until the attacker's request has been answered, then gives the number of cells it ran as its answer."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from support import hostile
from support.attacks import CONTEXT, attack_script
from support.containers import rlmbox_containers
from support.neighbour import ECHO, NEIGHBOUR_CONTEXT, NEIGHBOUR_QUERY, NEIGHBOUR_ROOT, NeighbourModels
from support.openai_server import Reply, Script, ScriptedOpenAIServer
from support.scripted_run import ROOT, SUB, SUB_SEEN, wait_for
from support.serving import start_serve

pytestmark = [pytest.mark.docker, pytest.mark.attack("serve")]

TOKEN = "serve-attack-token-0123456789"
WAIT_S = 300.0


class Upstream:
    """The scripted models behind the server; each test sets whose turn it is."""

    def __init__(self) -> None:
        self.attacker: Script = Script()
        self.neighbour: NeighbourModels | None = None

    def __call__(self, request: dict[str, Any]) -> Reply:
        last = str((request.get("messages") or [{}])[-1].get("content", ""))
        neighbour = self.neighbour
        if neighbour is not None and (
            request.get("model") == NEIGHBOUR_ROOT.removeprefix("openai/")
            or (request.get("model") == SUB_SEEN and last.startswith(ECHO))
        ):
            return neighbour(request)
        return self.attacker(request)


@dataclass
class Served:
    url: str
    process: subprocess.Popen
    upstream: Upstream

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=TOKEN, max_retries=0, timeout=WAIT_S)

    def alive(self) -> bool:
        if self.process.poll() is not None:
            return False
        reply = httpx.get(f"{self.url}/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        return reply.status_code == 200


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    from conftest import IN_CI, docker_problem

    if (problem := docker_problem()) is not None:
        if IN_CI:
            pytest.fail(f"Docker tests must run in CI: {problem}")
        pytest.skip(problem)
    runtime_dir = Path(tempfile.mkdtemp(prefix="rba-", dir="/tmp"))
    runs = Path(tempfile.mkdtemp(prefix="rlmbox-serve-attacks-"))
    upstream = Upstream()
    flags = [
        "--token", TOKEN, "--model", ROOT, "--allow-model", NEIGHBOUR_ROOT, "--sub-model", SUB,
        "--max-runs", "4", "--timeout", "240", "--warm-sandboxes", "0", "--memory", "1g",
        "--cell-timeout", "60", "--max-iterations", "100000", "--max-sub-calls", "100000",  # the neighbour's
    ]  # fmt: skip
    with ScriptedOpenAIServer(upstream) as models, (runs / "server.log").open("w") as log:
        process, url = start_serve(
            [*flags, "--api-base", models.url], runtime_dir=runtime_dir, runs=runs, log=log
        )
        try:
            yield Served(url, process, upstream)
        finally:
            process.terminate()
            process.wait(timeout=120)
    assert rlmbox_containers(runtime_dir) == []
    shutil.rmtree(runtime_dir, ignore_errors=True)
    shutil.rmtree(runs, ignore_errors=True)


def ask(served: Served, model: str, query: str, context: str) -> Any:
    return served.client().chat.completions.create(
        model=f"rlmbox/{model}",
        messages=[{"role": "user", "content": query}],
        extra_body={"context": context},
    )


def attack_beside_a_neighbour(served: Served, cells: list[str]) -> tuple[Any, Any, NeighbourModels]:
    """The attacker's completion (or the exception its request raised), the neighbour's, and its models."""
    attack_over = threading.Event()
    neighbour = NeighbourModels(attack_over, sub_model=SUB_SEEN)
    served.upstream.neighbour = neighbour
    served.upstream.attacker = attack_script(cells)
    with ThreadPoolExecutor(1) as pool:
        neighbour_reply = pool.submit(ask, served, NEIGHBOUR_ROOT, NEIGHBOUR_QUERY, NEIGHBOUR_CONTEXT)
        wait_for(lambda: len(neighbour.sent) >= 2 or neighbour_reply.done(), timeout=WAIT_S)
        try:
            attacker: Any = ask(served, ROOT, "Do what the context says.", CONTEXT)
        except openai.APIError as exc:  # an error response is an outcome; a dead server is not
            attacker = exc
        finally:
            attack_over.set()
        return attacker, neighbour_reply.result(timeout=WAIT_S), neighbour


ATTACKS: dict[str, Callable[[], list[str]]] = {
    "a kernel dying mid-message": lambda: [hostile.zmq_abort()] * 2,
    "one message of 80 frames of 12 MB": lambda: [hostile.multipart_memory()],
    "4 bridge requests of 16 million JSON values": lambda: [hostile.bridge_json_amplification(connections=4)],
    "a lone surrogate in a forged stream message": lambda: [hostile.lone_surrogate("stream")],
    "a bridge connection flood from 8 threads": lambda: [
        hostile.bridge_connection_flood(seconds=3, threads=8)
    ],
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_one_clients_attack_never_ends_another_clients_run(served, observe, attack):
    attacker, neighbour_reply, neighbour = attack_beside_a_neighbour(served, ATTACKS[attack]())
    assert served.alive()
    assert neighbour_reply.choices[0].message.content == str(len(neighbour.sent))
    assert neighbour.all_delivered()
    assert not isinstance(attacker, Exception), attacker
    assert attacker.choices[0].message.content == "done"
    observe(
        f"{attack}, from one client of rlmbox serve",
        f"its run went on to its answer; the other client's run answered all {len(neighbour.sent)} cells; "
        "the server kept serving",
    )
