"""What ``rlmbox serve`` adds to a run: a request's time at the client against the run's own time.

    python bench/serve.py [--requests N] [--warm K]

Starts ``rlmbox serve`` as a process (warm pool of K sandboxes) in front of the scripted OpenAI-compatible
server, then sends N sequential one-turn requests through the official ``openai`` client. For each it
records the client's wall time and the run's own ``elapsed_s`` (reported in the response); the difference
is the serving overhead: HTTP, auth, parsing, the warm-pool claim's bookkeeping outside the run, building the
response. The table gives median, min and max.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support.openai_server import ScriptedOpenAIServer  # noqa: E402
from support.scripted_run import repl  # noqa: E402
from support.tree_script import TreeScript  # noqa: E402

TOKEN = "bench-token-0123456789"
ROOT = "openai/bench-root"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--warm", type=int, default=2)
    args = parser.parse_args(argv)
    script = TreeScript({"sum": [repl("FINAL(sum(context))")]})
    with (
        tempfile.TemporaryDirectory(prefix="rlmbox-serve-bench-", dir="/tmp") as scratch,
        ScriptedOpenAIServer(script) as upstream,
    ):
        log = Path(scratch) / "server.log"
        env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/tmp"),
            "OPENAI_API_KEY": "bench",
            "RLMBOX_SANDBOX__RUNTIME_DIR": f"{scratch}/rt",
            "RLMBOX_TRAJECTORY_DIR": f"{scratch}/runs",
        }
        with log.open("w") as stderr:
            server = subprocess.Popen(
                [
                    sys.executable, "-m", "rlmbox.cli", "serve", "--port", "0", "--token", TOKEN,
                    "--model", ROOT, "--api-base", upstream.url, "--warm-sandboxes", str(args.warm),
                ],
                stdout=subprocess.DEVNULL, stderr=stderr, env=env,
            )  # fmt: skip
            try:
                deadline = time.monotonic() + 60
                while "listening on" not in log.read_text():
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"the server did not start:\n{log.read_text()}")
                    time.sleep(0.05)
                url = log.read_text().split("listening on ", 1)[1].split()[0]
                client = openai.OpenAI(base_url=url, api_key=TOKEN, max_retries=0)
                time.sleep(3)  # let the warm pool fill
                walls, runs = [], []
                for index in range(args.requests):
                    started = time.perf_counter()
                    reply = client.chat.completions.create(
                        model=f"rlmbox/{ROOT}",
                        messages=[{"role": "user", "content": "sum"}],
                        extra_body={"context": [index, 1]},
                    )
                    walls.append(time.perf_counter() - started)
                    assert reply.choices[0].message.content == str(index + 1), reply
                    runs.append(reply.model_extra["rlmbox"]["elapsed_s"])
                    time.sleep(0.3)  # the pool starts a replacement in the background
            finally:
                server.terminate()
                server.wait(timeout=60)
    overhead = [(w - r) * 1000 for w, r in zip(walls, runs, strict=True)]
    print(f"{args.requests} sequential one-turn requests, warm pool {args.warm}\n")
    print(f"| {'figure':<34} | {'median':>8} | {'min':>8} | {'max':>8} |")
    print(f"|{'-' * 36}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    for name, values in (
        ("request at the client (ms)", [w * 1000 for w in walls]),
        ("the run itself (ms)", [r * 1000 for r in runs]),
        ("serving overhead (ms)", overhead),
    ):
        print(
            f"| {name:<34} | {statistics.median(values):>8.1f} | {min(values):>8.1f} | {max(values):>8.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
