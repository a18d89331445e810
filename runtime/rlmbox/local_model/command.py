"""``rlmbox local-model start|stop|status``: the local model server in the background.

``start`` prints the flags to hand to rlmbox on stdout (``--model openai/NAME --api-base URL``), so
``rlmbox demo $(rlmbox local-model start)`` works; with ``--json`` it prints one JSON object instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Iterator
from types import FrameType

from rlmbox.local_model.detached import ServerRecord, start_detached, status, stop_detached
from rlmbox.local_model.process import DEFAULT_CACHE_RAM_MIB, DEFAULT_CTX_SIZE, default_dir
from rlmbox.local_model.weights import DEFAULT_MODEL, MODELS

__all__ = ["DEFAULT_PORT", "add_local_model_arguments", "local_model_command"]

DEFAULT_PORT = 8322


def add_local_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``start``, ``stop`` and ``status`` actions of ``rlmbox local-model``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    common.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    common.add_argument("--debug", action="store_true", help="debug logs and tracebacks")
    actions = parser.add_subparsers(dest="action", required=True)
    start = actions.add_parser(
        "start", parents=[common], help="start the server in the background and print the flags to use"
    )
    start.add_argument(
        "--model", default=DEFAULT_MODEL, choices=list(MODELS), help=f"default {DEFAULT_MODEL}"
    )
    start.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"on 127.0.0.1 (default {DEFAULT_PORT}; 0 picks a free one)",
    )
    start.add_argument(
        "--ctx-size",
        type=int,
        default=DEFAULT_CTX_SIZE,
        metavar="N",
        help=f"context tokens, shared by the parallel slots (default {DEFAULT_CTX_SIZE})",
    )
    start.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: every core available)")
    start.add_argument(
        "--parallel", type=int, default=1, metavar="N", help="requests decoded at once (default 1)"
    )
    start.add_argument(
        "--no-prompt-cache",
        action="store_true",
        help="compute every prompt afresh: identical requests at temperature 0 then get identical replies",
    )
    start.add_argument(
        "--cache-ram",
        type=int,
        default=DEFAULT_CACHE_RAM_MIB,
        metavar="MIB",
        help="memory for earlier prompts' computed prefixes, so a conversation that comes back to the "
        f"server resumes where it was (default {DEFAULT_CACHE_RAM_MIB}; 0 with --no-prompt-cache)",
    )
    start.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        metavar="S",
        help="seconds to wait until it answers (default 180)",
    )
    actions.add_parser("stop", parents=[common], help="stop the server and wait until it is gone")
    actions.add_parser("status", parents=[common], help="whether it runs: model, URL, pid, memory")


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Let Ctrl-C and SIGTERM interrupt this blocking command at once, so its clean-up runs.

    (The CLI's event loop would only act on them once the command returned.)
    """

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise asyncio.CancelledError  # what the CLI reports as "terminated"

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _describe(record: ServerRecord) -> str:
    return f"{record.model} at {record.api_base} (pid {record.pid}, started {record.started_at})"


def local_model_command(args: argparse.Namespace) -> int:
    """Run one action; returns the exit code (``status``: 0 when running, 1 when not)."""
    cache_dir = default_dir()
    if args.action == "start":
        with _interruptible():
            record = start_detached(
                cache_dir,
                model=args.model,
                port=args.port,
                ctx_size=args.ctx_size,
                threads=args.threads,
                parallel=args.parallel,
                prompt_cache=not args.no_prompt_cache,
                cache_ram_mib=args.cache_ram,
                start_timeout=args.timeout,
            )
        if args.json:
            print(json.dumps(record.to_dict()))
        else:
            print(f"rlmbox local-model: serving {_describe(record)}; log {record.log}", file=sys.stderr)
            print(f"--model {record.litellm_model} --api-base {record.api_base}")
        return 0
    if args.action == "stop":
        with _interruptible():
            before = stop_detached(cache_dir)
        if args.json:
            print(
                json.dumps({"stopped": before.running, "record": before.record and before.record.to_dict()})
            )
        elif before.running and before.record is not None:
            print(f"rlmbox local-model: stopped {_describe(before.record)}", file=sys.stderr)
        else:
            print("rlmbox local-model: no server was running", file=sys.stderr)
        return 0
    now = status(cache_dir)
    if args.json:
        record = now.record and now.record.to_dict()
        print(
            json.dumps(
                {"running": now.running, "stale": now.stale, "rss_bytes": now.rss_bytes, "record": record}
            )
        )
    elif now.running and now.record is not None:
        rss = f"{now.rss_bytes / 2**20:,.0f} MiB" if now.rss_bytes is not None else "unknown"
        print(f"running: {_describe(now.record)}, RSS {rss}")
        print(f"--model {now.record.litellm_model} --api-base {now.record.api_base}")
    elif now.stale and now.record is not None:
        print(f"not running (its process {now.record.pid} is gone; the stale record was removed)")
    else:
        print("not running")
    return 0 if now.running else 1
