"""The warm pool: sandboxes started ahead, each handed to one session with its own context and handler,
never reused, replaced in the background, and all removed when the pool closes."""

from __future__ import annotations

import asyncio

import pytest

from rlmbox import RLM, SandboxConfig, SandboxPool
from rlmbox.protocol import QueryOutcome
from rlmbox.sandbox import SandboxState

from support.containers import rlmbox_containers
from support.openai_server import Script, ScriptedOpenAIServer
from support.scripted_run import ROOT_SEEN, repl, scripted_settings

pytestmark = pytest.mark.docker


class Tagged:
    """A bridge handler that answers with its own tag, to tell sessions apart."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    async def llm_query(self, prompts: list[str], model: str | None) -> list[QueryOutcome]:
        return [QueryOutcome(ok=True, text=f"{self.tag}:{p}") for p in prompts]


@pytest.fixture
def config(runtime_dir) -> SandboxConfig:
    return SandboxConfig(runtime_dir=runtime_dir, cell_timeout_s=30, memory="256m")


def test_each_claim_gets_its_own_running_sandbox_with_its_context_and_handler(config):
    async def main():
        async with SandboxPool(config, size=2) as pool:
            await pool.wait_ready(timeout=60)
            first = await pool.claim("context of A", Tagged("A"))
            second = await pool.claim(["context", "of", "B"], Tagged("B"))
            assert first.state is second.state is SandboxState.RUNNING
            async with first, second:
                a = await first.execute("secret = 'only A'\nprint(context, llm_query('q'))")
                b = await second.execute("print(context, llm_query('q'), 'secret' in globals())")
            await pool.wait_ready(timeout=60)  # both replaced in the background
            return a.stdout, b.stdout, pool.claimed, pool.cold_starts, pool.ready

    a, b, claimed, cold, ready = asyncio.run(main())
    assert a == "context of A A:q\n"
    assert b == "['context', 'of', 'B'] B:q False\n"
    assert (claimed, cold, ready) == (2, 0, 2)
    assert rlmbox_containers(config.runtime_dir) == []


def test_a_claimed_sandbox_is_never_handed_out_again(config):
    async def main():
        async with SandboxPool(config, size=1) as pool:
            await pool.wait_ready(timeout=60)
            seen = []
            for i in range(3):
                sandbox = await pool.claim(f"session {i}")
                async with sandbox:
                    seen.append(id(sandbox))
                    hostname = await sandbox.execute("import socket; print(open('/proc/self/cgroup').read())")
                    seen.append(hostname.stdout)
                assert sandbox.state is SandboxState.CLOSED
                await pool.wait_ready(timeout=60)
            return seen

    seen = asyncio.run(main())
    sandboxes, cgroups = seen[0::2], seen[1::2]
    assert len(set(sandboxes)) == 3 and len(set(cgroups)) == 3  # three containers for three sessions


def test_an_empty_pool_falls_back_to_a_cold_start(config):
    async def main():
        async with SandboxPool(config, size=0) as pool:
            sandbox = await pool.claim("cold")
            assert sandbox.state is SandboxState.NEW
            async with sandbox:
                cell = await sandbox.execute("context")
            return cell.result, pool.cold_starts

    assert asyncio.run(main()) == ("'cold'", 1)


def test_closing_the_pool_removes_unclaimed_and_starting_sandboxes(config):
    async def main():
        pool = SandboxPool(config, size=3)
        async with pool:
            await pool.wait_ready(count=1, timeout=60)  # others are likely still starting
        return pool.ready

    assert asyncio.run(main()) == 0
    assert rlmbox_containers(config.runtime_dir) == []
    assert list(config.runtime_dir.iterdir()) == []


def test_a_warm_sandbox_whose_kernel_died_is_skipped(config):
    async def main():
        async with SandboxPool(config, size=2) as pool:
            await pool.wait_ready(timeout=60)
            import docker

            client = docker.from_env()
            for container_id in rlmbox_containers(config.runtime_dir)[:1]:
                client.containers.get(container_id).kill()
            client.close()
            await asyncio.sleep(0.5)
            sandboxes = [await pool.claim(f"s{i}") for i in range(2)]
            results = []
            for sandbox in sandboxes:
                async with sandbox:
                    results.append((await sandbox.execute("context")).result)
            return results

    assert asyncio.run(main()) == ["'s0'", "'s1'"]
    assert rlmbox_containers(config.runtime_dir) == []


def test_runs_share_a_pool(runtime_dir, tmp_path):
    script = Script({ROOT_SEEN: [repl("print(len(context))"), repl("FINAL(context[:3])")] * 2})

    async def main(server: ScriptedOpenAIServer):
        settings = scripted_settings(server.url, runtime_dir, tmp_path)
        async with SandboxPool(settings.sandbox, size=1) as pool:
            await pool.wait_ready(timeout=60)
            first = await RLM(settings, pool=pool).arun("abcdef", "q")
            await pool.wait_ready(timeout=60)
            second = await RLM(settings, pool=pool).arun("xyz123", "q")
            return first, second, pool.claimed

    with ScriptedOpenAIServer(script) as server:
        first, second, claimed = asyncio.run(main(server))
    assert (first.answer, second.answer, claimed) == ("abc", "xyz", 2)
    assert rlmbox_containers(runtime_dir) == []


def test_a_waiting_claim_takes_the_sandbox_being_started_instead_of_starting_another(config):
    async def main():
        async with SandboxPool(config, size=1) as pool:
            sandbox = await pool.claim("waited", wait=True)  # nothing is ready yet: one is starting
            async with sandbox:
                cell = await sandbox.execute("context")
            return sandbox.state, cell.result, pool.claimed, pool.cold_starts

    state, result, claimed, cold = asyncio.run(main())
    assert (result, claimed, cold) == ("'waited'", 1, 0) and state is SandboxState.CLOSED
    assert rlmbox_containers(config.runtime_dir) == []
