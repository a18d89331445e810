"""``rlmbox eval``: build or read the tasks, run them by each method, write and print the summary."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from rlmbox._exceptions import ConfigError
from rlmbox.config import Settings
from rlmbox.evals.loaders import LOADERS, load_dataset
from rlmbox.evals.plot import plot_scores
from rlmbox.evals.recording import CompletionClient, RecordingLMClient
from rlmbox.evals.runner import (
    METHODS,
    EvalResult,
    Method,
    mean_scores,
    run_eval,
    summarize,
    summary_markdown,
)
from rlmbox.evals.suites import SUITES
from rlmbox.evals.tasks import Task, read_tasks, write_tasks
from rlmbox.files import read_regular_file
from rlmbox.llm import LMClient
from rlmbox.progress import Progress, StatusLine

__all__ = ["add_eval_arguments", "eval_command"]


def _lengths(text: str) -> list[int]:
    units = {"k": 1_000, "m": 1_000_000}
    lengths = []
    for raw in text.split(","):
        part = raw.strip().lower()
        scale = units.get(part[-1:], 1)
        number = part[:-1] if scale != 1 else part
        try:
            lengths.append(int(float(number) * scale))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not a length in tokens: {part!r} (e.g. 8k,32k,1m)") from exc
    return lengths


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _methods(text: str) -> list[Method]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"methods are {', '.join(METHODS)}; got {text!r}")
    return methods  # type: ignore[return-value]


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    datasets = "|".join(LOADERS)
    parser.add_argument(
        "--suite",
        required=True,
        metavar="NAME|FILE",
        help=f"{', '.join(SUITES)}; a downloaded dataset as {datasets}:FILE; or a .jsonl task file",
    )
    parser.add_argument("--lengths", type=_lengths, default=[8_000, 32_000], help="tokens, e.g. 8k,32k,1m")
    parser.add_argument("--n", type=_positive, default=5, help="tasks per length (built-in suites)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", type=_methods, default=list(METHODS), help="rlm,base (default both)")
    parser.add_argument("--concurrency", type=_positive, default=2, metavar="K", help="tasks run at once")
    parser.add_argument("--out", type=Path, metavar="DIR", help="results.jsonl, summary.md, trajectories")
    parser.add_argument("--resume", action="store_true", help="skip the tasks already in DIR/results.jsonl")
    parser.add_argument("--cache", type=Path, metavar="DIR", help="record every model call in DIR")
    parser.add_argument("--replay", action="store_true", help="answer only from --cache; fail on a miss")
    parser.add_argument("--min-score", type=float, metavar="X", help="exit 1 when a method scores below X")
    parser.add_argument("--dump", type=Path, metavar="FILE", help="write the suite's tasks as JSONL and stop")


def _load_tasks(args: argparse.Namespace) -> tuple[list[Task], Path]:
    """The tasks and the folder their context paths are relative to (blocking file I/O: off the loop)."""
    if args.suite in SUITES:
        return SUITES[args.suite](args.lengths, args.n, args.seed), Path.cwd()
    name, _, file = args.suite.partition(":")
    if file and name in LOADERS:
        path = Path(file)
        tasks, problems = load_dataset(name, path)
    else:
        path = Path(args.suite)
        if not path.is_file():
            known = ", ".join([*SUITES, *(f"{loader}:FILE" for loader in LOADERS)])
            raise ConfigError(f"--suite {args.suite}: not a suite ({known}) nor a task file")
        try:
            tasks, problems = read_tasks(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read task file {path}: {exc}") from exc
    for problem in problems:
        print(f"rlmbox eval: {path}: {problem} (skipped)", file=sys.stderr)
    if not tasks:
        raise ConfigError(f"{path} holds no usable task")
    return tasks, path.parent


def _client(args: argparse.Namespace, settings: Settings) -> CompletionClient:
    if args.replay and args.cache is None:
        raise ConfigError("--replay needs --cache DIR (the recorded calls)")
    inner = None if args.replay else LMClient(settings.llm)
    if args.cache is None:
        assert inner is not None
        return inner
    params = {"completion_kwargs": settings.llm.completion_kwargs}
    return RecordingLMClient(inner, args.cache, params=params, replay=args.replay)


def _check_same_evaluation(args: argparse.Namespace, settings: Settings) -> None:
    """Record what DIR holds an evaluation of; refuse to resume it as a different one (same task ids,
    other tasks)."""
    manifest = {
        "suite": args.suite,
        "lengths": args.lengths,
        "n": args.n,
        "seed": args.seed,
        "model": settings.llm.model,
        "sub_model": settings.llm.effective_sub_model,
    }
    path = args.out / "evaluation.json"
    if args.resume and path.exists():
        recorded = json.loads(read_regular_file(path))
        changed = sorted(key for key in manifest if recorded.get(key) != manifest[key])
        if changed:
            raise ConfigError(
                f"{args.out} holds another evaluation ({', '.join(changed)} differ): use another --out"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


async def eval_command(args: argparse.Namespace, settings: Settings) -> int:
    tasks, task_dir = await asyncio.to_thread(_load_tasks, args)
    if args.dump is not None:
        count = write_tasks(tasks, args.dump)
        print(f"rlmbox eval: {count} tasks written to {args.dump}", file=sys.stderr)
        return 0
    if args.out is None:
        raise ConfigError("--out DIR is required (where the results go)")
    if any((m or "").startswith("rlmbox-demo/") for m in (settings.llm.model, settings.llm.sub_model)):
        from rlmbox.evals import offline_policy

        offline_policy.register_eval_policies()
        print(f"rlmbox eval: {offline_policy.NOTICE}", file=sys.stderr)
    await asyncio.to_thread(_check_same_evaluation, args, settings)
    total = 0
    finished: list[EvalResult] = []

    def start(count: int) -> None:
        nonlocal total
        total = count
        live.prefix = f"[0/{total} done]"

    live = Progress()
    status = StatusLine(sys.stderr, live.line, plain=args.json or args.verbose or args.debug)

    def progress(result: EvalResult) -> None:
        finished.append(result)
        running = ", ".join(f"{m} {score:.3f}" for m, score in mean_scores(finished).items())
        spend = sum(r.cost_usd for r in finished)
        live.prefix = f"[{len(finished)}/{total} done]"
        outcome = result.status
        if result.status == "error" and result.error:
            outcome += ": " + result.error.splitlines()[0]
        status.print_above(
            f"[{len(finished)}/{total}] {result.id} {result.method}: {result.score:.2f} ({outcome}); "
            f"mean score {running}; spend ${spend:.4f}"
        )

    async with status:
        results = await run_eval(
            tasks,
            task_dir=task_dir,
            methods=args.method,
            settings=settings,
            out=args.out,
            concurrency=args.concurrency,
            lm=_client(args, settings),
            resume=args.resume,
            on_start=start,
            on_result=progress,
            on_event=live,
        )
    rows = summarize(results)
    table = summary_markdown(rows)
    (args.out / "summary.md").write_text(table + "\n", encoding="utf-8")
    (args.out / "summary.json").write_text(json.dumps([r.model_dump() for r in rows], indent=1) + "\n")
    print(json.dumps([r.model_dump() for r in rows]) if args.json else table)
    title = f"{args.suite}: {settings.llm.model}"
    if not plot_scores(rows, args.out / "scores.png", title):
        print("rlmbox eval: no plot (pip install 'rlmbox[plot]' for scores.png)", file=sys.stderr)
    if args.min_score is not None:
        means = mean_scores(results)
        for method in args.method:
            mean = means.get(method, 0.0)
            if mean < args.min_score:
                print(
                    f"rlmbox eval: {method} scored {mean:.3f}, below --min-score {args.min_score}",
                    file=sys.stderr,
                )
                return 1
    return 0
