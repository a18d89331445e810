"""Core latency benchmark: sandbox start, cell round trip and ``llm_query`` round trip, on this machine.

    python bench/core.py [--runs N] [--json PATH]

Every figure is measured N times (``--runs``, default 20); the table gives median, min and max, and the JSON
file keeps every sample. Nothing is discarded: the first run of each figure is reported like the others.
The only preparation outside the timings is importing litellm once before the real-stack figure (an import
of a few seconds is not a per-call cost); the output says so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import docker
import docker.errors

from rlmbox import VERSION, AsyncSandbox, Limits, LLMSettings, Sandbox, SandboxConfig, SandboxPool
from rlmbox.config import DEFAULT_IMAGE
from rlmbox.ledger import Ledger
from rlmbox.llm import Completion, LMClient, load_litellm
from rlmbox.log import ensure_logging
from rlmbox.sandbox.owner import ProcessIdentity
from rlmbox.sandbox.reaper import LABEL_PREFIX
from rlmbox.subcalls import SubCallRouter
from rlmbox.trajectory import TrajectoryWriter

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
BASELINE_LABEL = f"{LABEL_PREFIX}.bench-baseline"
SMALL_CONTEXT_CHARS = 1_000
BIG_CONTEXT_CHARS = 50_000_000
INJECT_CONTEXT_CHARS = 40_000_000
LARGE_CONTEXT_CHARS = 400_000_000
LARGE_RUNS = 3
IDLE_SESSIONS = 4
ANSWER = "ok"
SUB_MODEL = "openai/bench"

# Run inside the sandbox; each prints its own timings as JSON on stdout.
LLM_QUERY_LOOP = """
import json as _json, time as _time
_samples = []
for _ in range({calls}):
    _t0 = _time.perf_counter()
    _answer = llm_query('hi')
    _samples.append(_time.perf_counter() - _t0)
    assert _answer == {answer!r}, _answer
print(_json.dumps(_samples))
"""
LLM_QUERY_BATCHED = """
import json as _json, time as _time
_prompts = ['hi'] * {batch}
_t0 = _time.perf_counter()
_answers = llm_query_batched(_prompts)
_elapsed = _time.perf_counter() - _t0
assert _answers == [{answer!r}] * {batch}, [a for a in _answers if a != {answer!r}][:3]
print(_json.dumps(_elapsed))
"""


# -- results ---------------------------------------------------------------------------------------------


@dataclass
class Figure:
    """One row of the table: samples in the figure's unit, and what one sample is."""

    label: str
    unit: str
    per: str
    samples: list[float] = field(default_factory=list)
    target: tuple[str, float] | None = None
    """The target for the median: ("<=", 800.0) or (">=", 30000.0)."""

    def verdict(self) -> str:
        if self.target is None or not self.samples:
            return ""
        op, bound = self.target
        median = statistics.median(self.samples)
        return "pass" if (median <= bound if op == "<=" else median >= bound) else "FAIL"

    def summary(self) -> dict[str, Any]:
        values = self.samples
        return {
            "label": self.label,
            "unit": self.unit,
            "per": self.per,
            "n": len(values),
            "median": statistics.median(values) if values else None,
            "min": min(values) if values else None,
            "max": max(values) if values else None,
            "target": list(self.target) if self.target else None,
            "verdict": self.verdict() or None,
            "samples": values,
        }


@dataclass
class Results:
    runs: int
    cells: int
    calls: int
    batch: int
    figures: dict[str, Figure] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def figure(
        self, key: str, label: str, unit: str, per: str, target: tuple[str, float] | None = None
    ) -> Figure:
        return self.figures.setdefault(key, Figure(label, unit, per, target=target))


def ms(seconds: float) -> float:
    return seconds * 1000.0


# -- the machine -----------------------------------------------------------------------------------------


def _proc_field(path: str, name: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
    return None


def cpu_model() -> str:
    name = _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown"
    family, model = _proc_field("/proc/cpuinfo", "cpu family"), _proc_field("/proc/cpuinfo", "model")
    return f"{name}, family {family} model {model}" if family and model else name


def machine_info(client: docker.DockerClient) -> dict[str, Any]:
    mem_kb = _proc_field("/proc/meminfo", "MemTotal")
    version = client.version()
    info = client.info()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "memory_gib": round(int(mem_kb.split()[0]) / 2**20, 1) if mem_kb else None,
        "kernel": platform.release(),
        "docker_server": version.get("Version"),
        "docker_storage_driver": info.get("Driver"),
        "docker_runtime": info.get("DefaultRuntime"),
        "docker_cgroup": f"{info.get('CgroupDriver')} v{info.get('CgroupVersion')}",
        "python": platform.python_version(),
        "rlmbox": VERSION,
        "litellm": metadata.version("litellm"),
        "hostname": socket.gethostname(),
        "other_containers_running": len(client.containers.list(sparse=True)),
        "loadavg_start": os.getloadavg(),
    }


# -- helpers ---------------------------------------------------------------------------------------------


def make_text(chars: int) -> str:
    """ASCII prose-like text of exactly ``chars`` characters (so also bytes)."""
    line = "The quick brown fox jumps over the lazy dog while the sandbox keeps the context. 0123456789\n"
    return (line * (chars // len(line) + 1))[:chars]


class InstantLM:
    """The LM client replaced at its own interface by one that answers at once (after ``delay_s``): what
    rlmbox itself costs per sub-call (bridge, router, ledger, trajectory), or a model of known latency."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s

    async def complete(
        self,
        model: str,
        messages: list[dict[str, str]],
        *,
        timeout_s: float | None = None,
        params: Any = None,
    ) -> Completion:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return Completion(ANSWER, model, 1, 1, 0.0, self.delay_s, 1)


def router_for(lm: Any, scratch: Path, concurrency: int = 16) -> SubCallRouter:
    """A run's sub-call router around ``lm``, with a ledger and a trajectory file, as RLM builds it."""
    writer = TrajectoryWriter(scratch / f"trajectory-{time.monotonic_ns()}.jsonl").__enter__()
    return SubCallRouter(
        lm,
        Ledger(Limits(max_sub_calls=10**9)),
        writer,
        default_model=SUB_MODEL,
        allowed_models={SUB_MODEL},
        model_calls=asyncio.Semaphore(concurrency),
        max_prompt_chars=SandboxConfig().max_prompt_chars,
    )


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_cell(sandbox: Sandbox, code: str) -> str:
    """Run ``code`` and return its stdout; any error in the cell stops the benchmark."""
    result = sandbox.execute(code)
    if not result.ok:
        raise RuntimeError(f"benchmark cell failed:\n{result.error}")
    return result.stdout


def docker_run_true(client: docker.DockerClient, image: str) -> tuple[float, float]:
    """``docker run --rm --network none IMAGE true`` through the SDK.

    Returns seconds for the whole (create, start, wait, remove) and for create + start alone.
    """
    started = time.perf_counter()
    container = client.containers.create(
        image, ["true"], network_mode="none", labels={BASELINE_LABEL: str(os.getpid())}
    )
    try:
        container.start()
        running = time.perf_counter()
        status = container.wait().get("StatusCode")
    finally:
        container.remove(force=True)
    elapsed = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"baseline container exited with {status}")
    return elapsed, running - started


def sweep_containers(client: docker.DockerClient) -> int:
    """Remove containers this process created and did not remove (e.g. after Ctrl-C); returns how many."""
    me = ProcessIdentity.current().as_labels(f"{LABEL_PREFIX}.owner")
    filters = [
        {"label": [f"{key}={value}" for key, value in me.items()]},
        {"label": [f"{BASELINE_LABEL}={os.getpid()}"]},
    ]
    removed = 0
    for selector in filters:
        for container in client.containers.list(all=True, sparse=True, filters=selector):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
                removed += 1
    return removed


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# -- the figures -----------------------------------------------------------------------------------------


def bench_cold_start(results: Results, config: SandboxConfig, client: docker.DockerClient) -> None:
    small = make_text(SMALL_CONTEXT_CHARS)
    baseline = results.figure("docker_run_true", "docker run --rm --network none IMAGE true", "ms", "run")
    base_start = results.figure("docker_create_start", "  of which create + start", "ms", "run")
    start = results.figure(
        "cold_start", "cold start, Sandbox enter until ready (1 KB ctx)", "ms", "run", ("<=", 800)
    )
    close = results.figure("close", "close (kernel stop, container remove)", "ms", "run")
    ratio = results.figure("cold_start_ratio", "cold start / docker run baseline", "x", "run")
    for run in range(1, results.runs + 1):
        progress(f"[cold start {run}/{results.runs}]")
        base_s, base_start_s = docker_run_true(client, config.image)
        started = time.perf_counter()
        with Sandbox(config, context=small) as sandbox:
            start_s = time.perf_counter() - started
            size = sandbox.execute("len(context)").result  # outside both timings
            if size != str(SMALL_CONTEXT_CHARS):
                raise RuntimeError(f"context not loaded: len(context) = {size}")
            closing = time.perf_counter()
        close_s = time.perf_counter() - closing
        baseline.samples.append(ms(base_s))
        base_start.samples.append(ms(base_start_s))
        start.samples.append(ms(start_s))
        close.samples.append(ms(close_s))
        ratio.samples.append(start_s / base_s)


def time_cells(sandbox: Sandbox, cells: int) -> list[float]:
    samples = []
    for _ in range(cells):
        started = time.perf_counter()
        result = sandbox.execute("x = 1")
        samples.append(ms(time.perf_counter() - started))
        if not result.ok:
            raise RuntimeError(f"benchmark cell failed:\n{result.error}")
    return samples


def bench_warm(results: Results, config: SandboxConfig, scratch: Path) -> None:
    """Cell round trips (1 KB and 50 MB contexts) and llm_query against an instant model."""
    big_start = results.figure("start_50mb", "start with 50 MB ctx (the warm sandbox)", "ms", "start")
    small_cells = results.figure("cell_1kb", "cell round trip `x = 1`, 1 KB ctx", "ms", "cell", ("<=", 3))
    big_cells = results.figure("cell_50mb", "cell round trip `x = 1`, 50 MB ctx", "ms", "cell")
    big_ratio = results.figure(
        "cell_ratio", "cell round trip, 50 MB / 1 KB (run medians)", "x", "run", ("<=", 1.2)
    )
    instant = results.figure("llm_instant", "llm_query round trip, instant model", "ms", "call", ("<=", 0.5))
    batched = results.figure(
        "batched_instant", "llm_query_batched, instant model", "prompts/s", "run", (">=", 30_000)
    )
    progress("[warm sandboxes: starting, one with a 50 MB context]")
    big_text = make_text(BIG_CONTEXT_CHARS)
    router = router_for(InstantLM(), scratch)
    with Sandbox(config, context=make_text(SMALL_CONTEXT_CHARS), handler=router) as small_box:
        started = time.perf_counter()
        with Sandbox(config, context=big_text) as big_box:
            big_start.samples.append(ms(time.perf_counter() - started))
            size = big_box.execute("len(context)").result
            if size != str(BIG_CONTEXT_CHARS):
                raise RuntimeError(f"context not loaded: len(context) = {size}")
            loop = LLM_QUERY_LOOP.format(calls=results.calls, answer=ANSWER)
            batch = LLM_QUERY_BATCHED.format(batch=results.batch, answer=ANSWER)
            for run in range(1, results.runs + 1):
                progress(f"[warm cells and instant llm_query {run}/{results.runs}]")
                small = time_cells(small_box, results.cells)
                big = time_cells(big_box, results.cells)
                small_cells.samples.extend(small)
                big_cells.samples.extend(big)
                big_ratio.samples.append(statistics.median(big) / statistics.median(small))
                instant.samples.extend(ms(s) for s in json.loads(run_cell(small_box, loop)))
                batched.samples.append(results.batch / json.loads(run_cell(small_box, batch)))


def bench_real_stack(results: Results, config: SandboxConfig, scratch: Path) -> None:
    """llm_query through SubCallRouter, LMClient and litellm to the scripted OpenAI-compatible server."""
    sys.path.insert(0, str(REPO / "tests"))
    from support.openai_server import Reply, ScriptedOpenAIServer

    figure = results.figure("llm_real", "llm_query round trip, real stack (local server)", "ms", "call")
    batched = results.figure(
        "batched_real", "llm_query_batched, real stack (local server)", "prompts/s", "run"
    )
    http = results.figure(
        "batched_http", "  baseline: the same POSTs from httpx, same concurrency", "prompts/s", "run"
    )
    share = results.figure("litellm_share", "  share of the batch's time beyond plain HTTP", "%", "run")
    progress("[real stack: importing litellm (not timed)]")
    load_litellm()
    reply = Reply(text=ANSWER)
    with ScriptedOpenAIServer(lambda request: reply) as server:
        settings = LLMSettings(api_base=server.url, api_key="dummy", model=SUB_MODEL, sub_model=SUB_MODEL)
        with TrajectoryWriter(scratch / "trajectory.jsonl") as writer:
            router = SubCallRouter(
                LMClient(settings),
                Ledger(Limits(max_sub_calls=10**6)),
                writer,
                default_model=SUB_MODEL,
                allowed_models={SUB_MODEL},
                model_calls=asyncio.Semaphore(settings.max_concurrency),
                max_prompt_chars=config.max_prompt_chars,
            )
            loop = LLM_QUERY_LOOP.format(calls=results.calls, answer=ANSWER)
            batch = LLM_QUERY_BATCHED.format(batch=results.batch, answer=ANSWER)
            with Sandbox(config, context=make_text(SMALL_CONTEXT_CHARS), handler=router) as sandbox:
                for run in range(1, results.runs + 1):
                    progress(f"[real-stack llm_query {run}/{results.runs}]")
                    figure.samples.extend(ms(s) for s in json.loads(run_cell(sandbox, loop)))
                    real_s = json.loads(run_cell(sandbox, batch))
                    http_s = asyncio.run(raw_posts(server.url, results.batch, settings.max_concurrency))
                    batched.samples.append(results.batch / real_s)
                    http.samples.append(results.batch / http_s)
                    share.samples.append(100 * (1 - http_s / real_s))


def bench_pool(results: Results, config: SandboxConfig) -> None:
    """Session start from the warm pool (1 KB context), and a 40 MB text context injected the same way."""
    warm = results.figure(
        "pool_start", "warm-pool session start (claim, 1 KB ctx loaded)", "ms", "start", ("<=", 15)
    )
    ratio = results.figure("pool_ratio", "  warm-pool start / cold start (same run)", "x", "run")
    inject = results.figure(
        "inject_40mb", "40 MB text context injected into a warm kernel", "ms", "start", ("<=", 1000)
    )
    cold = results.figures["cold_start"].samples
    small, big = make_text(SMALL_CONTEXT_CHARS), make_text(INJECT_CONTEXT_CHARS)

    async def claim_timed(pool: SandboxPool, context: str) -> float:
        await pool.wait_ready(timeout=120)
        started = time.perf_counter()
        sandbox = await pool.claim(context)
        elapsed = time.perf_counter() - started
        async with sandbox:
            if pool.cold_starts or (await sandbox.execute("len(context)")).result != str(len(context)):
                raise RuntimeError("the pool did not hand out a warm sandbox with the context loaded")
        return elapsed

    async def main() -> None:
        async with SandboxPool(config, size=1) as pool:
            for run in range(1, results.runs + 1):
                progress(f"[warm pool {run}/{results.runs}]")
                warm.samples.append(ms(await claim_timed(pool, small)))
                ratio.samples.append(warm.samples[-1] / cold[run - 1])
                inject.samples.append(ms(await claim_timed(pool, big)))

    asyncio.run(main())


def bench_fan_out(results: Results, config: SandboxConfig, scratch: Path) -> None:
    """llm_query_batched of 100 prompts to a model that takes 100 ms, 32 at a time."""
    figure = results.figure(
        "fan_out", "100 prompts x 100 ms model latency, concurrency 32", "ms", "run", ("<=", 500)
    )
    code = LLM_QUERY_BATCHED.format(batch=100, answer=ANSWER)
    router = router_for(InstantLM(delay_s=0.1), scratch, concurrency=32)
    with Sandbox(config, context=make_text(SMALL_CONTEXT_CHARS), handler=router) as sandbox:
        for run in range(1, results.runs + 1):
            progress(f"[fan-out {run}/{results.runs}]")
            figure.samples.append(ms(json.loads(run_cell(sandbox, code))))


def rss_bytes() -> int:
    return int(_proc_field("/proc/self/status", "VmRSS").split()[0]) * 1024  # type: ignore[union-attr]


PEAK_MEMORY = """
import os
_v2 = os.path.exists('/sys/fs/cgroup/cgroup.controllers')
print(open('/sys/fs/cgroup/memory.peak' if _v2 else '/sys/fs/cgroup/memory/memory.max_usage_in_bytes').read())
"""
IDLE_SESSIONS_PROBE = """
import asyncio, contextlib, gc
from pathlib import Path
from rlmbox import AsyncSandbox, SandboxConfig

def rss():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS:')) * 1024

async def main():
    config = SandboxConfig(runtime_dir=Path({runtime_dir!r}))
    async with AsyncSandbox(config, 'warm-up'):  # first-use costs: imports, Docker client, thread pool
        pass
    gc.collect()
    before = rss()
    async with contextlib.AsyncExitStack() as stack:
        for _ in range({sessions}):
            await stack.enter_async_context(AsyncSandbox(config, 'x' * 1000))
        gc.collect()
        print((rss() - before) / {sessions} / 2**20)

asyncio.run(main())
"""
MEMORY_STAT = """
import os
_v2 = os.path.exists('/sys/fs/cgroup/cgroup.controllers')
_path = '/sys/fs/cgroup/memory.stat' if _v2 else '/sys/fs/cgroup/memory/memory.stat'
_stat = dict(line.split() for line in open(_path))
print(int(_stat['anon' if _v2 else 'total_rss']))
"""


def bench_memory(results: Results, config: SandboxConfig) -> None:
    """Host memory per idle session, and the container's memory with a 40 MB text context in a cell."""
    per_session = results.figure(
        "host_mem_session", f"host RSS per idle session ({IDLE_SESSIONS} at once)", "MiB", "run", ("<=", 30)
    )
    container = results.figure(
        "container_mem_ratio", "container anon memory with 40 MB ctx: (with - idle) / ctx", "x", "run",
        ("<=", 1.5),
    )  # fmt: skip
    small, big = make_text(SMALL_CONTEXT_CHARS), make_text(INJECT_CONTEXT_CHARS)

    probe = IDLE_SESSIONS_PROBE.format(sessions=IDLE_SESSIONS, runtime_dir=str(config.runtime_dir))
    for run in range(1, results.runs + 1):
        progress(f"[memory {run}/{results.runs}]")
        # A fresh process, so that memory freed by earlier figures cannot hide what the sessions take.
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
        per_session.samples.append(float(done.stdout.strip().splitlines()[-1]))
        with Sandbox(config, context=small) as idle_box, Sandbox(config, context=big) as big_box:
            idle = int(run_cell(idle_box, "x = 1\n" + MEMORY_STAT))
            loaded = int(run_cell(big_box, "x = 1\n" + MEMORY_STAT))
        container.samples.append((loaded - idle) / len(big))


async def raw_posts(api_base: str, count: int, concurrency: int) -> float:
    """Seconds for ``count`` chat-completion POSTs from a bare httpx client, ``concurrency`` at a time."""
    import httpx

    body = {"model": SUB_MODEL.removeprefix("openai/"), "messages": [{"role": "user", "content": "hi"}]}
    limit = asyncio.Semaphore(concurrency)

    async def post(client: httpx.AsyncClient) -> None:
        async with limit:
            response = await client.post(f"{api_base}/chat/completions", json=body)
            response.raise_for_status()

    # The server closes each connection after its reply: a new one per request, as litellm ends up doing.
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        started = time.perf_counter()
        await asyncio.gather(*(post(client) for _ in range(count)))
        return time.perf_counter() - started


def bench_large(results: Results, config: SandboxConfig) -> None:
    """A 400 MB text context in a 2 GB sandbox, and lists of documents at two sizes (linear or not)."""
    runs = min(results.runs, LARGE_RUNS)
    inject = results.figure("inject_400mb", "400 MB text injected into a warm 2 GB sandbox", "ms", "start")
    peak = results.figure("peak_400mb", "  container memory peak / context size", "x", "start")
    small_list = results.figure("list_100k", "start with a list of 100k documents (13 MB)", "ms", "start")
    big_list = results.figure("list_1m", "start with a list of 1M documents (134 MB)", "ms", "start")
    big = make_text(LARGE_CONTEXT_CHARS)
    documents = [f"document {i}: " + "words " * 20 for i in range(1_000_000)]
    large = config.model_copy(update={"memory": 2 * 2**30, "start_timeout_s": 120})

    async def main() -> None:
        async with SandboxPool(large, size=1) as pool:
            for run in range(1, runs + 1):
                progress(f"[large contexts {run}/{runs}]")
                await pool.wait_ready(timeout=120)
                started = time.perf_counter()
                sandbox = await pool.claim(big)
                inject.samples.append(ms(time.perf_counter() - started))
                async with sandbox:
                    usage = await sandbox.execute(PEAK_MEMORY)
                    peak.samples.append(int(usage.stdout) / len(big))
                for figure, count in ((small_list, 100_000), (big_list, 1_000_000)):
                    started = time.perf_counter()
                    async with AsyncSandbox(large, documents[:count]) as sandbox:
                        figure.samples.append(ms(time.perf_counter() - started))

    asyncio.run(main())


# -- output ----------------------------------------------------------------------------------------------


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.2f}"
    if unit == "prompts/s" or value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def render_table(results: Results) -> str:
    header = ("figure", "median", "min", "max", "unit", "n", "target", "")
    rows = [header]
    for fig in results.figures.values():
        s = fig.summary()
        unit = fig.unit if fig.per in ("run", "start") or fig.unit == "x" else f"{fig.unit}/{fig.per}"
        target = f"{fig.target[0]} {_fmt(fig.target[1], fig.unit)}" if fig.target else ""
        rows.append(
            (
                fig.label,
                _fmt(s["median"], fig.unit),
                _fmt(s["min"], fig.unit),
                _fmt(s["max"], fig.unit),
                unit,
                f"{s['n']} {fig.per}s" if s["n"] != 1 else f"1 {fig.per}",
                target,
                fig.verdict(),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {1, 2, 3, 6}
    lines = []
    for index, row in enumerate(rows):
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _load(values: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def machine_lines(machine: dict[str, Any]) -> list[str]:
    """What a benchmark ran on: hardware, Docker, versions, and how busy the machine was."""
    return [
        f"machine: {machine['nproc']} CPUs ({machine['cpu_model']}), {machine['memory_gib']} GiB RAM, "
        f"kernel {machine['kernel']}",
        f"docker:  server {machine['docker_server']}, runtime {machine['docker_runtime']}, "
        f"storage {machine['docker_storage_driver']}, cgroup {machine['docker_cgroup']}",
        f"python {machine['python']}, rlmbox {machine['rlmbox']}, litellm {machine['litellm']}",
        f"load: 1/5/15-min load average {_load(machine['loadavg_start'])} at start, "
        f"{_load(machine['loadavg_end'])} at end; {machine['other_containers_running']} other "
        "container(s) running at start",
    ]


def render_header(
    machine: dict[str, Any], results: Results, config: SandboxConfig, command: str, when: str
) -> str:
    return "\n".join(
        [
            f"rlmbox core benchmark, {when}",
            f"command: {command}",
            *machine_lines(machine),
            f"sandbox: image {config.image}, {config.cpus:g} CPU, {config.memory // 2**20} MiB memory "
            f"(SandboxConfig defaults), backend {config.backend}",
            f"runs: {results.runs}; {results.cells} cells, {results.calls} llm_query calls and one batch of "
            f"{results.batch} prompts per run",
        ]
    )


# -- main ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20, help="runs per figure (default 20)")
    parser.add_argument("--cells", type=int, default=200, help="cells per run and context (default 200)")
    parser.add_argument("--calls", type=int, default=200, help="llm_query calls per run (default 200)")
    parser.add_argument("--batch", type=int, default=1000, help="prompts in the batched call (default 1000)")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help=f"sandbox image (default {DEFAULT_IMAGE})")
    parser.add_argument(
        "--json", type=Path, help="results file (default bench/results/core-<timestamp>.json)"
    )
    args = parser.parse_args(argv)
    for name in ("runs", "cells", "calls", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_logging()
    now = dt.datetime.now(dt.UTC)
    when = now.strftime("%Y-%m-%d %H:%M UTC")
    json_path: Path = args.json or RESULTS_DIR / f"core-{now.strftime('%Y%m%d-%H%M%S')}.json"
    command = " ".join([Path(sys.executable).name, *sys.argv])
    runtime_dir = Path(tempfile.mkdtemp(prefix="rbb-", dir="/tmp"))
    scratch = Path(tempfile.mkdtemp(prefix="rlmbox-bench-"))
    config = SandboxConfig(runtime_dir=runtime_dir, image=args.image)
    results = Results(runs=args.runs, cells=args.cells, calls=args.calls, batch=args.batch)
    results.notes = [
        "No warm-up runs are discarded; every sample is in the figures and in the JSON file.",
        "Cell and llm_query figures are per cell / per call (n counts them); llm_query is timed inside the "
        "cell with time.perf_counter(). The 50 MB / 1 KB ratio is of the two contexts' medians in each run.",
        "litellm is imported once before the real-stack runs (not timed); its first call is in the figures.",
        "The scripted OpenAI-compatible server runs in this process (a thread) on 127.0.0.1.",
    ]
    client = docker.from_env()
    try:
        machine = machine_info(client)
        progress(f"rlmbox core benchmark: {args.runs} runs, results to {json_path}")
        bench_cold_start(results, config, client)
        bench_pool(results, config)
        bench_warm(results, config, scratch)
        bench_fan_out(results, config, scratch)
        bench_memory(results, config)
        bench_large(results, config)
        bench_real_stack(results, config, scratch)
    except KeyboardInterrupt:
        progress("interrupted: cleaning up")
        return 130
    finally:
        with sigint_ignored():
            left = sweep_containers(client)
            if left:
                progress(f"removed {left} container(s) left behind")
            client.close()
            shutil.rmtree(runtime_dir, ignore_errors=True)
            shutil.rmtree(scratch, ignore_errors=True)

    machine["loadavg_end"] = os.getloadavg()
    print(render_header(machine, results, config, command, when))
    print()
    print(render_table(results))
    print()
    for note in results.notes:
        print(f"- {note}")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "core",
        "date": now.isoformat(timespec="seconds"),
        "command": command,
        "machine": machine,
        "config": config.model_dump(mode="json"),
        "runs": results.runs,
        "cells_per_run": results.cells,
        "calls_per_run": results.calls,
        "batch": results.batch,
        "notes": results.notes,
        "figures": {key: fig.summary() for key, fig in results.figures.items()},
    }
    json_path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"\nresults: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
