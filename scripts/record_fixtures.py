"""Record the real-model evaluations that tests/test_recorded_runs.py replays offline (make record-fixtures).

Runs each evaluation of RUNS with Qwen2.5-Coder 0.5B on llama.cpp (prompt cache off, temperature 0), every
model call recorded with --cache, and writes into tests/fixtures/recorded/:

- cache/: the recorded calls (one JSON file per call, named by the hash of model, messages and parameters);
- runs.json: the model and the eval arguments of each run, which the test replays;
- RUN/results.jsonl: what each run gave, which the replay must give again.

A change to prompts or parsing that alters what the model reads misses the recording: the test fails until
the recording is made again with this script, on purpose. A change that alters only what a run gives from
the same calls (how an answer is read, say) takes ``--replay``: the results again, from the recorded calls.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from rlmbox.local_model import LocalModelServer

MODEL = "qwen2.5-coder-0.5b"
WINDOW = 2048
COMMON = [
    "--root-window", str(WINDOW), "--sub-window", str(WINDOW),
    "--completion-kwargs", json.dumps({"temperature": 0, "max_tokens": 400}),
    "--max-iterations", "8", "--concurrency", "1",
]  # fmt: skip
RUNS = {
    "sniah-examples": ["--suite", "sniah", "--lengths", "512,2k", "--n", "2", "--method", "rlm,base"],
    "sniah-brief": ["--suite", "sniah", "--lengths", "512", "--n", "2", "--method", "rlm", "--prompt=brief"],
    "oolong-examples": ["--suite", "oolong", "--lengths", "512", "--n", "2", "--method", "rlm,base"],
}
FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "recorded"


def main() -> int:
    # SIGTERM ends the run like Ctrl-C: the eval in progress is killed and the server stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    replay = sys.argv[1:] == ["--replay"]
    with tempfile.TemporaryDirectory(prefix="rlmbox-record-") as scratch:
        work = Path(scratch)
        if replay:  # the results again from the recorded calls
            evaluate(["--replay"], FIXTURE / "cache", work)
        else:
            with LocalModelServer(MODEL, ctx_size=WINDOW, prompt_cache=False) as server:
                evaluate(["--api-base", server.api_base], work / "cache", work)
            if FIXTURE.exists():
                shutil.rmtree(FIXTURE)
            shutil.copytree(work / "cache", FIXTURE / "cache")
        for name in RUNS:
            (FIXTURE / name).mkdir(exist_ok=True)
            shutil.copy(work / name / "results.jsonl", FIXTURE / name / "results.jsonl")
        runs = {"model": f"openai/{MODEL}", "common": COMMON, "runs": RUNS}
        (FIXTURE / "runs.json").write_text(json.dumps(runs, indent=1) + "\n", encoding="utf-8")
    size = sum(path.stat().st_size for path in FIXTURE.rglob("*") if path.is_file())
    print(f"record-fixtures: {FIXTURE} holds {size / 1e6:.2f} MB", file=sys.stderr)
    return 0


def evaluate(flags: list[str], cache: Path, work: Path) -> None:
    """Each evaluation of RUNS, its calls in ``cache``, its results in ``work``/NAME."""
    for name, args in RUNS.items():
        command = [
            sys.executable, "-m", "rlmbox.cli", "eval", "--model", f"openai/{MODEL}", *flags,
            *COMMON, *args, "--cache", str(cache), "--out", str(work / name),
        ]  # fmt: skip
        print("record-fixtures:", " ".join(command[3:]), file=sys.stderr)
        subprocess.run(command, check=True, env={**os.environ, "RLMBOX_API_KEY": "local"})


if __name__ == "__main__":
    sys.exit(main())
