"""The command line: one clear line and a distinct exit code for each kind of bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support.cli import assert_one_line_error, rlmbox


def test_help_does_not_import_litellm():
    code = "import sys; from rlmbox.cli import build_parser; build_parser(); print('litellm' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    assert rlmbox("--help").returncode == 0


def test_missing_context_file(tmp_path):
    done = rlmbox("run", "--context", str(tmp_path / "nope.txt"), "--query", "q", "--model", "openai/x")
    assert_one_line_error(done, 2, "nope.txt", "does not exist")


def test_non_utf8_context(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    done = rlmbox("run", "--context", str(bad), "--query", "q", "--model", "openai/x")
    assert_one_line_error(done, 2, "not valid UTF-8", "offset 3")


def test_malformed_json_context(tmp_path):
    bad = tmp_path / "docs.json"
    bad.write_text('["unclosed"')
    done = rlmbox("run", "--context", str(bad), "--query", "q", "--model", "openai/x")
    assert_one_line_error(done, 2, "not valid JSON")


def test_context_that_is_a_directory(tmp_path):
    done = rlmbox("exec", "--context", str(tmp_path), stdin="1")
    assert_one_line_error(done, 2, "is a directory")


def test_invalid_setting():
    done = rlmbox("exec", "--memory", "lots", stdin="1")
    assert_one_line_error(done, 2, "sandbox.memory")


def test_no_model_given(tmp_path):
    context = tmp_path / "c.txt"
    context.write_text("x")
    done = rlmbox("run", "--context", str(context), "--query", "q")
    assert_one_line_error(done, 2, "no root model", "RLMBOX_MODEL")


def test_docker_daemon_unreachable(tmp_path):
    env = {
        "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock",
        "RLMBOX_SANDBOX__RUNTIME_DIR": str(tmp_path / "r"),
    }
    done = rlmbox("exec", env=env, stdin="print(1)")
    assert_one_line_error(done, 3, "cannot reach the Docker daemon", "start it")


def test_doctor_reports_an_unreachable_daemon(tmp_path):
    env = {
        "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock",
        "RLMBOX_SANDBOX__RUNTIME_DIR": str(tmp_path / "r"),
    }
    done = rlmbox("doctor", env=env)
    assert done.returncode == 1
    assert "[FAIL] docker: cannot reach the Docker daemon" in done.stdout
    assert "[ok] runtime dir" in done.stdout


@pytest.mark.docker
def test_missing_image_says_how_to_build_it(runtime_dir):
    done = rlmbox(
        "exec",
        "--image",
        "rlmbox-sandbox:not-built",
        env={"RLMBOX_SANDBOX__RUNTIME_DIR": str(runtime_dir)},
        stdin="1",
    )
    assert_one_line_error(done, 3, "rlmbox-sandbox:not-built", "make image")


@pytest.mark.docker
def test_doctor_passes_on_a_ready_machine(runtime_dir):
    done = rlmbox("doctor", env={"RLMBOX_SANDBOX__RUNTIME_DIR": str(runtime_dir)})
    assert done.returncode == 0, done.stdout
    assert "[ok] image: rlmbox-sandbox:" in done.stdout


def test_local_backend_warns_on_stderr(runtime_dir: Path):
    done = rlmbox(
        "exec",
        "--backend",
        "local",
        env={"RLMBOX_SANDBOX__RUNTIME_DIR": str(runtime_dir)},
        stdin="print(6*7)",
    )
    assert done.returncode == 0 and done.stdout == "42\n"
    assert "WITHOUT isolation" in done.stderr


def test_serve_refuses_a_short_token_before_listening():
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlmbox.cli",
            "serve",
            "--token",
            "short",
            "--model",
            "openai/m",
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert process.returncode == 2 and "16 or more characters" in process.stderr
    assert "listening" not in process.stderr
