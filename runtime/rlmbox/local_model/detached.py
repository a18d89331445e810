"""A local model server that outlives the command starting it: ``rlmbox local-model start|stop|status``.

The running server is recorded in ``server.json`` in the cache folder (pid, process start time, model,
URL, options, start time); its output goes to ``server.log`` there. One server at a time per cache folder:
starting while one runs is refused. A record whose process is gone (or whose pid now belongs to another
process) is stale: it is reported as not running and removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from rlmbox._exceptions import LocalModelError
from rlmbox.local_model.process import (
    DEFAULT_CACHE_RAM_MIB,
    DEFAULT_CTX_SIZE,
    LocalModelServer,
    ProcessId,
    stop_process,
)
from rlmbox.local_model.weights import DEFAULT_MODEL

__all__ = [
    "ServerRecord",
    "Status",
    "read_record",
    "start_detached",
    "status",
    "stop_detached",
    "write_record",
]

log = structlog.get_logger()

STATE_FILE = "server.json"
LOG_FILE = "server.log"


@dataclass(frozen=True)
class ServerRecord:
    """What ``start`` records about the server it left running."""

    pid: int
    start_ticks: int
    model: str
    url: str
    ctx_size: int
    threads: int
    parallel: int
    prompt_cache: bool
    cache_ram_mib: int
    started_at: str
    log: str

    @property
    def process(self) -> ProcessId:
        return ProcessId(self.pid, self.start_ticks)

    @property
    def litellm_model(self) -> str:
        return f"openai/{self.model}"

    @property
    def api_base(self) -> str:
        return f"{self.url}/v1"

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "litellm_model": self.litellm_model, "api_base": self.api_base}


@dataclass(frozen=True)
class Status:
    """Whether the recorded server runs; ``stale`` when a record was found for a process now gone."""

    record: ServerRecord | None
    running: bool
    rss_bytes: int | None = None
    stale: bool = False


def write_record(cache_dir: Path, record: ServerRecord) -> None:
    """Write the record atomically (a reader sees the old one or the new one, never half)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{STATE_FILE}.", dir=cache_dir)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(record), out, indent=1)
        os.replace(partial, cache_dir / STATE_FILE)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise


def read_record(cache_dir: Path) -> ServerRecord | None:
    """The record, or None when there is none. An unreadable record is removed (and None returned)."""
    path = cache_dir / STATE_FILE
    try:
        return ServerRecord(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        log.warning("local_model.bad_record", path=str(path), error=str(exc))
        path.unlink(missing_ok=True)
        return None


@contextlib.contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    """One start, stop or status at a time per cache folder."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / "server.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _current(cache_dir: Path) -> Status:
    record = read_record(cache_dir)
    if record is None:
        return Status(None, running=False)
    if record.process.alive():
        return Status(record, running=True, rss_bytes=record.process.rss_bytes())
    (cache_dir / STATE_FILE).unlink(missing_ok=True)
    return Status(record, running=False, stale=True)


def status(cache_dir: Path) -> Status:
    """Whether the recorded server runs (a stale record is removed)."""
    with _locked(cache_dir):
        return _current(cache_dir)


def start_detached(
    cache_dir: Path,
    *,
    model: str = DEFAULT_MODEL,
    port: int = 0,
    ctx_size: int = DEFAULT_CTX_SIZE,
    threads: int | None = None,
    parallel: int = 1,
    prompt_cache: bool = True,
    cache_ram_mib: int = DEFAULT_CACHE_RAM_MIB,
    start_timeout: float = 180.0,
) -> ServerRecord:
    """Start a server that keeps running after this process, wait until it answers, and record it.

    Raises ``LocalModelError`` when one is already running (stop it first).
    """
    with _locked(cache_dir):
        current = _current(cache_dir)
        if current.running and current.record is not None:
            raise LocalModelError(
                f"a local model server is already running: {current.record.model} at "
                f"{current.record.api_base} (pid {current.record.pid}); `rlmbox local-model stop` first"
            )
        server = LocalModelServer(
            model,
            port=port,
            ctx_size=ctx_size,
            threads=threads,
            parallel=parallel,
            prompt_cache=prompt_cache,
            cache_ram_mib=cache_ram_mib,
            cache_dir=cache_dir,
            start_timeout=start_timeout,
            log_path=cache_dir / LOG_FILE,
            detached=True,
        )
        try:
            server.start()
            record = ServerRecord(
                pid=server.process.pid,
                start_ticks=server.process.start_ticks,
                model=model,
                url=server.api_base.removesuffix("/v1"),
                ctx_size=ctx_size,
                threads=server.threads,
                parallel=parallel,
                prompt_cache=prompt_cache,
                cache_ram_mib=server.cache_ram_mib,
                started_at=datetime.now(UTC).isoformat(timespec="seconds"),
                log=str(cache_dir / LOG_FILE),
            )
            write_record(cache_dir, record)
        except BaseException:
            server.stop()
            raise
        server.release()
        return record


def stop_detached(cache_dir: Path, *, grace: float = 10.0) -> Status:
    """Stop the recorded server, wait until its process is gone, and remove the record.

    Returns the status before stopping: ``running`` False when nothing was running.
    """
    with _locked(cache_dir):
        current = _current(cache_dir)
        if current.running and current.record is not None:
            stop_process(current.record.process, grace=grace)
            (cache_dir / STATE_FILE).unlink(missing_ok=True)
            log.info("local_model.stopped", model=current.record.model, pid=current.record.pid)
        return current
