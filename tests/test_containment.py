"""The container's hardening, checked by running attacks in it (the full escape suite grows from here)."""

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


def test_only_loopback_exists(sandbox):
    assert run(sandbox, "import socket; print(sorted(n for _, n in socket.if_nameindex()))") == "['lo']"


@pytest.mark.parametrize(
    "target",
    ["socket.create_connection(('1.1.1.1', 53), timeout=2)", "socket.getaddrinfo('example.com', 443)"],
)
def test_egress_fails(sandbox, target):
    code = f"""
import socket
try:
    {target}
    print('CONNECTED')
except OSError as e:
    print(type(e).__name__)
"""
    out = run(sandbox, code)
    assert out != "CONNECTED"


def test_runs_as_non_root_without_capabilities(sandbox):
    out = run(sandbox, "import os; print(os.getuid(), os.getgid())\nprint(open('/proc/self/status').read())")
    assert out.splitlines()[0] == "10001 10001"
    caps = {line.split(":")[0]: line.split()[1] for line in out.splitlines() if line.startswith("Cap")}
    assert caps["CapEff"] == caps["CapPrm"] == caps["CapBnd"] == "0000000000000000"
    assert "NoNewPrivs:\t1" in out


@pytest.mark.parametrize("path", ["/etc/passwd", "/usr/bin/x", "/x", "/rlmbox/context.txt", "/rlmbox/evil"])
def test_root_and_context_mount_are_read_only(sandbox, path):
    code = f"""
try:
    open({path!r}, 'a').write('x')
    print('WROTE')
except OSError as e:
    print(e.errno)
"""
    out = run(sandbox, code)
    assert out in {"30", "13"}  # EROFS or EACCES


def test_kernel_sockets_are_pinned(sandbox):
    """Sandboxed code must not be able to swap a kernel socket for a symlink to a host socket."""
    code = """
import os
results = []
for action in (
    lambda: os.unlink('/rlmbox-ipc/k-1'),
    lambda: os.rename('/rlmbox-ipc/k-1', '/rlmbox-ipc/x'),
    lambda: os.symlink('/var/run/docker.sock', '/rlmbox-ipc/k-9'),
):
    try:
        action()
        results.append('DONE')
    except OSError as e:
        results.append(e.errno)
print(results)
"""
    assert run(sandbox, code) == "[13, 13, 13]"


def test_no_docker_socket_and_no_host_paths(sandbox):
    code = (
        "import os\nprint([p for p in ('/var/run/docker.sock', '/run/docker.sock', '/host', '/root/.ssh')"
        " if os.path.exists(p)])"
    )
    assert run(sandbox, code) == "[]"


def test_tmp_is_writable_but_bounded(sandbox):
    out = run(
        sandbox,
        "import os\nst = os.statvfs('/tmp')\nprint(st.f_blocks * st.f_frsize // 2**20)\n"
        "open('/tmp/ok', 'w').write('fine'); print(open('/tmp/ok').read())",
    )
    size, content = out.splitlines()
    assert int(size) == 256 and content == "fine"


def test_setuid_binaries_are_gone(sandbox):
    code = """
import os, stat
found = []
for top in ('/usr/bin', '/bin', '/usr/sbin', '/sbin', '/usr/lib'):
    for root, _, files in os.walk(top):
        for name in files:
            try:
                mode = os.lstat(os.path.join(root, name)).st_mode
            except OSError:
                continue
            if mode & (stat.S_ISUID | stat.S_ISGID):
                found.append(os.path.join(root, name))
print(found)
"""
    assert run(sandbox, code) == "[]"


def test_memory_limit_kills_and_is_reported_as_oom(docker_config):
    from rlmbox import KernelDiedError, SandboxConfig

    small = SandboxConfig(runtime_dir=docker_config.runtime_dir, memory="128m")
    with Sandbox(small, context="kept") as box:
        with pytest.raises(KernelDiedError, match="out of memory") as info:
            box.execute("blocks = []\nwhile True: blocks.append(bytearray(16 * 2**20))")
        assert info.value.oom
        box.restart()
        assert box.execute("context").result == "'kept'"


def test_pids_limit_contains_a_fork_bomb(docker_config):
    from rlmbox import SandboxConfig

    config = SandboxConfig(runtime_dir=docker_config.runtime_dir, pids_limit=32, cell_timeout_s=20)
    with Sandbox(config) as box:
        cell = box.execute("""
import subprocess
procs = []
try:
    for _ in range(200):
        procs.append(subprocess.Popen(['sleep', '30']))
except OSError as e:
    print('refused', e.errno)
print(len(procs))
for p in procs:
    p.kill()
""")
        lines = cell.stdout.split()
        assert lines[0] == "refused" and int(lines[-1]) < 32
        assert box.execute("1 + 1").result == "2"


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
    assert host["Init"] is True
    assert container.attrs["Config"]["User"] == "10001:10001"
    assert "OMP_NUM_THREADS=1" in container.attrs["Config"]["Env"]
    tmp = next(line for line in mounts.splitlines() if " /tmp " in line)
    assert "size=32768k" in tmp and "noexec" in tmp
