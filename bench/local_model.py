"""The local models' speed and memory on this machine: prompt and generation tokens/s, and the server's RSS.

    python bench/local_model.py [--models a,b] [--runs N] [--prompt-chars N] [--generate N] [--threads N]
                                [--ctx-size N] [--download] [--json PATH]

For each model (default: all), starts ``LocalModelServer`` (prompt cache off, so every run processes its
whole prompt), sends one warm-up request, then ``--runs`` chat completions of a generated document of
``--prompt-chars`` characters (about four per token) asking for a summary, generating exactly
``--generate`` tokens (``ignore_eos``). Speeds come from the ``timings`` llama.cpp returns with each
response (else from the token counts and the request's wall time). The table gives median, min and max;
RSS is the server's after loading and its peak (VmHWM) at the end; start is the time until it answered.
``--download`` also times downloading and assembling each model into a scratch folder (network-bound).
The load average is printed before and after each model: the figures halve when the other core is busy.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from rlmbox.demo.haystack import make_haystack
from rlmbox.local_model import MODELS, LocalModelServer, ProcessId, default_dir
from rlmbox.local_model.weights import download_and_assemble
from rlmbox.log import configure_logging

REPO = Path(__file__).resolve().parent.parent


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _peak_rss(process: ProcessId) -> int:
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _ask(client: httpx.Client, api_base: str, model: str, prompt: str, generate: int) -> dict[str, float]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"{prompt}\n\nSummarise the document above in detail."}],
        "temperature": 0,
        "max_tokens": generate,
        "ignore_eos": True,
    }
    started = time.perf_counter()
    reply = client.post(f"{api_base}/chat/completions", json=body).raise_for_status().json()
    wall = time.perf_counter() - started
    usage, timings = reply["usage"], reply.get("timings")
    if timings:
        return {
            "prompt_tokens": timings["prompt_n"],
            "prompt_tps": timings["prompt_per_second"],
            "generated_tokens": timings["predicted_n"],
            "generate_tps": timings["predicted_per_second"],
            "wall_s": wall,
        }
    return {  # no timings: the whole request's time is charged to both phases, so these are lower bounds
        "prompt_tokens": usage["prompt_tokens"],
        "prompt_tps": usage["prompt_tokens"] / wall,
        "generated_tokens": usage["completion_tokens"],
        "generate_tps": usage["completion_tokens"] / wall,
        "wall_s": wall,
    }


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    prompt = make_haystack(args.prompt_chars, seed=3).text
    result: dict[str, Any] = {"model": name, "load_before": _loadavg()}
    started = time.perf_counter()
    with (
        LocalModelServer(
            name, ctx_size=args.ctx_size, threads=args.threads, prompt_cache=False, start_timeout=600
        ) as server,
        httpx.Client(timeout=600, trust_env=False) as client,
    ):
        result["start_s"] = time.perf_counter() - started
        result["rss_loaded"] = server.process.rss_bytes()
        _ask(client, server.api_base, name, prompt, 8)  # warm-up: pages the weights in
        runs = []
        for index in range(args.runs):
            runs.append(_ask(client, server.api_base, name, prompt, args.generate))
            print(
                f"{name} run {index + 1}/{args.runs}: prompt {runs[-1]['prompt_tps']:.1f} tok/s "
                f"({runs[-1]['prompt_tokens']} tokens), generation {runs[-1]['generate_tps']:.1f} tok/s",
                file=sys.stderr,
            )
        result["rss_peak"] = _peak_rss(server.process)
    result["runs"] = runs
    result["load_after"] = _loadavg()
    return result


def time_download(name: str) -> float:
    with tempfile.TemporaryDirectory(prefix="rlmbox-bench-model-", dir=default_dir()) as scratch:
        started = time.perf_counter()
        download_and_assemble(MODELS[name], Path(scratch))
        return time.perf_counter() - started


def _spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated (default: all)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prompt-chars", type=int, default=4000, help="about 1,000 tokens (default 4000)")
    parser.add_argument("--generate", type=int, default=128, help="tokens generated per run (default 128)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ctx-size", type=int, default=16384, help="the server's context (default 16384)")
    parser.add_argument("--download", action="store_true", help="also time download and assembly")
    parser.add_argument("--json", type=Path, help="default bench/results/local-model-<timestamp>.json")
    args = parser.parse_args(argv)
    configure_logging(logging.WARNING)
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODELS]
    if unknown:
        parser.error(f"unknown model {', '.join(unknown)}; known: {', '.join(MODELS)}")

    results = []
    for name in names:
        print(f"{name}: load average {_loadavg()}", file=sys.stderr)
        result = bench_model(name, args)
        if args.download:
            result["download_s"] = time_download(name)
        results.append(result)

    print(
        f"\n{args.threads} threads, context {args.ctx_size}, prompt cache off, {args.runs} runs "
        f"(median (min-max)); {args.generate} tokens generated per run\n"
    )
    header = "| model | prompt tokens | prompt tok/s | generation tok/s | start | RSS loaded | RSS peak |"
    if args.download:
        header += " download + assembly |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for result in results:
        runs = result["runs"]
        row = (
            f"| {result['model']} | {runs[0]['prompt_tokens']} | "
            f"{_spread([r['prompt_tps'] for r in runs], '.1f')} | "
            f"{_spread([r['generate_tps'] for r in runs], '.1f')} | {result['start_s']:.1f} s | "
            f"{result['rss_loaded'] / 2**30:.2f} GiB | {result['rss_peak'] / 2**30:.2f} GiB |"
        )
        if args.download:
            row += f" {result['download_s']:.0f} s |"
        print(row)
    print("\nload average (1, 5, 15 min) before / after:")
    for result in results:
        print(f"  {result['model']}: {result['load_before']} / {result['load_after']}")

    target = args.json or REPO / "bench" / "results" / f"local-model-{time.strftime('%Y%m%d-%H%M%S')}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"args": vars(args) | {"json": str(target)}, "results": results}, indent=1))
    print(f"\nsamples: {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
