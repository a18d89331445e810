"""No container or session directory outlives its session, however the session ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlmbox import Sandbox, SandboxConfig
from rlmbox.sandbox.reaper import reap_containers, reap_session_dirs

from support.containers import rlmbox_containers
from support.scripted_run import wait_for

pytestmark = pytest.mark.docker


def test_no_container_after_a_normal_session(docker_config):
    with Sandbox(docker_config) as sandbox:
        sandbox.execute("1")
        assert len(rlmbox_containers(docker_config.runtime_dir)) == 1
    assert rlmbox_containers(docker_config.runtime_dir) == []
    assert list(docker_config.runtime_dir.iterdir()) == []


def test_no_container_after_an_exception(docker_config):
    with pytest.raises(RuntimeError, match="boom"), Sandbox(docker_config):
        raise RuntimeError("boom")
    assert rlmbox_containers(docker_config.runtime_dir) == []


def test_no_container_after_a_failed_start(docker_config):
    from rlmbox import ImageMissingError

    missing = docker_config.model_copy(update={"image": "rlmbox-sandbox:does-not-exist"})
    with pytest.raises(ImageMissingError, match="make image"), Sandbox(missing):
        pass
    assert rlmbox_containers(docker_config.runtime_dir) == []
    assert list(docker_config.runtime_dir.iterdir()) == []


def cli(runtime_dir: Path, *args: str, stdin=subprocess.DEVNULL) -> subprocess.Popen:
    env = {"PATH": os.environ["PATH"], "RLMBOX_SANDBOX__RUNTIME_DIR": str(runtime_dir)}
    return subprocess.Popen(
        [sys.executable, "-m", "rlmbox.cli", *args], stdin=stdin, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def kernel_is_up(session: Path) -> bool:
    """The kernel has bound its sockets and the host has pinned them (the cell starts right after)."""
    try:
        ipc = session / "ipc"
        return ipc.stat().st_mode & 0o7777 == 0o755 and any(ipc.glob("k-*"))
    except FileNotFoundError:  # the session directory is still being made, or already removed
        return False


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_no_container_after_ctrl_c_or_sigterm_mid_cell(runtime_dir, tmp_path, sig, code):
    cell = tmp_path / "cell.py"
    cell.write_text("import time\nprint('running', flush=True)\ntime.sleep(120)")
    process = cli(runtime_dir, "exec", str(cell))
    wait_for(lambda: any(kernel_is_up(d) for d in runtime_dir.iterdir()))
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr
    assert rlmbox_containers(runtime_dir) == []
    assert list(runtime_dir.iterdir()) == []


def test_orphans_of_a_killed_process_are_reaped_by_the_next_start(runtime_dir):
    script = textwrap.dedent(f"""
        import time
        from rlmbox import Sandbox, SandboxConfig
        with Sandbox(SandboxConfig(runtime_dir={str(runtime_dir)!r})) as sandbox:
            print("up", flush=True)
            time.sleep(300)
    """)
    orphan_maker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert orphan_maker.stdout.readline().strip() == "up"
    orphan_maker.kill()  # SIGKILL: no cleanup code runs
    orphan_maker.wait(timeout=30)
    assert len(rlmbox_containers(runtime_dir)) == 1
    assert len(list(runtime_dir.iterdir())) == 1
    with Sandbox(SandboxConfig(runtime_dir=runtime_dir)) as sandbox:
        assert sandbox.execute("1").ok
        assert len(rlmbox_containers(runtime_dir)) == 1  # only the new one
    assert rlmbox_containers(runtime_dir) == []
    assert list(runtime_dir.iterdir()) == []


def test_reaper_spares_sessions_of_live_processes(docker_config):
    import docker

    with Sandbox(docker_config):
        client = docker.from_env()
        assert reap_containers(client) == 0
        assert reap_session_dirs(docker_config.runtime_dir) == 0
        assert len(rlmbox_containers(docker_config.runtime_dir)) == 1
        client.close()
