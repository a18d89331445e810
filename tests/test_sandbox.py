"""One contract for every real sandbox backend: state, context, helpers, time limits, restarts."""

from __future__ import annotations

import asyncio
import json

import pytest

from rlmbox import AsyncSandbox, KernelDiedError, Sandbox, SandboxConfig
from rlmbox.protocol import QueryOutcome

BACKENDS = [pytest.param("docker", marks=pytest.mark.docker), "local"]


@pytest.fixture(params=BACKENDS)
def config(request, runtime_dir) -> SandboxConfig:
    return SandboxConfig(backend=request.param, runtime_dir=runtime_dir, cell_timeout_s=30, memory="512m")


class Upper:
    """A bridge handler answering each prompt with its upper-case form."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.models: list[str | None] = []

    async def llm_query(self, prompts: list[str], model: str | None) -> list[QueryOutcome]:
        self.prompts.extend(prompts)
        self.models.append(model)
        return [
            QueryOutcome(ok=False, error="scripted failure")
            if p == "fail"
            else QueryOutcome(ok=True, text=p.upper())
            for p in prompts
        ]


def test_state_persists_across_cells(config):
    with Sandbox(config) as sandbox:
        assert sandbox.execute("x = 41").ok
        assert sandbox.execute("x += 1").ok
        cell = sandbox.execute("print(x); x * 2")
    assert cell.stdout == "42\n"
    assert cell.result == "84"


def test_text_context_is_loaded(config):
    text = "line one\nline two ünïcode ✓\n" * 1000
    with Sandbox(config, context=text) as sandbox:
        cell = sandbox.execute("print(type(context).__name__, len(context)); context[:8]")
    assert cell.stdout.split() == ["str", str(len(text))]
    assert cell.result == "'line one'"


def test_json_context_is_loaded(config):
    documents = [{"id": i, "text": f"doc {i}"} for i in range(100)]
    with Sandbox(config, context=documents) as sandbox:
        cell = sandbox.execute("print(type(context).__name__, len(context), context[42]['text'])")
    assert cell.stdout.split() == ["list", "100", "doc", "42"]
    with Sandbox(config, context={"a": [1, 2]}) as sandbox:
        assert sandbox.execute("context['a'][1]").result == "2"


def test_fifty_megabyte_context(config):
    text = ("0123456789abcdef" * 64 + "\n") * 48_000  # ~50 MB
    with Sandbox(config, context=text) as sandbox:
        cell = sandbox.execute(
            "import hashlib; len(context), hashlib.sha256(context.encode()).hexdigest()[:16]"
        )
    import hashlib

    assert cell.result == repr((len(text), hashlib.sha256(text.encode()).hexdigest()[:16]))


def test_code_errors_come_back_as_results(config):
    with Sandbox(config) as sandbox:
        cell = sandbox.execute("print('before'); 1 / 0")
        after = sandbox.execute("'still alive'")
    assert cell.stdout == "before\n"
    assert cell.error is not None and cell.error.ename == "ZeroDivisionError"
    assert "1 / 0" in cell.error.traceback and "\x1b[" not in cell.error.traceback
    assert after.result == "'still alive'"


def test_stderr_is_separate(config):
    with Sandbox(config) as sandbox:
        cell = sandbox.execute("import sys; print('out'); print('err', file=sys.stderr)")
    assert (cell.stdout, cell.stderr) == ("out\n", "err\n")


def test_final_and_final_var_from_code(config):
    with Sandbox(config) as sandbox:
        assert sandbox.execute("FINAL('forty-two')").final == "forty-two"
        assert sandbox.execute("answer = {'n': 42}\nFINAL_VAR('answer')").final == '{"n": 42}'
        missing = sandbox.execute("FINAL_VAR('nope')")
    assert missing.final is None and missing.error.ename == "NameError"


def test_show_vars_lists_user_variables_only(config):
    with Sandbox(config, context="abc") as sandbox:
        cell = sandbox.execute("numbers = [1, 2, 3]\n_ = SHOW_VARS()")
    assert "numbers: list, len 3" in cell.stdout
    assert "context: str, len 3" in cell.stdout
    assert "llm_query" not in cell.stdout


def test_llm_query_reaches_the_host_handler(config):
    handler = Upper()

    async def main():
        async with AsyncSandbox(config, handler=handler) as sandbox:
            single = await sandbox.execute("llm_query('hello')")
            batch = await sandbox.execute("r = llm_query_batched(['a', 'fail', 'c']); r")
            kinds = await sandbox.execute("[type(x).__name__ for x in r]")
            failed = await sandbox.execute("llm_query('fail')")
            return single, batch, kinds, failed

    single, batch, kinds, failed = asyncio.run(main())
    assert single.result == "'HELLO'"
    assert batch.result == "['A', '[llm_query failed: scripted failure]', 'C']"
    assert kinds.result == "['str', 'QueryFailed', 'str']"
    assert failed.error.ename == "LLMQueryError" and "scripted failure" in failed.error.evalue
    assert handler.prompts == ["hello", "a", "fail", "c", "fail"]


def test_llm_query_without_a_model_raises_in_the_cell(config):
    with Sandbox(config) as sandbox:
        cell = sandbox.execute("llm_query('hi')")
    assert cell.error.ename == "LLMQueryError" and "no model is configured" in cell.error.evalue


def test_oversize_prompt_is_refused_in_the_kernel(config):
    small = config.model_copy(update={"max_prompt_chars": 100})
    with Sandbox(small, handler=Upper()) as sandbox:
        cell = sandbox.execute("llm_query('x' * 101)")
    assert cell.error.ename == "LLMQueryError" and "100-char limit" in cell.error.evalue


def test_cell_timeout_interrupts_and_the_next_cell_works(config):
    with Sandbox(config) as sandbox:
        sandbox.execute("x = 'kept'")
        cell = sandbox.execute("print('started', flush=True)\nwhile True: pass", timeout=1)
        after = sandbox.execute("x")
    assert cell.timed_out and not cell.kernel_restarted
    assert cell.error.ename == "CellTimeout"
    assert cell.stdout == "started\n"  # output before the limit is kept
    assert after.result == "'kept'"


def test_cell_ignoring_the_interrupt_gets_a_new_kernel(config):
    quick = config.model_copy(update={"interrupt_grace_s": 1.0})
    with Sandbox(quick, context="ctx") as sandbox:
        sandbox.execute("x = 1")
        code = (
            "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: time.sleep(0.01)"
        )
        cell = sandbox.execute(code, timeout=1)
        after = sandbox.execute("context, 'x' in globals()")
    assert cell.timed_out and cell.kernel_restarted
    assert after.result == "('ctx', False)"


def test_kernel_exit_is_reported_and_restart_recovers(config):
    with Sandbox(config, context="ctx") as sandbox:
        with pytest.raises(KernelDiedError) as info:
            sandbox.execute("import os; os._exit(3)")
        assert info.value.oom is False
        with pytest.raises(RuntimeError, match="dead"):
            sandbox.execute("1")
        sandbox.restart()
        assert sandbox.execute("context").result == "'ctx'"


def test_no_host_environment_is_visible(config, monkeypatch):
    monkeypatch.setenv("RLMBOX_TEST_CANARY", "sk-canary-1234567890")
    with Sandbox(config) as sandbox:
        cell = sandbox.execute(
            "import os; sorted(k for k, v in os.environ.items() if 'canary' in (k + v).lower())"
        )
    assert cell.result == "[]"


def test_closing_removes_the_session_directory(config):
    with Sandbox(config) as sandbox:
        sandbox.execute("1")
    assert list(config.runtime_dir.iterdir()) == []


def test_final_answer_is_bounded_at_the_source(config):
    small = config.model_copy(update={"max_final_chars": 10})
    with Sandbox(small) as sandbox:
        cell = sandbox.execute("FINAL('x' * 11)")
    assert cell.final is None and "10-char limit" in cell.error.evalue


def test_output_is_capped_on_the_host(config):
    small = config.model_copy(update={"max_cell_output_bytes": 10_000})
    with Sandbox(small) as sandbox:
        cell = sandbox.execute("for i in range(20000): print('x' * 10)")
    assert len(cell.stdout.encode()) <= 10_000
    assert cell.truncated_bytes > 200_000


def test_json_context_keeps_structure(config):
    data = {"nested": {"list": [1, 2.5, None, True, "s"]}}
    with Sandbox(config, context=data) as sandbox:
        cell = sandbox.execute("import json; print(json.dumps(context, sort_keys=True))")
    assert json.loads(cell.stdout) == data


def test_local_backend_warns_that_it_is_not_isolated(local_config):
    from rlmbox.sandbox.local import UnisolatedBackendWarning

    with pytest.warns(UnisolatedBackendWarning, match="WITHOUT isolation"), Sandbox(local_config) as sandbox:
        assert sandbox.execute("1").ok


def test_displays_results_and_forged_finals_are_capped_on_the_host(config):
    """Output that bypasses print (rich displays, raw iopub messages) still counts against the caps."""
    small = config.model_copy(update={"max_cell_output_bytes": 10_000, "max_final_chars": 100})
    with Sandbox(small) as sandbox:
        many = sandbox.execute(
            "from IPython.display import display\nfor i in range(500): display('y' * 1000)"
        )
        forged = sandbox.execute(
            "from IPython.display import publish_display_data\n"
            "publish_display_data({'application/vnd.rlmbox.final+json': {'answer': 'z' * 10_000}})"
        )
    assert sum(len(d) for d in many.displays) <= 10_000 and many.truncated_bytes > 400_000
    assert forged.final is None and forged.error.ename == "FinalAnswerTooLarge"


def test_malformed_kernel_messages_are_ignored(config):
    """A message with a broken header (sent by hostile code with the session key) cannot crash the host."""
    code = """
import json
from ipykernel.kernelbase import Kernel
kernel = Kernel.instance()
session = kernel.session

def send_raw(msg_type, parent_header, content):
    header = session.msg_header(msg_type)
    parts = [json.dumps(part, default=str).encode() for part in (header, parent_header, {}, content)]
    kernel.iopub_socket.send_multipart([b'<IDS|MSG>', session.sign(parts), *parts])

send_raw('stream', ['not', 'a', 'dict'], {'name': 'stdout', 'text': 'forged'})
send_raw('error', kernel.get_parent()['header'], ['not a dict'])
send_raw('stream', kernel.get_parent()['header'], 'not a dict')
print('done')
"""
    with Sandbox(config) as sandbox:
        cell = sandbox.execute(code)
        after = sandbox.execute("1 + 1")
    assert "done" in cell.stdout and "forged" not in cell.stdout
    assert after.result == "2"


def test_empty_and_non_ascii_text_contexts_load_exactly(config):
    with Sandbox(config, context="") as empty:
        assert empty.execute("context == ''").result == "True"
    text = "naïve café, 東京, emoji 🙂\n" * 1000
    with Sandbox(config, context=text) as sandbox:
        assert sandbox.execute("len(context), context[:26]").result == repr((len(text), text[:26]))
