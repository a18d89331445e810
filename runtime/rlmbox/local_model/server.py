"""The local model server program: llama.cpp's OpenAI-compatible server (xllamacpp) on 127.0.0.1.

Run by the local-model venv's Python as a script, so it imports only the standard library and xllamacpp::

    python server.py --model-path M.gguf --alias NAME [--port N] [--ctx-size N] [--threads N]
                     [--parallel N] [--no-prompt-cache] [--cache-ram-mib N] [--ready-fd FD] [--lifeline-fd FD]

Once the model is loaded and the server listens, it writes one JSON line ``{"url": "http://127.0.0.1:PORT"}``
to ``--ready-fd`` and closes it (a failed start closes it empty and exits 1). It serves until SIGTERM or
SIGINT, or until ``--lifeline-fd`` reaches end of file (the process holding its other end is gone), then
shuts the server down and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="llama.cpp's OpenAI-compatible server on 127.0.0.1.")
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--alias", required=True, help="the model's name in requests and /v1/models")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--ctx-size", type=int, default=16384, help="context tokens, shared by the slots")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--parallel", type=int, default=1, help="requests decoded at once (slots)")
    parser.add_argument("--no-prompt-cache", action="store_true", help="never reuse a previous prompt's KV")
    parser.add_argument(
        "--cache-ram-mib", type=int, default=0, help="memory for the KV of earlier prompts (0: none)"
    )
    parser.add_argument("--ready-fd", type=int, help="where to write the ready line")
    parser.add_argument("--lifeline-fd", type=int, help="stop when this descriptor reaches end of file")
    return parser.parse_args(argv)


def _watch_lifeline(fd: int) -> None:
    """Block until ``fd`` reaches end of file, then ask the main thread to stop."""
    with os.fdopen(fd, "rb", buffering=0) as lifeline:
        while lifeline.read(4096):
            pass
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    # Blocked before any thread exists, so every server thread inherits the mask and only sigwait below
    # receives them; a signal sent while the model loads waits there and stops the server at once.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    if args.lifeline_fd is not None:
        threading.Thread(target=_watch_lifeline, args=(args.lifeline_fd,), daemon=True).start()
    ready = os.fdopen(args.ready_fd, "w") if args.ready_fd is not None else None

    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model_path
    params.model_alias = {args.alias}
    params.hostnames = ["127.0.0.1"]
    params.port = args.port
    params.n_ctx = args.ctx_size
    params.n_parallel = args.parallel
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.use_jinja = True
    params.cache_prompt = not args.no_prompt_cache  # the default of each request's "cache_prompt"
    # Earlier prompts' KV kept in host memory, to restore into a slot. llama.cpp's default is 8 GiB, and it
    # fills (about 8 MB per 650-token prompt of the 0.5B model) even when cache_prompt is off.
    params.cache_ram_mib = args.cache_ram_mib
    try:
        server = xllamacpp.Server(params)
    except Exception as exc:  # the boundary: the parent reads this line from the log
        print(f"local-model server: cannot start: {exc}", file=sys.stderr, flush=True)
        return 1
    if ready is not None:
        with ready:
            ready.write(json.dumps({"url": server.listening_address}) + "\n")
    received = signal.sigwait(_STOP_SIGNALS)
    print(f"local-model server: {signal.Signals(received).name}, stopping", file=sys.stderr, flush=True)
    del server  # joins the HTTP and decoding threads
    return 0


if __name__ == "__main__":
    sys.exit(main())
