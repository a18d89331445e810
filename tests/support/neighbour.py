"""An attack run beside a neighbour: a second session in the same host process doing honest work all along,
and what the pair cost the host.

    pair = run_beside_neighbour([hostile.frame_flood()], runtime_dir, tmp_path)
    pair.attacker            # an AttackRun (support.attacks), or None if its arun raised: see attacker_error
    pair.neighbour_ok        # every neighbour cell's output reached its next turn, and its answer is right
    pair.host                # HostImpact: peak RSS growth, longest event-loop stall, CPU, log lines
    pair.leftovers           # containers of runtime_dir still on the engine (must be [])

Both runs are ``RLM(settings).arun`` in one event loop, on one scripted OpenAI-compatible server. The
neighbour starts first; the attacker starts once the neighbour's first cell has run. While the attacker's run
goes on, the neighbour's root model sends one cell a turn: an ``llm_query`` with a token unique to the cell,
then a print of the token and the answer. Once the attacker's run has returned (or raised), it asks for
``FINAL`` of how many tokens its kernel kept, which must be the number of cells it was sent. The attacker's
run is ``run_attack``'s: the cells one a turn, the probe, then ``FINAL(done)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import resource
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from rlmbox import RLM, RunResult
from rlmbox.log import ensure_logging

from support.attacks import CONTEXT, AttackRun, attack_script
from support.containers import rlmbox_containers
from support.host import peak_rss, reset_peak_rss, rss
from support.openai_server import Handler, Reply, ScriptedOpenAIServer
from support.scripted_run import ROOT_SEEN, repl, scripted_settings

__all__ = [
    "ECHO",
    "NEIGHBOUR_CONTEXT",
    "NEIGHBOUR_QUERY",
    "NEIGHBOUR_ROOT",
    "NEIGHBOUR_SUB",
    "HostImpact",
    "NeighbourModels",
    "PairRun",
    "run_beside_neighbour",
]

NEIGHBOUR_ROOT, NEIGHBOUR_SUB = "openai/neighbour-root", "openai/neighbour-sub"
_NEIGHBOUR_ROOT_SEEN = NEIGHBOUR_ROOT.removeprefix("openai/")
_NEIGHBOUR_SUB_SEEN = NEIGHBOUR_SUB.removeprefix("openai/")
ATTACKER_QUERY = "Do what the context says."
NEIGHBOUR_QUERY = "Run the cells you are given, then give the final answer."
NEIGHBOUR_CONTEXT = "an honest session's context"
ECHO = "neighbour-echo "
TICK_S = 0.01  # the loop-stall ticker's period
NEIGHBOUR_GRACE_S = 120.0  # how long the neighbour may take to finish once the attacker's run has ended


@dataclass
class HostImpact:
    """What the pair of runs cost the host process."""

    peak_rss_growth: int  # bytes: VmHWM over the pair minus RSS before it
    max_loop_stall_s: float  # longest lateness of a ticker task in the runs' event loop (ticks every 10 ms)
    cpu_s: float  # host process CPU (user + system) over the pair, the scripted server's threads included
    log_lines: int  # log events the host emitted over the pair: structlog's, and stdlib records >= WARNING


@dataclass
class PairRun:
    """An attacker's run and its neighbour's, side by side in one host process."""

    attacker: AttackRun | None  # None when the attacker's arun raised
    attacker_error: BaseException | None  # what the attacker's arun raised, if it did
    attacker_events: list[dict[str, Any]]  # the attacker's trajectory, also when its arun raised
    neighbour: RunResult | None  # None when the neighbour's arun raised (or did not end in time)
    neighbour_error: BaseException | None
    neighbour_ok: bool  # every neighbour cell's output reached its next turn, and its final answer is right
    neighbour_cells: int  # cells the neighbour was sent while the attack went on
    neighbour_longest_turn_s: float  # longest time between two of the neighbour's root-model requests
    host: HostImpact
    leftovers: list[str]  # containers of this runtime_dir still on the engine after both runs

    @property
    def attacker_status(self) -> str:
        """The attacker's run status, or ``raised <ExceptionType>``."""
        if self.attacker is None:
            return f"raised {type(self.attacker_error).__name__}"
        return self.attacker.result.status


def sub_answer(token: str) -> str:
    """The neighbour's sub-model answer to a cell's token."""
    return "ack-" + hashlib.sha256(token.encode()).hexdigest()[:16]


def expected_line(token: str) -> str:
    """What a neighbour cell prints, and so what must reach the neighbour's next turn."""
    return f"OUT {token}|{sub_answer(token)}"


class NeighbourModels:
    """The neighbour's scripted models: a new cell each turn until ``attack_over`` is set, then FINAL.
    Requests for ``sub_model`` (the name the server sees) are its sub-calls."""

    def __init__(self, attack_over: threading.Event, sub_model: str = _NEIGHBOUR_SUB_SEEN) -> None:
        self._attack_over = attack_over
        self._sub_model = sub_model
        self._lock = threading.Lock()
        self._nonce = secrets.token_hex(4)
        self.sent: list[str] = []  # the token of each cell sent
        self.delivered: list[bool] = []  # for each cell sent, whether its line reached the next turn
        self.longest_turn_s = 0.0  # the longest gap between two root requests (a turn: reply, cell, feedback)
        self._last_request: float | None = None
        self._final_sent = False

    def __call__(self, request: dict[str, Any]) -> Reply:
        messages = request.get("messages") or [{}]
        last = str(messages[-1].get("content", ""))
        if request.get("model") == self._sub_model:
            if not last.startswith(ECHO):
                return Reply(status=400, error_message="not a neighbour prompt")
            return Reply(text=sub_answer(last.removeprefix(ECHO)))
        with self._lock:
            now = time.monotonic()
            if self._last_request is not None:
                self.longest_turn_s = max(self.longest_turn_s, now - self._last_request)
            self._last_request = now
            if len(self.delivered) < len(self.sent):
                self.delivered.append(expected_line(self.sent[-1]) in last)
            if self._final_sent:  # the FINAL cell did not end the run: its kernel lost the tokens
                return Reply(text="FINAL(lost)")
            if self.sent and self._attack_over.is_set():
                self._final_sent = True
                return repl("FINAL(str(len(seen)))")
            token = f"nb-{self._nonce}-{len(self.sent) + 1:05d}"
            self.sent.append(token)
            first = len(self.sent) == 1
        code = f"token = {token!r}\nanswer = llm_query({ECHO!r} + token)\nseen.append(token)\n"
        return repl(("seen = []\n" if first else "") + code + "print('OUT', token + '|' + answer)")

    def all_delivered(self) -> bool:
        """Every cell's output reached the neighbour's next turn."""
        return len(self.delivered) == len(self.sent) and all(self.delivered)

    def ok(self, result: RunResult | None) -> bool:
        return (
            result is not None
            and result.status == "completed"
            and result.answer == str(len(self.sent))
            and self.all_delivered()
        )


class _Ticker:
    """A task that wakes every TICK_S and keeps the worst lateness it saw."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + TICK_S
            await asyncio.sleep(TICK_S)
            self.worst = max(self.worst, loop.time() - due)


class _LogCounter(logging.Handler):
    """Counts log events: as a structlog processor (first in the chain) and as a stdlib handler."""

    def __init__(self, forward: logging.Handler | None) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self._forward = forward  # stdlib's last-resort handler when nothing else would print the record

    def __call__(self, _: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        self.count += 1
        return event

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if self._forward is not None:
            self._forward.handle(record)


@contextlib.contextmanager
def _counting_logs() -> Iterator[_LogCounter]:
    ensure_logging()  # rlmbox's default configuration, unless the application made its own
    root = logging.getLogger()
    counter = _LogCounter(None if root.handlers else logging.lastResort)
    processors = structlog.get_config()["processors"]  # shared by every logger: changed in place
    processors.insert(0, counter)
    root.addHandler(counter)
    try:
        yield counter
    finally:
        root.removeHandler(counter)
        processors.remove(counter)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _events(path: Path) -> list[dict[str, Any]]:
    """The trajectory's events; a line that does not decode (cut short by a crash) is skipped."""
    events = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return events


@dataclass
class _Outcomes:
    attacker: RunResult | None = None
    attacker_error: BaseException | None = None
    neighbour: RunResult | None = None
    neighbour_error: BaseException | None = None
    ticker: _Ticker = field(default_factory=_Ticker)


async def _pair(
    attacker: RLM,
    neighbour: RLM,
    paths: tuple[Path, Path],
    attack_over: threading.Event,
) -> _Outcomes:
    outcomes = _Outcomes()
    ticking = asyncio.ensure_future(outcomes.ticker.run())
    first_cell = asyncio.Event()

    def on_neighbour_event(event: dict[str, Any]) -> None:
        if event.get("event") == "cell":
            first_cell.set()

    neighbour_run = asyncio.ensure_future(
        neighbour.arun(NEIGHBOUR_CONTEXT, NEIGHBOUR_QUERY, trajectory=paths[1], on_event=on_neighbour_event)
    )
    started = asyncio.ensure_future(first_cell.wait())
    try:
        # The attack starts once the neighbour's first cell has run (or the neighbour has already failed).
        await asyncio.wait({started, neighbour_run}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        try:
            outcomes.attacker = await attacker.arun(CONTEXT, ATTACKER_QUERY, trajectory=paths[0])
        except Exception as exc:  # a boundary: a run that raises is an outcome to observe
            outcomes.attacker_error = exc
        finally:
            attack_over.set()
        try:
            async with asyncio.timeout(NEIGHBOUR_GRACE_S):
                outcomes.neighbour = await neighbour_run
        except Exception as exc:  # the same boundary, for the neighbour (a time-out included)
            outcomes.neighbour_error = exc
    finally:
        for task in (ticking, started, neighbour_run):
            task.cancel()
        await asyncio.gather(ticking, started, neighbour_run, return_exceptions=True)
    return outcomes


def run_beside_neighbour(
    cells: Sequence[str],
    runtime_dir: Path,
    tmp_path: Path,
    *,
    sandbox: Mapping[str, Any] | None = None,
    limits: Mapping[str, Any] | None = None,
    sub_model: Handler | Reply | None = None,
    probe: bool = True,
    neighbour_latency_s: float = 0.0,
) -> PairRun:
    """Run ``cells`` (one a turn, then the probe and FINAL) as ``run_attack`` does, while a neighbour session
    in the same event loop keeps making sub-calls; measure the host over the pair.

    ``sandbox``, ``limits`` and ``sub_model`` are the attacker's, as in ``run_attack``; the neighbour has
    the defaults of ``scripted_settings`` and no turn or sub-call limit to run out of.
    ``neighbour_latency_s`` delays each of the neighbour's root replies (a slower model, fewer turns).
    """
    script = attack_script(cells, probe=probe, sub_model=sub_model)
    attack_over = threading.Event()
    neighbour_models = NeighbourModels(attack_over)

    def route(request: dict[str, Any]) -> Reply:
        if request.get("model") in (_NEIGHBOUR_ROOT_SEEN, _NEIGHBOUR_SUB_SEEN):
            reply = neighbour_models(request)  # not recorded: the neighbour's requests grow every turn
            if request.get("model") == _NEIGHBOUR_ROOT_SEEN and neighbour_latency_s:
                reply = Reply(text=reply.text, delay_s=neighbour_latency_s)
            return reply
        return script(request)

    runs = tmp_path / "runs"
    tag = secrets.token_hex(4)
    paths = (runs / f"attacker-{tag}.jsonl", runs / f"neighbour-{tag}.jsonl")
    with ScriptedOpenAIServer(route) as server:
        attacker = RLM(
            scripted_settings(
                server.url,
                runtime_dir,
                tmp_path,
                sandbox={"cell_timeout_s": 20, **(sandbox or {})},
                limits=limits,
            )
        )
        neighbour = RLM(
            scripted_settings(
                server.url,
                runtime_dir,
                tmp_path,
                llm={"model": NEIGHBOUR_ROOT, "sub_model": NEIGHBOUR_SUB},
                limits={"max_iterations": 1_000_000, "max_sub_calls": 1_000_000},
            )
        )
        with _counting_logs() as logs:
            reset_peak_rss()
            before, cpu_before = rss(), _cpu_s()
            outcomes = asyncio.run(_pair(attacker, neighbour, paths, attack_over))
            host = HostImpact(
                peak_rss_growth=peak_rss() - before,
                max_loop_stall_s=round(outcomes.ticker.worst, 4),
                cpu_s=round(_cpu_s() - cpu_before, 3),
                log_lines=logs.count,
            )
    leftovers = rlmbox_containers(runtime_dir)
    attacker_events = _events(paths[0])
    attack_run = None
    if outcomes.attacker is not None:
        feedback = [request["messages"][-1]["content"] for request in script.requests_for(ROOT_SEEN)[1:]]
        attack_run = AttackRun(outcomes.attacker, feedback, script, leftovers, attacker_events)
    return PairRun(
        attacker=attack_run,
        attacker_error=outcomes.attacker_error,
        attacker_events=attacker_events,
        neighbour=outcomes.neighbour,
        neighbour_error=outcomes.neighbour_error,
        neighbour_ok=outcomes.neighbour_error is None and neighbour_models.ok(outcomes.neighbour),
        neighbour_cells=len(neighbour_models.sent),
        neighbour_longest_turn_s=round(neighbour_models.longest_turn_s, 4),
        host=host,
        leftovers=leftovers,
    )
