"""Soak benchmark: many concurrent RLM runs, each with many cells that make sub-calls, in one process.

    python bench/soak.py [--sessions N] [--cells M] [--rounds R] [--json PATH]

Every session is a real run, ``RLM(settings).arun(context, query)``: a Docker sandbox, the bridge, and
litellm talking to the scripted OpenAI-compatible server of the tests (a thread of this process). The root
model is a handler that writes, turn after turn, one ```repl cell calling ``llm_query`` with a token unique
to the round, session and cell, and printing the token with the sub-model's answer; after M cells it replies
``FINAL(...)``. The sub-model echoes a hash of the token. The server checks each root request: a cell whose
token and correct sub-answer are not in the next turn's feedback message is a lost output.

Reported: lost outputs, errors, leftover containers, host RSS (before, peak, after; growth per session),
cell latency from the trajectories (p50, p99, max), wall time and throughput. The exit status is 1 when an
output was lost, a container was left behind, a run did not complete or gave the wrong answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import datetime as dt
import gc
import hashlib
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import docker
import docker.errors
import requests.exceptions

from core import machine_info, machine_lines, progress, sigint_ignored
from rlmbox import RLM, RunResult, Settings
from rlmbox.config import DEFAULT_IMAGE
from rlmbox.llm import load_litellm
from rlmbox.log import ensure_logging
from rlmbox.sandbox.reaper import LABEL_PREFIX

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
ROOT = "openai/root-model"
SUB = "openai/sub-model"
ROOT_SEEN = "root-model"  # litellm strips the provider prefix
SUB_SEEN = "sub-model"
SESSION_DIR_LABEL = f"{LABEL_PREFIX}.session_dir"
QUERY = "soak session {session} of round {round}: run the cells, then give the final answer"
QUERY_RE = re.compile(r"soak session (\d+) of round (\d+)")
SUB_PROMPT_RE = re.compile(r"soak-echo (r(\d+)-s(\d+)-c(\d+))")
CELL_CODE = """token = {token!r}
answer = llm_query('soak-echo ' + token)
print('OUT', token + '|' + answer)"""
SAMPLE_EVERY_S = 0.5
PROGRESS_EVERY_S = 15.0
MAX_EXAMPLES = 5


def support_server() -> ModuleType:
    """The tests' scripted OpenAI-compatible server (``tests/support/openai_server.py``)."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import support.openai_server

    return support.openai_server


def token_for(round_no: int, session: int, cell: int) -> str:
    return f"r{round_no}-s{session:02d}-c{cell:03d}"


def sub_answer(token: str) -> str:
    return "ack-" + hashlib.sha256(token.encode()).hexdigest()[:16]


def expected_line(token: str) -> str:
    """What the cell prints, and so what must reach the root model in the next turn."""
    return f"OUT {token}|{sub_answer(token)}"


def expected_answer(round_no: int, session: int, cells: int) -> str:
    return f"soak r{round_no}-s{session:02d} done {cells}"


# -- the scripted models ---------------------------------------------------------------------------------


class SoakModels:
    """The server's handler for one round: the root and sub-model policies, and what each request showed.

    Only compact facts are kept per request (not the requests themselves, whose message histories grow
    with every turn), so that the recording does not swamp the RSS being measured.
    """

    def __init__(self, round_no: int, cells: int) -> None:
        self.round_no = round_no
        self.cells = cells
        self._reply = support_server().Reply
        self._lock = threading.Lock()
        self.root_requests = 0
        self.sub_requests = 0
        self.emitted: set[tuple[int, int]] = set()  # (session, cell) whose code the root model sent
        self.delivered: dict[tuple[int, int], list[bool]] = {}  # one check per next-turn request
        self.sub_seen: Counter[str] = Counter()
        self.unexpected = 0
        self.unexpected_examples: list[str] = []
        self.lost_examples: list[str] = []

    def __call__(self, request: dict[str, Any]) -> Any:
        model = str(request.get("model", ""))
        messages = request.get("messages") or []
        if model == ROOT_SEEN:
            return self._root(messages)
        if model == SUB_SEEN:
            return self._sub(messages)
        return self._refuse(f"request for an unknown model {model!r}")

    def _refuse(self, why: str) -> Any:
        with self._lock:
            self.unexpected += 1
            if len(self.unexpected_examples) < MAX_EXAMPLES:
                self.unexpected_examples.append(why)
        return self._reply(status=400, error_message=f"soak: {why}")

    def _root(self, messages: list[dict[str, Any]]) -> Any:
        query = messages[1].get("content", "") if len(messages) > 1 else ""
        match = QUERY_RE.search(str(query))
        if match is None or int(match.group(2)) != self.round_no:
            return self._refuse(f"root request without this round's query: {str(query)[:120]!r}")
        session = int(match.group(1))
        turn = 1 + sum(1 for m in messages if m.get("role") == "assistant")
        with self._lock:
            self.root_requests += 1
            if turn >= 2:
                feedback = str(messages[-1].get("content", ""))
                ok = expected_line(token_for(self.round_no, session, turn - 1)) in feedback
                self.delivered.setdefault((session, turn - 1), []).append(ok)
                if not ok and len(self.lost_examples) < MAX_EXAMPLES:
                    self.lost_examples.append(f"session {session} cell {turn - 1}: {feedback[:400]!r}")
            if turn <= self.cells:
                self.emitted.add((session, turn))
        if turn <= self.cells:
            code = CELL_CODE.format(token=token_for(self.round_no, session, turn))
            return self._reply(text=f"Cell {turn}.\n```repl\n{code}\n```")
        return self._reply(text=f"FINAL({expected_answer(self.round_no, session, self.cells)})")

    def _sub(self, messages: list[dict[str, Any]]) -> Any:
        prompt = str(messages[-1].get("content", "")) if messages else ""
        match = SUB_PROMPT_RE.fullmatch(prompt)
        if match is None or int(match.group(2)) != self.round_no:
            return self._refuse(f"sub request with an unexpected prompt: {prompt[:120]!r}")
        token = match.group(1)
        with self._lock:
            self.sub_requests += 1
            self.sub_seen[token] += 1
        return self._reply(text=sub_answer(token))

    def lost_outputs(self) -> int:
        """Cells the root model sent whose output never reached it in a next-turn request."""
        with self._lock:
            return sum(1 for key in self.emitted if not any(self.delivered.get(key, [])))

    def cells_fed_back(self) -> int:
        with self._lock:
            return sum(1 for checks in self.delivered.values() if any(checks))


# -- host memory -----------------------------------------------------------------------------------------


def proc_status() -> dict[str, int]:
    """VmRSS and VmHWM (KiB) and the thread count of this process, from /proc/self/status."""
    wanted = {"VmRSS", "VmHWM", "Threads"}
    found: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in wanted:
                found[key] = int(value.split()[0])
    return found


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def mib(kib: int | float) -> float:
    return kib / 1024.0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: ``5`` to /proc/self/clear_refs); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def malloc_trim() -> bool:
    """Give freed heap pages back to the system (glibc), so RSS shows what is still held."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        return bool(ctypes.CDLL(name).malloc_trim(0))
    except (OSError, AttributeError):
        return False


def memory_snapshot() -> dict[str, float]:
    status = proc_status()
    return {
        "rss_mib": mib(status.get("VmRSS", 0)),
        "hwm_mib": mib(status.get("VmHWM", 0)),
        "threads": status.get("Threads", 0),
        "fds": open_fds(),
    }


class RssSampler:
    """Samples this process's RSS every ``interval`` seconds in a thread (so a busy event loop cannot delay
    it); a context manager."""

    def __init__(self, interval: float = SAMPLE_EVERY_S) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-rss", daemon=True)
        self._started = 0.0

    def _run(self) -> None:
        while True:
            kib = proc_status().get("VmRSS", 0)
            self.samples.append((round(time.perf_counter() - self._started, 2), round(mib(kib), 2)))
            if self._stop.wait(self.interval):
                return

    @property
    def peak_mib(self) -> float:
        return max((rss for _, rss in self.samples), default=0.0)

    def __enter__(self) -> RssSampler:
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# -- Docker ----------------------------------------------------------------------------------------------


def our_containers(client: docker.DockerClient, runtime_dir: Path) -> list[Any]:
    """rlmbox containers, running or not, whose session directory is under ``runtime_dir``."""
    prefix = f"{runtime_dir}/"
    listed = client.containers.list(all=True, sparse=True, filters={"label": f"{LABEL_PREFIX}.session"})
    return [c for c in listed if (c.attrs.get("Labels") or {}).get(SESSION_DIR_LABEL, "").startswith(prefix)]


def remove_containers(containers: list[Any]) -> None:
    for container in containers:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


# -- one round -------------------------------------------------------------------------------------------


@dataclass
class SessionResult:
    session: int
    status: str
    answer_ok: bool
    iterations: int
    sub_calls: int
    elapsed_s: float
    error: str | None
    error_type: str | None


@dataclass
class TrajectoryFacts:
    """What the runs' trajectory files say (every cell, root call and sub-call)."""

    cells: int = 0
    cell_s: list[float] = field(default_factory=list)
    cell_errors: int = 0
    cell_timeouts: int = 0
    kernel_restarts: int = 0
    root_s: list[float] = field(default_factory=list)
    root_retries: int = 0
    sub_s: list[float] = field(default_factory=list)
    sub_errors: int = 0
    sub_retries: int = 0
    first_cell_s: list[float] = field(default_factory=list)  # run start to the first cell's end, per run
    error_examples: list[str] = field(default_factory=list)

    def read(self, path: Path) -> None:
        if not path.exists():
            return
        started = first_cell = None
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                record = json.loads(line)
                if record.get("event") == "run_started":
                    started = record["time"]
                elif record.get("event") == "cell" and first_cell is None:
                    first_cell = record["time"]
                self._event(record, path.stem)
        if started is not None and first_cell is not None:
            self.first_cell_s.append(round(first_cell - started, 3))

    def _event(self, record: dict[str, Any], where: str) -> None:
        kind = record.get("event")
        if kind == "cell":
            self.cells += 1
            self.cell_s.append(float(record["duration_s"]))
            if record.get("error") is not None:
                self.cell_errors += 1
                if len(self.error_examples) < MAX_EXAMPLES:
                    self.error_examples.append(
                        f"{where} iteration {record.get('iteration')}: {record['error']}"
                    )
            self.cell_timeouts += bool(record.get("timed_out"))
            self.kernel_restarts += bool(record.get("kernel_restarted"))
        elif kind == "kernel_died":
            self.kernel_restarts += 1
        elif kind == "root_call":
            self.root_s.append(float(record["duration_s"]))
            self.root_retries += max(0, int(record.get("attempts") or 1) - 1)
        elif kind == "sub_call":
            self.sub_s.append(float(record["duration_s"]))
            self.sub_retries += max(0, int(record.get("attempts") or 1) - 1)
            if record.get("error") is not None:
                self.sub_errors += 1


@dataclass
class RoundResult:
    round: int
    wall_s: float = 0.0
    sessions: list[SessionResult] = field(default_factory=list)
    trajectory: TrajectoryFacts = field(default_factory=TrajectoryFacts)
    run_exceptions: list[str] = field(default_factory=list)
    lost_outputs: int = 0
    cells_not_sent: int = 0
    cells_fed_back: int = 0
    root_requests: int = 0
    sub_requests: int = 0
    sub_tokens_repeated: int = 0
    sub_tokens_missing: int = 0
    unexpected_requests: int = 0
    unexpected_examples: list[str] = field(default_factory=list)
    lost_examples: list[str] = field(default_factory=list)
    leftover_containers: int = 0
    leftover_session_dirs: int = 0
    memory_before: dict[str, float] = field(default_factory=dict)
    memory_after: dict[str, float] = field(default_factory=dict)
    memory_after_trim: dict[str, float] = field(default_factory=dict)
    peak_rss_sampled_mib: float = 0.0
    peak_rss_hwm_mib: float | None = None
    rss_samples: list[tuple[float, float]] = field(default_factory=list)

    @property
    def not_completed(self) -> int:
        return sum(1 for s in self.sessions if s.status != "completed") + len(self.run_exceptions)

    @property
    def wrong_answers(self) -> int:
        return sum(1 for s in self.sessions if s.status == "completed" and not s.answer_ok)


@dataclass
class Soak:
    sessions: int
    cells: int
    rounds: int
    context_chars: int
    image: str
    runtime_dir: Path
    scratch: Path
    results: list[RoundResult] = field(default_factory=list)

    def settings(self, api_base: str) -> Settings:
        return Settings(
            llm={"model": ROOT, "sub_model": SUB, "api_base": api_base, "api_key": "sk-soak-dummy-key"},
            sandbox={
                "runtime_dir": self.runtime_dir,
                "image": self.image,
                "memory": "512m",
                "cell_timeout_s": 60,
                "cpus": 1,
            },
            limits={"max_iterations": self.cells + 1, "max_sub_calls": self.cells},
            trajectory_dir=self.scratch,
        )

    def context(self, session: int) -> str:
        line = f"session {session:02d}: soak context line, nothing to find here.\n"
        return (line * (self.context_chars // len(line) + 1))[: self.context_chars]


async def run_session(
    soak: Soak, settings: Settings, round_no: int, session: int, done: list[int]
) -> tuple[RunResult, Path]:
    path = soak.scratch / f"r{round_no}-s{session:02d}.jsonl"
    query = QUERY.format(session=session, round=round_no)
    result = await RLM(settings).arun(soak.context(session), query, trajectory=path)
    done[0] += 1
    progress(
        f"  [round {round_no}] session {session:02d}: {result.status}, {result.iterations} iterations, "
        f"{result.sub_calls} sub-calls, {result.elapsed_s:.1f}s ({done[0]}/{soak.sessions} done)"
    )
    return result, path


async def report_progress(models: SoakModels, total: int, started: float, round_no: int) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        rss = mib(proc_status().get("VmRSS", 0))
        progress(
            f"  [round {round_no}] {models.cells_fed_back()}/{total} cells fed back, "
            f"{time.perf_counter() - started:.0f}s, RSS {rss:.0f} MiB"
        )


async def run_round(soak: Soak, round_no: int, client: docker.DockerClient) -> RoundResult:
    server_module = support_server()
    models = SoakModels(round_no, soak.cells)
    result = RoundResult(round=round_no)
    gc.collect()
    result.memory_before = memory_snapshot()
    hwm_reset = reset_peak_rss()
    progress(f"[round {round_no}/{soak.rounds}: {soak.sessions} sessions x {soak.cells} cells]")
    with server_module.ScriptedOpenAIServer(models) as server, RssSampler() as sampler:
        settings = soak.settings(server.url)
        done = [0]
        started = time.perf_counter()
        ticker = asyncio.create_task(report_progress(models, soak.sessions * soak.cells, started, round_no))
        try:
            outcomes = await asyncio.gather(
                *(run_session(soak, settings, round_no, s, done) for s in range(1, soak.sessions + 1)),
                return_exceptions=True,
            )
        finally:
            ticker.cancel()
            result.wall_s = time.perf_counter() - started
    result.peak_rss_sampled_mib = sampler.peak_mib
    result.rss_samples = sampler.samples
    if hwm_reset:
        result.peak_rss_hwm_mib = mib(proc_status().get("VmHWM", 0))
    for session, outcome in enumerate(outcomes, start=1):
        if isinstance(outcome, BaseException):
            result.run_exceptions.append(f"session {session}: {type(outcome).__name__}: {outcome}")
            continue
        run, path = outcome
        result.trajectory.read(path)
        result.sessions.append(
            SessionResult(
                session=session,
                status=run.status,
                answer_ok=run.answer == expected_answer(round_no, session, soak.cells),
                iterations=run.iterations,
                sub_calls=run.sub_calls,
                elapsed_s=run.elapsed_s,
                error=run.error,
                error_type=run.error_type,
            )
        )
    record_models(result, models, soak)
    left = await asyncio.to_thread(our_containers, client, soak.runtime_dir)
    result.leftover_containers = len(left)
    await asyncio.to_thread(remove_containers, left)  # counted above; removed so the next round is clean
    result.leftover_session_dirs = sum(1 for _ in soak.runtime_dir.iterdir())
    gc.collect()
    result.memory_after = memory_snapshot()
    malloc_trim()
    result.memory_after_trim = memory_snapshot()
    return result


def record_models(result: RoundResult, models: SoakModels, soak: Soak) -> None:
    result.lost_outputs = models.lost_outputs()
    result.cells_not_sent = soak.sessions * soak.cells - len(models.emitted)
    result.cells_fed_back = models.cells_fed_back()
    result.root_requests = models.root_requests
    result.sub_requests = models.sub_requests
    result.sub_tokens_repeated = sum(1 for n in models.sub_seen.values() if n > 1)
    emitted = {token_for(result.round, s, c) for s, c in models.emitted}
    result.sub_tokens_missing = len(emitted - set(models.sub_seen))
    result.unexpected_requests = models.unexpected
    result.unexpected_examples = models.unexpected_examples
    result.lost_examples = models.lost_examples


# -- summary and output ----------------------------------------------------------------------------------


def percentile(values: list[float], q: int) -> float | None:
    """The q-th percentile (inclusive method); None for no values."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def distribution(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "min": min(values) if values else None,
        "max": max(values) if values else None,
    }


def summarize(soak: Soak) -> dict[str, Any]:
    rounds = soak.results
    cells = [s for r in rounds for s in r.trajectory.cell_s]
    wall = sum(r.wall_s for r in rounds)
    first, last = rounds[0], rounds[-1]
    runs = soak.sessions * soak.rounds
    growth = last.memory_after["rss_mib"] - first.memory_before["rss_mib"]
    return {
        "runs": runs,
        "cells_expected": runs * soak.cells,
        "cells_run": sum(r.trajectory.cells for r in rounds),
        "cells_fed_back": sum(r.cells_fed_back for r in rounds),
        "lost_outputs": sum(r.lost_outputs for r in rounds),
        "cells_not_sent": sum(r.cells_not_sent for r in rounds),
        "runs_not_completed": sum(r.not_completed for r in rounds),
        "wrong_answers": sum(r.wrong_answers for r in rounds),
        "cell_errors": sum(r.trajectory.cell_errors for r in rounds),
        "cell_timeouts": sum(r.trajectory.cell_timeouts for r in rounds),
        "kernel_restarts": sum(r.trajectory.kernel_restarts for r in rounds),
        "sub_call_errors": sum(r.trajectory.sub_errors for r in rounds),
        "unexpected_requests": sum(r.unexpected_requests for r in rounds),
        "leftover_containers": sum(r.leftover_containers for r in rounds),
        "leftover_session_dirs": sum(r.leftover_session_dirs for r in rounds),
        "root_calls": sum(len(r.trajectory.root_s) for r in rounds),
        "root_requests_seen": sum(r.root_requests for r in rounds),
        "root_retries": sum(r.trajectory.root_retries for r in rounds),
        "sub_calls": sum(s.sub_calls for r in rounds for s in r.sessions),
        "sub_requests_seen": sum(r.sub_requests for r in rounds),
        "sub_retries": sum(r.trajectory.sub_retries for r in rounds),
        "sub_tokens_repeated": sum(r.sub_tokens_repeated for r in rounds),
        "sub_tokens_missing": sum(r.sub_tokens_missing for r in rounds),
        "wall_s": wall,
        "cells_per_s": (len(cells) / wall) if wall else None,
        "cell_s": distribution(cells),
        "root_call_s": distribution([s for r in rounds for s in r.trajectory.root_s]),
        "sub_call_s": distribution([s for r in rounds for s in r.trajectory.sub_s]),
        "run_elapsed_s": distribution([s.elapsed_s for r in rounds for s in r.sessions]),
        "first_cell_s": distribution([s for r in rounds for s in r.trajectory.first_cell_s]),
        "rss_before_mib": first.memory_before["rss_mib"],
        "rss_peak_mib": max(r.peak_rss_sampled_mib for r in rounds),
        "rss_peak_hwm_mib": max((r.peak_rss_hwm_mib or 0.0) for r in rounds) or None,
        "rss_after_mib": last.memory_after["rss_mib"],
        "rss_after_trim_mib": last.memory_after_trim["rss_mib"],
        "rss_growth_mib": growth,
        "rss_growth_per_session_mib": growth / runs,
        # Retained memory (after malloc_trim) from the end of round 1 to the end: one-time set-up excluded.
        "rss_steady_growth_per_session_mib": (
            (last.memory_after_trim["rss_mib"] - first.memory_after_trim["rss_mib"])
            / (soak.sessions * (soak.rounds - 1))
            if soak.rounds > 1
            else None
        ),
        "threads_before_after": (first.memory_before["threads"], last.memory_after["threads"]),
        "fds_before_after": (first.memory_before["fds"], last.memory_after["fds"]),
    }


def gate(summary: dict[str, Any]) -> list[str]:
    """Why the soak failed (empty when it passed)."""
    checks = {
        "lost_outputs": "output(s) lost",
        "leftover_containers": "container(s) left behind",
        "runs_not_completed": "run(s) did not complete",
        "wrong_answers": "run(s) gave the wrong final answer",
    }
    return [f"{summary[key]} {what}" for key, what in checks.items() if summary[key]]


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else _num(value * 1000.0)


def table_rows(soak: Soak, s: dict[str, Any]) -> list[tuple[str, ...]]:
    """(figure, value, median, min, max, unit) rows; blank where a column means nothing."""

    def one(label: str, value: str, unit: str = "") -> tuple[str, ...]:
        return (label, value, "", "", "", unit)

    def count(label: str, key: str) -> tuple[str, ...]:
        return one(label, _num(s[key]))

    def dist(label: str, key: str, per: str) -> tuple[str, ...]:
        d = s[key]
        return (label, f"p99 {_ms(d['p99'])}", _ms(d["p50"]), _ms(d["min"]), _ms(d["max"]), f"ms/{per}")

    error_keys = (
        "runs_not_completed",
        "cell_errors",
        "kernel_restarts",
        "sub_call_errors",
        "unexpected_requests",
    )

    def seconds(label: str, key: str) -> tuple[str, ...]:
        d = s[key]
        return (label, "", _num(d["p50"]), _num(d["min"]), _num(d["max"]), "s/run")

    rows: list[tuple[str, ...]] = [
        one("sessions x cells x rounds", f"{soak.sessions} x {soak.cells} x {soak.rounds}"),
        one("cells run (trajectory) / expected", f"{s['cells_run']:,} / {s['cells_expected']:,}"),
        count("LOST OUTPUTS (must be 0)", "lost_outputs"),
        count("  cells never sent by the root model", "cells_not_sent"),
        count("  cells sent whose sub-call never arrived", "sub_tokens_missing"),
        one("errors", _num(sum(s[k] for k in error_keys))),
        count("  runs not completed", "runs_not_completed"),
        count("  cells with an error", "cell_errors"),
        count("  cells timed out", "cell_timeouts"),
        count("  kernel restarts", "kernel_restarts"),
        count("  sub-calls failed", "sub_call_errors"),
        count("  unexpected requests at the server", "unexpected_requests"),
        count("wrong final answers", "wrong_answers"),
        count("LEFTOVER CONTAINERS (must be 0)", "leftover_containers"),
        count("leftover session directories", "leftover_session_dirs"),
        one("wall time", _num(s["wall_s"]), "s"),
        one("throughput", _num(s["cells_per_s"], 2), "cells/s"),
        dist("cell latency (trajectory duration_s)", "cell_s", "cell"),
        dist("root call (litellm, server)", "root_call_s", "call"),
        dist("sub-call (litellm, server)", "sub_call_s", "call"),
        seconds("run elapsed", "run_elapsed_s"),
        seconds("  of which start until the first cell is done", "first_cell_s"),
        count("root calls (trajectory)", "root_calls"),
        count("  retries", "root_retries"),
        count("sub-calls (runs' ledgers)", "sub_calls"),
        count("  requests seen by the server", "sub_requests_seen"),
        count("  retries", "sub_retries"),
        count("  tokens asked more than once", "sub_tokens_repeated"),
        one("host RSS before", _num(s["rss_before_mib"]), "MiB"),
        one("host RSS peak (sampled every 0.5 s)", _num(s["rss_peak_mib"]), "MiB"),
        one("host RSS peak (VmHWM)", _num(s["rss_peak_hwm_mib"]), "MiB"),
        one("host RSS after (gc.collect)", _num(s["rss_after_mib"]), "MiB"),
        one("host RSS after malloc_trim", _num(s["rss_after_trim_mib"]), "MiB"),
        one("RSS growth per session", _num(s["rss_growth_per_session_mib"], 2), "MiB"),
        one("threads before / after", "{} / {}".format(*s["threads_before_after"])),
        one("open fds before / after", "{} / {}".format(*s["fds_before_after"])),
    ]
    if soak.rounds > 1:
        steady = _num(s["rss_steady_growth_per_session_mib"], 3)
        rows.append(one("RSS growth per session after round 1 (trimmed)", steady, "MiB"))
        previous = soak.results[0].memory_before["rss_mib"]
        for r in soak.results:
            after, trimmed = r.memory_after["rss_mib"], r.memory_after_trim["rss_mib"]
            value = f"{after:,.1f}, {trimmed:,.1f} ({trimmed - previous:+,.1f})"
            rows.append(one(f"round {r.round}: RSS after, trimmed (change)", value, "MiB"))
            previous = trimmed
    return rows


def render_table(rows: list[tuple[str, ...]]) -> str:
    header = ("figure", "value", "median", "min", "max", "unit")
    everything = [header, *rows]
    widths = [max(len(row[i]) for row in everything) for i in range(len(header))]
    lines = []
    for index, row in enumerate(everything):
        cells = [
            c.ljust(w) if i in (0, 5) else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_header(machine: dict[str, Any], soak: Soak, command: str, when: str) -> str:
    return "\n".join(
        [
            f"rlmbox soak benchmark, {when}",
            f"command: {command}",
            *machine_lines(machine),
            f"sandbox: image {soak.image}, 1 CPU, 512 MiB memory, cell timeout 60 s; context "
            f"{soak.context_chars:,} chars per session",
        ]
    )


NOTES = [
    "Each session is one RLM run (asyncio.gather in one process); every cell makes one llm_query, and the "
    "root and sub-model are a scripted server in a thread of this process (instant replies).",
    "A lost output is a cell whose printed token and correct sub-answer are missing from the next root "
    "request's feedback message, as the server saw it.",
    "Cell latency is the trajectory's duration_s (the sandbox's cell round trip, sub-call included); "
    "the median column is p50.",
    "RSS is this process's (host side: event loop, litellm, Docker SDK, server thread), not the containers'. "
    "'before' is after importing litellm and Docker; 'after' follows gc.collect(). Growth per session is "
    "(after last round - before first round) / runs; it includes one-time set-up (litellm's first calls, "
    "the default thread pool), which --rounds separates: later rounds compare RSS after malloc_trim.",
]


def write_json(path: Path, soak: Soak, summary: dict[str, Any], meta: dict[str, Any]) -> None:
    payload = {
        **meta,
        "benchmark": "soak",
        "sessions": soak.sessions,
        "cells": soak.cells,
        "rounds": soak.rounds,
        "context_chars": soak.context_chars,
        "notes": NOTES,
        "summary": summary,
        "failures": gate(summary),
        "rounds_detail": [
            {
                **asdict(r),
                "not_completed": r.not_completed,
                "wrong_answers": r.wrong_answers,
            }
            for r in soak.results
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")


# -- main ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=16, help="concurrent runs (default 16)")
    parser.add_argument(
        "--cells", type=int, default=100, help="cells per run, one sub-call each (default 100)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat the whole soak R times (default 1)")
    parser.add_argument(
        "--context-chars", type=int, default=10_000, help="context size per session (default 10000)"
    )
    parser.add_argument("--image", default=DEFAULT_IMAGE, help=f"sandbox image (default {DEFAULT_IMAGE})")
    parser.add_argument(
        "--json", type=Path, help="results file (default bench/results/soak-<timestamp>.json)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the trajectories (their path is printed)")
    args = parser.parse_args(argv)
    for name in ("sessions", "cells", "rounds", "context_chars"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.sessions > 99 or args.cells > 999:
        parser.error("at most 99 sessions and 999 cells (the tokens have fixed widths)")
    return args


async def soak_all(soak: Soak, client: docker.DockerClient) -> None:
    for round_no in range(1, soak.rounds + 1):
        result = await run_round(soak, round_no, client)
        soak.results.append(result)
        progress(
            f"[round {round_no} done in {result.wall_s:.1f}s: lost {result.lost_outputs}, "
            f"not completed {result.not_completed}, leftover containers {result.leftover_containers}, "
            f"RSS {result.memory_before['rss_mib']:.0f} -> {result.memory_after['rss_mib']:.0f} MiB]"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_logging()
    now = dt.datetime.now(dt.UTC)
    json_path: Path = args.json or RESULTS_DIR / f"soak-{now.strftime('%Y%m%d-%H%M%S')}.json"
    command = " ".join([Path(sys.executable).name, *sys.argv])
    try:
        client = docker.from_env()
        client.images.get(args.image)
    except docker.errors.ImageNotFound:
        progress(f"the sandbox image {args.image} is not built: run `make image`")
        return 3
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        progress(f"cannot reach the Docker daemon: {exc}")
        return 3
    soak = Soak(
        sessions=args.sessions,
        cells=args.cells,
        rounds=args.rounds,
        context_chars=args.context_chars,
        image=args.image,
        runtime_dir=Path(tempfile.mkdtemp(prefix="rbs-", dir="/tmp")),
        scratch=Path(tempfile.mkdtemp(prefix="rlmbox-soak-")),
    )
    try:
        machine = machine_info(client)
        progress(f"rlmbox soak: {args.sessions} sessions x {args.cells} cells x {args.rounds} round(s)")
        progress("[importing litellm before measuring RSS]")
        load_litellm()
        asyncio.run(soak_all(soak, client))
    except KeyboardInterrupt:
        progress("interrupted: cleaning up")
        return 130
    finally:
        with sigint_ignored():
            with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
                stray = our_containers(client, soak.runtime_dir)
                if stray:
                    progress(f"removing {len(stray)} container(s) left behind")
                    remove_containers(stray)
            client.close()
            shutil.rmtree(soak.runtime_dir, ignore_errors=True)
            if not args.keep:
                shutil.rmtree(soak.scratch, ignore_errors=True)

    machine["loadavg_end"] = os.getloadavg()
    meta = {"date": now.isoformat(timespec="seconds"), "command": command, "machine": machine}
    return report(soak, meta, json_path, keep=args.keep)


def report(soak: Soak, meta: dict[str, Any], json_path: Path, *, keep: bool) -> int:
    """Print the table, write the JSON file; the exit status (1 when the soak failed)."""
    summary = summarize(soak)
    when = dt.datetime.fromisoformat(meta["date"]).strftime("%Y-%m-%d %H:%M UTC")
    print(render_header(meta["machine"], soak, meta["command"], when))
    print()
    print(render_table(table_rows(soak, summary)))
    print()
    for note in NOTES:
        print(f"- {note}")
    examples = [e for r in soak.results for e in (*r.run_exceptions, *r.lost_examples)]
    examples += [e for r in soak.results for e in (*r.trajectory.error_examples, *r.unexpected_examples)]
    examples += [
        f"session {s.session}: {s.status}: {s.error}" for r in soak.results for s in r.sessions if s.error
    ]
    for example in examples[: 3 * MAX_EXAMPLES]:
        print(f"! {example}")
    meta["settings"] = soak.settings("http://127.0.0.1:0/v1").model_dump(mode="json", exclude={"llm"})
    write_json(json_path, soak, summary, meta)
    print(f"\nresults: {json_path}")
    if keep:
        print(f"trajectories: {soak.scratch}")
    failures = gate(summary)
    if failures:
        print("SOAK FAILED: " + "; ".join(failures))
        return 1
    print("soak passed: no lost output, no leftover container, every run completed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
