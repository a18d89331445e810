"""The container as configured: limits as Docker applies them, scratch space, the init. The attacks on it are
the escape suite (tests/test_attack_*.py)."""

from __future__ import annotations

import pytest

from rlmbox import Sandbox

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    import shutil
    import tempfile
    from pathlib import Path

    from rlmbox import SandboxConfig

    runtime_dir = Path(tempfile.mkdtemp(prefix="rbc-", dir="/tmp"))
    config = SandboxConfig(runtime_dir=runtime_dir, cell_timeout_s=30, memory="256m", pids_limit=64)
    with Sandbox(config, context="secret context") as box:
        yield box
    shutil.rmtree(runtime_dir, ignore_errors=True)


def run(sandbox, code: str) -> str:
    cell = sandbox.execute(code)
    assert cell.error is None, cell.error
    return cell.stdout.strip()


def test_tmp_is_writable_but_bounded(sandbox):
    out = run(
        sandbox,
        "import os\nst = os.statvfs('/tmp')\nprint(st.f_blocks * st.f_frsize // 2**20)\n"
        "open('/tmp/ok', 'w').write('fine'); print(open('/tmp/ok').read())",
    )
    size, content = out.splitlines()
    assert int(size) == 256 and content == "fine"


def test_the_launcher_is_pid_1_and_reaps_orphans(sandbox):
    code = """
import os, subprocess, time
subprocess.run(['sh', '-c', 'for i in 1 2 3 4 5; do sleep 0.1 & done'], check=True)
time.sleep(0.6)
states = [open(f'/proc/{p}/stat').read().split(')')[1].split()[0] for p in os.listdir('/proc') if p.isdigit()]
print(open('/proc/1/cmdline').read().split('\\0')[1:3], states.count('Z'))
"""
    assert run(sandbox, code) == "['-m', 'rlmbox_kernel.launch'] 0"


def test_cli_flags_become_the_containers_limits(runtime_dir):
    """Every limit flows from the CLI through Settings into the container Docker actually runs."""
    import docker

    from rlmbox.cli import build_parser, settings_from_args

    args = build_parser().parse_args(
        ["exec", "--memory", "300m", "--cpus", "0.5", "--pids-limit", "50", "--nofile-limit", "200",
         "--tmp-size", "32m", "--home-size", "16m"]
    )  # fmt: skip
    config = settings_from_args(args).sandbox.model_copy(update={"runtime_dir": runtime_dir})
    with Sandbox(config) as box:
        client = docker.from_env()
        (container,) = client.containers.list(
            filters={"label": f"io.rlmbox.session_dir={next(runtime_dir.iterdir())}"}
        )
        host = container.attrs["HostConfig"]
        mounts = box.execute("print(open('/proc/mounts').read())").stdout
        client.close()
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True and host["Privileged"] is False
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["Memory"] == host["MemorySwap"] == 300 * 2**20
    assert host["NanoCpus"] == 500_000_000 and host["PidsLimit"] == 50
    assert {u["Name"]: u["Hard"] for u in host["Ulimits"]} == {"nofile": 200, "core": 0}
    assert not host["Init"]  # the launcher is pid 1 and reaps orphans itself
    assert container.attrs["Config"]["User"] == "10001:10001"
    assert "OMP_NUM_THREADS=1" in container.attrs["Config"]["Env"]
    tmp = next(line for line in mounts.splitlines() if " /tmp " in line)
    assert "size=32768k" in tmp and "noexec" in tmp
