"""Call-tree benchmark: a depth-3 RLM run with batched children, end to end, on this machine.

    python bench/tree.py [--runs N] [--fan-out B] [--model-delay S] [--max-sandboxes K] [--json PATH]

Each run is ``RLM(settings).arun(...)`` with ``max_depth=3``: the root hands B parts of its context to B child
RLMs at once (``rlm_query_batched``), each child does the same with B grandchildren, and each grandchild
answers with one sub-model call (``rlm_query`` at the depth limit). That is 1 + B + B^2 nodes, each on its
own sandbox, all on one budget. The models are scripted and reached over HTTP through litellm, answering
after ``--model-delay`` seconds, so the figures are rlmbox's own cost plus that latency.

Per run it reports the wall time, the nodes, the containers started and the most running at once. The last
two are counted on the Docker engine itself (polled every 25 ms, warm-pool sandboxes included), next to the
tree's own count of sandboxes held by nodes. The table gives median, min and max over the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import docker

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from rlmbox import RLM, Settings  # noqa: E402
from rlmbox.llm import load_litellm  # noqa: E402

from support.openai_server import Reply, ScriptedOpenAIServer  # noqa: E402
from support.tree_script import TreeScript  # noqa: E402

ROOT, SUB = "openai/bench-root", "openai/bench-sub"
CONTEXT = list(range(1, 10_001))


def script(fan_out: int, delay_s: float) -> TreeScript:
    def code(text: str) -> Reply:
        return Reply(text=f"```repl\n{text}\n```", delay_s=delay_s)

    def split(name: str) -> str:
        return (
            f"[f'{name} {{i}}' for i in range({fan_out})], [context[i::{fan_out}] for i in range({fan_out})]"
        )

    total = "sum(map(int, parts))"
    return TreeScript(
        {
            "top": [code(f"parts = rlm_query_batched({split('branch')})\nFINAL({total})")],
            "branch": [code(f"parts = rlm_query_batched({split('leaf')})\nFINAL(str({total}))")],
            "leaf": [code("FINAL(rlm_query(f'echo {sum(context)}'))")],
        },
        sub=lambda request: Reply(
            text=request["messages"][-1]["content"].split("echo ", 1)[-1], delay_s=delay_s
        ),
    )


class ContainerWatch:
    """Polls the engine for the rlmbox containers under one runtime directory: every id seen, and the most
    running at once."""

    def __init__(self, runtime_dir: Path) -> None:
        self.runtime_dir = f"{runtime_dir}/"
        self.seen: set[str] = set()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> ContainerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        client = docker.from_env()
        try:
            while not self._stop.wait(0.025):
                running = [
                    c.id
                    for c in client.containers.list(sparse=True, filters={"label": "io.rlmbox.session"})
                    if (c.attrs.get("Labels") or {})
                    .get("io.rlmbox.session_dir", "")
                    .startswith(self.runtime_dir)
                ]
                self.seen.update(running)
                self.peak = max(self.peak, len(running))
        finally:
            client.close()


def one_run(
    args: argparse.Namespace, server: ScriptedOpenAIServer, scratch: Path, index: int
) -> dict[str, Any]:
    runtime_dir = scratch / f"r{index}"
    settings = Settings(
        llm={
            "model": ROOT,
            "sub_model": SUB,
            "api_base": server.url,
            "api_key": "bench",
            "max_concurrency": 16,
        },
        sandbox={"runtime_dir": runtime_dir, "memory": "256m"},
        limits={"max_depth": 3, "max_sandboxes": args.max_sandboxes, "max_iterations": 1000},
        warm_sandboxes=args.warm,
        trajectory_dir=scratch / "runs",
    )
    with ContainerWatch(runtime_dir) as watch:
        started = time.perf_counter()
        result = asyncio.run(RLM(settings).arun(CONTEXT, "top"))
        wall = time.perf_counter() - started
    if result.status != "completed" or result.answer != str(sum(CONTEXT)):
        raise SystemExit(f"run {index} failed: {result.status} {result.answer!r} {result.error}")
    tree = result.tree
    return {
        "wall_s": wall,
        "nodes": tree.node_count,
        "depth": tree.depth_reached,
        "containers_started": len(watch.seen),
        "peak_containers": watch.peak,
        "peak_sandboxes_held": tree.peak_sandboxes,
        "sandboxes_started_reported": tree.sandboxes_started,
        "warm_claims": tree.warm_claims,
        "model_calls": sum(u.calls for u in result.usage.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--fan-out", type=int, default=4, help="children per node above the last level")
    parser.add_argument("--model-delay", type=float, default=0.0, help="seconds each model reply takes")
    parser.add_argument("--max-sandboxes", type=int, default=8)
    parser.add_argument("--warm", type=int, default=2, help="warm sandboxes kept for children")
    parser.add_argument("--json", type=Path, help="write every sample here")
    args = parser.parse_args(argv)
    load_litellm()  # imported once, outside the timings
    samples: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="rlmbox-tree-", dir="/tmp") as scratch,
        ScriptedOpenAIServer(script(args.fan_out, args.model_delay)) as server,
    ):
        for index in range(1, args.runs + 1):
            samples.append(one_run(args, server, Path(scratch), index))
            print(f"[run {index}/{args.runs}] {samples[-1]['wall_s']:.2f}s", file=sys.stderr)
    print(
        f"depth 3, fan-out {args.fan_out}, max_sandboxes {args.max_sandboxes}, warm {args.warm}, "
        f"model delay {args.model_delay:g}s, {args.runs} runs\n"
    )
    print(f"| {'figure':<28} | {'median':>8} | {'min':>8} | {'max':>8} |")
    print(f"|{'-' * 30}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        cells = [f"{statistics.median(values):.2f}", f"{min(values):.2f}", f"{max(values):.2f}"]
        if key != "wall_s":
            cells = [f"{float(c):g}" for c in cells]
        print(f"| {key:<28} | {cells[0]:>8} | {cells[1]:>8} | {cells[2]:>8} |")
    if args.json:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "samples": samples})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
