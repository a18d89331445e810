"""The ``rlmbox`` command: run, exec, demo, eval, serve, view, doctor, local-model.

Flags become a ``Settings`` (flags > ``RLMBOX_*`` environment > defaults); expected errors become one line
on stderr and a non-zero exit code, decided in one place (``main``). ``--debug`` adds tracebacks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlmbox import _exceptions
from rlmbox._exceptions import ConfigError, RLMBoxError
from rlmbox.config import VERSION

if TYPE_CHECKING:
    from rlmbox.config import Settings
    from rlmbox.rlm import RunResult

__all__ = ["build_parser", "main"]

EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
EXIT_BUDGET = 5


def _sandbox_flags() -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("sandbox")
    group.add_argument(
        "--backend", choices=["docker", "local"], help="docker (default) or local (NO isolation)"
    )
    group.add_argument("--image", help="sandbox image (default rlmbox-sandbox:VERSION)")
    group.add_argument("--memory", help="memory limit, e.g. 1g (swap is disabled)")
    group.add_argument("--cpus", type=float, help="CPU limit, e.g. 1.5")
    group.add_argument("--pids-limit", type=int, help="most processes and threads in the sandbox")
    group.add_argument("--nofile-limit", type=int, help="most open files in the sandbox")
    group.add_argument("--tmp-size", metavar="SIZE", help="size of the sandbox's /tmp, e.g. 256m")
    group.add_argument("--home-size", metavar="SIZE", help="size of the sandbox's $HOME, e.g. 64m")
    group.add_argument("--cell-timeout", type=float, metavar="S", help="time limit of one cell, in seconds")
    group.add_argument("--start-timeout", type=float, metavar="S", help="time limit for the sandbox to start")
    group.add_argument("--docker-runtime", help="OCI runtime, e.g. runsc (gVisor)")
    flags.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    flags.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    flags.add_argument("--debug", action="store_true", help="debug logs and tracebacks")
    return flags


def _model_flags() -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("models and budget")
    group.add_argument("--model", help="root model, a litellm model string (e.g. openai/gpt-5-mini)")
    group.add_argument("--sub-model", help="model behind llm_query (default: the root model)")
    group.add_argument("--api-base", help="base URL of an OpenAI-compatible server (vLLM, Ollama, ...)")
    group.add_argument("--sub-api-base", metavar="URL", help="the sub-model's base URL (default: --api-base)")
    group.add_argument(
        "--root-window",
        type=int,
        metavar="TOKENS",
        help="the root model's context window, for models litellm does not know (e.g. a local server's)",
    )
    group.add_argument(
        "--sub-window",
        type=int,
        metavar="TOKENS",
        help="the sub-model's context window, for models litellm does not know: sets the chunk size the "
        "prompt recommends",
    )
    group.add_argument("--completion-kwargs", type=json.loads, metavar="JSON", help="extra litellm arguments")
    group.add_argument(
        "--prompt",
        choices=("examples", "brief"),
        help="the root model's system prompt: examples (with worked examples, the default) or brief",
    )
    group.add_argument(
        "--prompt-file",
        type=Path,
        metavar="PATH",
        help="a system prompt of your own: text with $context_summary, $sub_model_note, $chunk_chars, "
        "$max_output_chars and $recursion where rlmbox fills them in ($$ for a dollar sign)",
    )
    group.add_argument("--max-iterations", type=int, metavar="N")
    group.add_argument("--max-sub-calls", type=int, metavar="N")
    group.add_argument("--max-tokens", type=int, metavar="N", help="token budget of the whole run")
    group.add_argument("--max-cost", type=float, metavar="USD", help="cost budget of the whole run")
    group.add_argument("--max-time", type=float, metavar="S", help="wall-clock budget of the whole run")
    group.add_argument(
        "--max-depth",
        type=int,
        metavar="N",
        help="levels of RLMs (default 1): rlm_query starts children below",
    )
    group.add_argument("--max-sandboxes", type=int, metavar="N", help="sandboxes running at once in the tree")
    group.add_argument(
        "--child-share",
        type=float,
        metavar="F",
        help="share of a node's remaining budget its children may take per rlm_query call (default 0.5)",
    )
    group.add_argument(
        "--warm-sandboxes", type=int, metavar="N", help="sandboxes kept started for child RLMs (default 2)"
    )
    group.add_argument("--trajectory", type=Path, metavar="PATH", help="where to write the JSONL trajectory")
    return flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlmbox", description="Recursive Language Models with the model's code locked in a sandbox."
    )
    parser.add_argument("--version", action="version", version=f"rlmbox {VERSION}")
    commands = parser.add_subparsers(dest="command", required=True)
    sandbox, models = _sandbox_flags(), _model_flags()

    run = commands.add_parser("run", parents=[models, sandbox], help="answer a query about a long context")
    run.add_argument("--context", required=True, metavar="PATH", help="text or .json file; - for stdin")
    run.add_argument("--query", required=True, help="the question to answer")

    exec_ = commands.add_parser("exec", parents=[sandbox], help="run code in a fresh sandbox")
    exec_.add_argument(
        "code", nargs="?", default="-", metavar="CODE_FILE", help="file with code; - for stdin"
    )
    exec_.add_argument("--context", metavar="PATH", help="text or .json file loaded as `context`")

    demo = commands.add_parser(
        "demo", parents=[models, sandbox], help="a complete RLM run on a generated document"
    )
    demo.add_argument(
        "--size", type=int, default=2_000_000, metavar="CHARS", help="document size in characters"
    )
    demo.add_argument("--seed", type=int, default=7)

    evaluate = commands.add_parser(
        "eval", parents=[models, sandbox], help="score rlm against a direct call on a suite of tasks"
    )
    from rlmbox.evals.command import add_eval_arguments

    add_eval_arguments(evaluate)

    serve = commands.add_parser(
        "serve", parents=[models, sandbox], help="an RLM behind the OpenAI chat-completions API"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8321, help="port (default 8321; 0 picks a free one)")
    serve.add_argument(
        "--token",
        action="append",
        metavar="T",
        help="a bearer token clients must send (repeatable; also RLMBOX_SERVE_TOKENS, comma-separated; "
        "default: a random one, printed at start)",
    )
    serve.add_argument(
        "--allow-model",
        action="append",
        metavar="M",
        help="a root model clients may name as rlmbox/M (repeatable; default: --model)",
    )
    serve.add_argument("--max-runs", type=int, default=4, help="runs at once; more get 429 (default 4)")
    serve.add_argument("--max-body", default="64m", metavar="SIZE", help="largest request body (default 64m)")
    serve.add_argument(
        "--timeout",
        type=float,
        default=540.0,
        metavar="S",
        help="time limit of one run (default 540, under the openai client's 600 s timeout)",
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="a request's line and headers must arrive within S seconds of the connection's start or of "
        "the previous response on it, else the connection is closed (default 10; so idle keep-alive "
        "connections close after S seconds too)",
    )
    serve.add_argument(
        "--body-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="a request's body must arrive within S seconds of its headers, else 408 (default 60)",
    )
    serve.add_argument(
        "--max-pending",
        type=int,
        default=128,
        metavar="N",
        help="connections open without having sent a valid token yet; past N, the oldest of them is "
        "closed to make room, and clients that sent one are never counted (default 128)",
    )

    view = commands.add_parser("view", help="a trajectory as a self-contained HTML page")
    view.add_argument("trajectory", type=Path, metavar="TRAJECTORY.jsonl")
    view.add_argument("--out", type=Path, metavar="PAGE.html", help="default: the trajectory's name, .html")
    view.add_argument("--open", action="store_true", help="open the page in the default browser")
    view.set_defaults(json=False, verbose=False, debug=False)

    doctor = commands.add_parser(
        "doctor", parents=[sandbox], help="check that this machine can run sandboxes"
    )
    doctor.set_defaults(json=False)

    from rlmbox.local_model.command import add_local_model_arguments

    add_local_model_arguments(
        commands.add_parser("local-model", help="a local model server (make local-model) in the background")
    )
    return parser


def _prompt_template(path: Path | None) -> str | None:
    if path is None:
        return None
    from rlmbox.files import read_regular_file

    try:
        return read_regular_file(path, name=f"--prompt-file {path}").decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read --prompt-file {path}: {exc}") from exc


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Flags that were given override the environment; the rest is left to it."""
    from pydantic import ValidationError

    from rlmbox.config import Settings

    def given(**values: Any) -> dict[str, Any]:
        return {key: value for key, value in values.items() if value is not None}

    get = lambda name: getattr(args, name, None)  # noqa: E731
    sections = {
        "sandbox": given(
            backend=get("backend"),
            image=get("image"),
            memory=get("memory"),
            cpus=get("cpus"),
            pids_limit=get("pids_limit"),
            nofile_limit=get("nofile_limit"),
            tmp_size=get("tmp_size"),
            home_size=get("home_size"),
            cell_timeout_s=get("cell_timeout"),
            start_timeout_s=get("start_timeout"),
            docker_runtime=get("docker_runtime"),
        ),
        "llm": given(
            model=get("model"),
            sub_model=get("sub_model"),
            api_base=get("api_base"),
            sub_api_base=get("sub_api_base"),
            root_window=get("root_window"),
            sub_window=get("sub_window"),
            completion_kwargs=get("completion_kwargs"),
            prompt=get("prompt"),
            prompt_template=_prompt_template(get("prompt_file")),
        ),
        "limits": given(
            max_iterations=get("max_iterations"),
            max_sub_calls=get("max_sub_calls"),
            max_tokens=get("max_tokens"),
            max_cost_usd=get("max_cost"),
            max_wall_s=get("max_time"),
            max_depth=get("max_depth"),
            max_sandboxes=get("max_sandboxes"),
            child_share=get("child_share"),
        ),
    }
    top = given(warm_sandboxes=get("warm_sandboxes"))
    try:
        return Settings(**{name: values for name, values in sections.items() if values}, **top)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"invalid setting {where}: {first['msg']}") from exc


# -- commands ----------------------------------------------------------------------------------------------


async def _run(args: argparse.Namespace) -> int:
    from rlmbox.context_input import load_context
    from rlmbox.progress import Progress, StatusLine
    from rlmbox.rlm import RLM

    settings = settings_from_args(args)
    context = load_context(args.context)
    progress = Progress()
    async with StatusLine(sys.stderr, progress.line, plain=args.json or args.verbose or args.debug):
        result = await RLM(settings).arun(context, args.query, trajectory=args.trajectory, on_event=progress)
    return _report(result, args.json)


async def _demo(args: argparse.Namespace) -> int:
    from rlmbox.demo.haystack import make_haystack
    from rlmbox.rlm import RLM

    settings = settings_from_args(args)
    if settings.llm.model is None:
        from rlmbox.demo.policy import DEMO_NOTICE, DEMO_ROOT_MODEL, DEMO_SUB_MODEL, register_demo_provider

        print(
            "rlmbox demo: no --model or RLMBOX_MODEL given, so the root and sub-model are rlmbox-demo.\n"
            f"  {DEMO_NOTICE}\n"
            "  It is reached through litellm like a model; container, kernel, bridge and sub-calls are real.",
            file=sys.stderr,
        )
        register_demo_provider()
        llm = settings.llm.model_copy(update={"model": DEMO_ROOT_MODEL, "sub_model": DEMO_SUB_MODEL})
        settings = settings.model_copy(update={"llm": llm})
    haystack = make_haystack(args.size, seed=args.seed)
    print(
        f"rlmbox demo: a {len(haystack.text):,}-character document; query: {haystack.query}", file=sys.stderr
    )
    result = await RLM(settings).arun(haystack.text, haystack.query, trajectory=args.trajectory)
    code = _report(result, args.json)
    if not args.json:
        verdict = "correct" if result.answer and haystack.answer in result.answer else "WRONG"
        print(f"expected answer: {haystack.answer} ({verdict})", file=sys.stderr)
    return code


async def _exec(args: argparse.Namespace) -> int:
    from rlmbox.context_input import load_context
    from rlmbox.sandbox import AsyncSandbox

    settings = settings_from_args(args)
    code = _read_code(args.code)
    context = load_context(args.context) if args.context else None
    async with AsyncSandbox(settings.sandbox, context) as sandbox:
        cell = await sandbox.execute(code)
    if args.json:
        from dataclasses import asdict

        print(json.dumps(asdict(cell), ensure_ascii=False))
    else:
        sys.stdout.write(cell.stdout)
        for shown in (*cell.displays, cell.result):
            if shown is not None:
                print(shown)
        sys.stderr.write(cell.stderr)
        if cell.error is not None:
            print(cell.error, file=sys.stderr)
    return 0 if cell.ok else 1


async def _doctor(args: argparse.Namespace) -> int:
    from rlmbox.doctor import run_checks

    checks = await asyncio.to_thread(run_checks, settings_from_args(args))
    for check in checks:
        print(f"[{'ok' if check.ok else 'FAIL'}] {check.name}: {check.detail}")
    return 0 if all(check.ok for check in checks) else 1


async def _eval(args: argparse.Namespace) -> int:
    from rlmbox.evals.command import eval_command

    return await eval_command(args, settings_from_args(args))


async def _view(args: argparse.Namespace) -> int:
    import webbrowser

    from rlmbox.viewer import write_page

    page, skipped = write_page(args.trajectory, args.out)
    if skipped:
        print(f"rlmbox view: {skipped} unreadable line(s) skipped (a run cut short?)", file=sys.stderr)
    print(page)
    if args.open:
        webbrowser.open(page.absolute().as_uri())
    return 0


async def _serve(args: argparse.Namespace) -> int:
    import os
    import secrets

    from pydantic import ValidationError

    from rlmbox.config import parse_size
    from rlmbox.server import ServeOptions, serve

    settings = settings_from_args(args)
    tokens = list(args.token or []) + [
        t.strip() for t in os.environ.get("RLMBOX_SERVE_TOKENS", "").split(",") if t.strip()
    ]
    if not tokens:
        tokens = [secrets.token_urlsafe(24)]
        print(f"rlmbox serve: no --token given; clients must send this one: {tokens[0]}", file=sys.stderr)
    models = set(args.allow_model or []) | ({settings.llm.model} if settings.llm.model else set())
    if not models:
        raise ConfigError(
            "rlmbox serve needs a root model: --model or --allow-model (e.g. openai/gpt-5-mini)"
        )
    try:
        options = ServeOptions(
            tokens=frozenset(tokens),
            models=frozenset(models),
            max_runs=args.max_runs,
            max_body_bytes=parse_size(args.max_body),
            timeout_s=args.timeout,
            header_timeout_s=args.header_timeout,
            body_timeout_s=args.body_timeout,
            max_pending=args.max_pending,
        )
    except (ValidationError, ValueError) as exc:
        raise ConfigError(f"invalid serve option: {exc}") from exc

    def ready(url: str) -> None:
        served = ", ".join(f"rlmbox/{m}" for m in sorted(models))
        print(f"rlmbox serve: listening on {url}/v1 (models: {served})", file=sys.stderr, flush=True)

    try:
        await serve(settings, options, args.host, args.port, ready)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {exc}") from exc
    return 0


async def _local_model(args: argparse.Namespace) -> int:
    from rlmbox.local_model.command import local_model_command

    return local_model_command(args)  # blocking on purpose: nothing else runs on this loop


COMMANDS = {
    "run": _run,
    "exec": _exec,
    "demo": _demo,
    "eval": _eval,
    "serve": _serve,
    "view": _view,
    "doctor": _doctor,
    "local-model": _local_model,
}


def _read_code(source: str) -> str:
    try:
        return sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"code file {source} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read code file {source}: {exc}") from exc


def _report(result: RunResult, as_json: bool) -> int:
    if as_json:
        print(result.model_dump_json())
    else:
        if result.answer is not None:
            print(result.answer, flush=True)
        tokens = sum(u.prompt_tokens + u.completion_tokens for u in result.usage.values())
        tree = result.tree
        nodes = (
            f"nodes: {tree.node_count} (depth {tree.depth_reached}, {tree.peak_sandboxes} sandboxes at once)"
            if tree.node_count > 1
            else ""
        )
        print(
            f"status: {result.status}  {nodes + '  ' if nodes else ''}iterations: {result.iterations}  "
            f"sub-calls: {result.sub_calls}  tokens: {tokens:,}  cost: ${result.cost_usd:.4f}  "
            f"time: {result.elapsed_s:.1f}s\n"
            f"trajectory: {result.trajectory}",
            file=sys.stderr,
        )
        if result.error:
            print(f"rlmbox: {result.status}: {result.error}", file=sys.stderr)
    if result.status == "completed":
        return 0
    if result.status == "budget_exhausted":
        return EXIT_BUDGET
    error_class = getattr(_exceptions, result.error_type or "", RLMBoxError)
    return getattr(error_class, "exit_code", 1)


# -- entry point -------------------------------------------------------------------------------------------


async def _main_task(coroutine: Coroutine[Any, Any, int]) -> int:
    task = asyncio.ensure_future(coroutine)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await task
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rlmbox.log import configure_logging

    configure_logging(logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING)
    try:
        return asyncio.run(_main_task(COMMANDS[args.command](args)))
    except KeyboardInterrupt:
        print("rlmbox: interrupted; the sandbox was removed", file=sys.stderr)
        return EXIT_INTERRUPTED
    except asyncio.CancelledError:
        print("rlmbox: terminated; the sandbox was removed", file=sys.stderr)
        return EXIT_TERMINATED
    except RLMBoxError as exc:
        if args.debug:
            raise
        print(f"rlmbox: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
