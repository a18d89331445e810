"""Start, find and stop the local model server's process.

``LocalModelServer`` runs ``server.py`` with the local-model venv's Python, waits (bounded) until it
listens and ``/v1/models`` answers, and stops it on exit: SIGTERM, then SIGKILL after a grace period.
Processes are identified by pid *and* start time (from /proc), so a recycled pid is never signalled.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import select
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import structlog

from rlmbox._exceptions import (
    ConfigError,
    LocalModelError,
    LocalModelMissingError,
    LocalModelStartTimeout,
)
from rlmbox.local_model.weights import DEFAULT_MODEL, MODELS, is_ready

__all__ = [
    "DEFAULT_CACHE_RAM_MIB",
    "DEFAULT_CTX_SIZE",
    "LocalModelServer",
    "ProcessId",
    "default_dir",
    "default_threads",
    "stop_process",
]

log = structlog.get_logger()

DEFAULT_CTX_SIZE = 16384
DEFAULT_CACHE_RAM_MIB = 2048
_PROGRAM = Path(__file__).with_name("server.py")
_LOG_TAIL_LINES = 12


def default_dir() -> Path:
    """The cache folder: ``RLMBOX_LOCAL_MODEL_DIR``, else ``~/.cache/rlmbox/local-model``.

    The one place this component reads the environment.
    """
    configured = os.environ.get("RLMBOX_LOCAL_MODEL_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "rlmbox" / "local-model"


def default_threads() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0))


# -- processes, identified by pid and start time ---------------------------------------------------------


@dataclass(frozen=True)
class ProcessId:
    """A process as /proc knows it: its pid and its start time in clock ticks since boot."""

    pid: int
    start_ticks: int

    @classmethod
    def of(cls, pid: int) -> ProcessId | None:
        """The live process ``pid``, or None when there is none (an exited zombie counts as none)."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return None
        fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
        state, start_ticks = fields[0], int(fields[19])
        return None if state in {"Z", "X", "x"} else cls(pid, start_ticks)

    def alive(self) -> bool:
        """Whether this very process still runs (not a later one with the same pid)."""
        return ProcessId.of(self.pid) == self

    def rss_bytes(self) -> int | None:
        """Its resident memory, or None when it is gone."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return None


def _wait_exit(pidfd: int, timeout: float) -> bool:
    """Wait until the process behind ``pidfd`` exits; True when it did within ``timeout`` seconds."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000))))


def stop_process(process: ProcessId, *, grace: float = 10.0) -> bool:
    """Stop ``process``: SIGTERM, then SIGKILL after ``grace`` seconds; return once it has exited.

    Returns False when it was already gone. The process is held by a pidfd once checked, so a pid
    recycled in between is never signalled.
    """
    try:
        pidfd = os.pidfd_open(process.pid)
    except ProcessLookupError:
        return False
    try:
        if not process.alive():  # checked after the pidfd is held: it cannot be recycled from here on
            return False
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        if not _wait_exit(pidfd, grace):
            log.warning("local_model.kill", pid=process.pid, grace_s=grace)
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            if not _wait_exit(pidfd, 30.0):
                raise LocalModelError(f"process {process.pid} survived SIGKILL for 30 s")
        return True
    finally:
        os.close(pidfd)


# -- the server ------------------------------------------------------------------------------------------


class _State(enum.Enum):
    UNSTARTED = "unstarted"
    RUNNING = "running"
    STOPPED = "stopped"


class LocalModelServer:
    """llama.cpp's OpenAI-compatible server for one local model, on 127.0.0.1.

    >>> with LocalModelServer("qwen2.5-coder-0.5b", prompt_cache=False) as server:  # doctest: +SKIP
    ...     llm = LLMSettings(model=server.litellm_model, api_base=server.api_base, api_key="local")

    Args:
        model: a name from ``MODELS`` (the server's alias, so requests name it as ``openai/<model>``).
        port: 0 picks a free port.
        ctx_size: context tokens, divided among the ``parallel`` slots.
        threads: CPU threads for prompt processing and generation (default: every core available).
        parallel: requests decoded at once.
        prompt_cache: reuse the KV of a previous prompt's common prefix (llama.cpp's default). Off, every
            request is computed afresh, so identical requests at temperature 0 get identical replies.
        cache_ram_mib: host memory for earlier prompts' KV, restored when a conversation comes back to
            its slot (an RLM's root turns between sub-calls); 0 when ``prompt_cache`` is off.
        cache_dir: the folder ``make local-model`` filled (default ``default_dir()``).
        start_timeout: seconds to wait for the model to load and the server to answer.
        stop_grace: seconds between SIGTERM and SIGKILL.
        log_path: where the server's output goes; default an unnamed temporary file (nothing to clean up).
        detached: start it in its own session, not tied to this process (``release()`` then leaves it
            running); otherwise it stops by itself when this process ends, however that happens.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        port: int = 0,
        ctx_size: int = DEFAULT_CTX_SIZE,
        threads: int | None = None,
        parallel: int = 1,
        prompt_cache: bool = True,
        cache_ram_mib: int = DEFAULT_CACHE_RAM_MIB,
        cache_dir: Path | None = None,
        start_timeout: float = 180.0,
        stop_grace: float = 10.0,
        log_path: Path | None = None,
        detached: bool = False,
    ) -> None:
        if model not in MODELS:
            raise ConfigError(f"unknown local model {model!r}; known: {', '.join(MODELS)}")
        if (
            not 0 <= port <= 65535
            or ctx_size < 1
            or parallel < 1
            or (threads is not None and threads < 1)
            or cache_ram_mib < 0
        ):
            raise ConfigError(
                f"invalid local model server options: port {port}, ctx_size {ctx_size}, threads {threads}, "
                f"parallel {parallel}, cache_ram_mib {cache_ram_mib}"
            )
        self.model = model
        self.requested_port = port
        self.ctx_size = ctx_size
        self.threads = threads or default_threads()
        self.parallel = parallel
        self.prompt_cache = prompt_cache
        self.cache_ram_mib = cache_ram_mib if prompt_cache else 0
        self.cache_dir = cache_dir or default_dir()
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self.detached = detached
        self._log_path = log_path
        self._output: IO[bytes] | None = None  # the server's output, kept open to read its tail
        self._state = _State.UNSTARTED
        self._popen: subprocess.Popen[bytes] | None = None
        self._process: ProcessId | None = None
        self._lifeline: int | None = None
        self._url: str | None = None

    # -- what clients need

    @property
    def litellm_model(self) -> str:
        """The litellm model string: ``openai/<model>``."""
        return f"openai/{self.model}"

    @property
    def api_base(self) -> str:
        """``http://127.0.0.1:PORT/v1``, for litellm's ``api_base`` or ``--api-base``."""
        return f"{self._require_url()}/v1"

    @property
    def port(self) -> int:
        return int(self._require_url().rsplit(":", 1)[1])

    @property
    def process(self) -> ProcessId:
        if self._process is None:
            raise LocalModelError("the local model server has not been started")
        return self._process

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def _require_url(self) -> str:
        if self._url is None:
            raise LocalModelError("the local model server has not been started")
        return self._url

    # -- lifecycle

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """Start the server and return once ``/v1/models`` answers; on any failure nothing is left running."""
        if self._state is not _State.UNSTARTED:
            raise LocalModelError(f"a LocalModelServer can be started once (it is {self._state.value})")
        python = self.cache_dir / "venv" / "bin" / "python"
        weights = self.cache_dir / "models" / MODELS[self.model].filename
        if not python.exists():
            raise LocalModelMissingError(
                f"no local model server in {self.cache_dir}/venv: run `make local-model`"
            )
        if not is_ready(MODELS[self.model], weights.parent):
            raise LocalModelMissingError(
                f"the model {self.model} is not in {weights.parent}: run `make local-model`"
            )
        self._state = _State.RUNNING
        try:
            self._launch(python, weights)
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, python: Path, weights: Path) -> None:
        # Closed in stop() or release(); unnamed unless log_path is given, so nothing is ever left behind.
        self._output = self._log_path.open("w+b") if self._log_path else tempfile.TemporaryFile()  # noqa: SIM115
        ready_read, ready_write = os.pipe()
        pass_fds = [ready_write]
        command = [
            str(python), "-I", str(_PROGRAM), "--model-path", str(weights), "--alias", self.model,
            "--port", str(self.requested_port), "--ctx-size", str(self.ctx_size),
            "--threads", str(self.threads), "--parallel", str(self.parallel),
            "--cache-ram-mib", str(self.cache_ram_mib), "--ready-fd", str(ready_write),
        ]  # fmt: skip
        if not self.prompt_cache:
            command.append("--no-prompt-cache")
        lifeline_read = None
        if not self.detached:
            lifeline_read, self._lifeline = os.pipe()
            pass_fds.append(lifeline_read)
            command += ["--lifeline-fd", str(lifeline_read)]
        started = time.monotonic()
        try:
            self._popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=self._output,
                stderr=subprocess.STDOUT,
                pass_fds=pass_fds,
                start_new_session=True,  # Ctrl-C at a terminal reaches us, and we stop it
                cwd="/",
            )
            self._process = ProcessId.of(self._popen.pid)
        finally:
            os.close(ready_write)
            if lifeline_read is not None:
                os.close(lifeline_read)
        try:
            self._url = self._read_ready(ready_read, started + self.start_timeout)
        finally:
            os.close(ready_read)
        self._wait_answers(started + self.start_timeout)
        log.info(
            "local_model.started",
            model=self.model,
            url=self._url,
            pid=self._popen.pid,
            seconds=round(time.monotonic() - started, 2),
        )

    def _read_ready(self, fd: int, deadline: float) -> str:
        """The URL the server writes to its ready pipe once it listens."""
        data = b""
        while True:
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([fd], [], [], max(0.0, remaining))
            if not readable:
                raise LocalModelStartTimeout(
                    f"the local model server did not start within {self.start_timeout:g} s{self._log_tail()}"
                )
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
        try:
            return str(json.loads(data)["url"])
        except (ValueError, KeyError, TypeError):
            raise LocalModelError(f"the local model server failed to start{self._log_tail()}") from None

    def _wait_answers(self, deadline: float) -> None:
        """Poll ``/v1/models`` until it lists the model (bounded by ``deadline``)."""
        import httpx

        assert self._popen is not None
        delay, problem = 0.02, "no answer"
        with httpx.Client(trust_env=False, timeout=5.0) as client:
            while True:
                try:
                    reply = client.get(f"{self._url}/v1/models")
                    if reply.status_code == 200 and self.model in reply.text:
                        return
                    problem = f"HTTP {reply.status_code}"
                except httpx.HTTPError as exc:
                    problem = str(exc) or type(exc).__name__
                if self._popen.poll() is not None:
                    raise LocalModelError(
                        f"the local model server exited ({self._popen.returncode}){self._log_tail()}"
                    )
                if time.monotonic() + delay > deadline:
                    raise LocalModelStartTimeout(
                        f"the local model server at {self._url} did not answer within "
                        f"{self.start_timeout:g} s ({problem}){self._log_tail()}"
                    )
                time.sleep(delay)  # between polls of the endpoint, not instead of one
                delay = min(delay * 2, 0.5)

    def _log_tail(self) -> str:
        if self._output is None:
            return ""
        self._output.seek(0, os.SEEK_END)
        self._output.seek(max(0, self._output.tell() - 8192))
        lines = self._output.read().decode(errors="replace").strip().splitlines()
        tail = "\n  ".join(lines[-_LOG_TAIL_LINES:])
        where = f" ({self._log_path})" if self._log_path else ""
        return f"; its last output{where}:\n  {tail}" if tail else ""

    def release(self) -> ProcessId:
        """Leave a detached server running and forget it (the caller records its ``process``)."""
        if not self.detached or self._state is not _State.RUNNING:
            raise LocalModelError("only a running detached server can be released")
        process = self.process
        self._state = _State.STOPPED
        self._popen = None
        self._close_output()
        return process

    def stop(self) -> None:
        """Stop the server and wait until its process is gone; idempotent."""
        if self._state is _State.STOPPED:
            return
        self._state = _State.STOPPED
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        if self._popen is not None:
            popen, self._popen = self._popen, None
            if popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
                try:
                    popen.wait(self.stop_grace)
                except subprocess.TimeoutExpired:
                    log.warning("local_model.kill", pid=popen.pid, grace_s=self.stop_grace)
                    popen.kill()
                    popen.wait()
                except BaseException:  # interrupted while waiting: do not leave it behind
                    popen.kill()
                    popen.wait()
                    raise
            log.info("local_model.stopped", model=self.model, pid=popen.pid, returncode=popen.returncode)
        self._close_output()

    def _close_output(self) -> None:
        if self._output is not None:
            self._output.close()
            self._output = None
