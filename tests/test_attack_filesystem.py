"""Escape suite, filesystem and secrets: what sandboxed code can write, read and find.

The host's API key and a canary file on the host are planted before each run; code in the sandbox searches
everything it can read for them.
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

import pytest

from support.attacks import run_attack
from support.scripted_run import API_KEY

pytestmark = [pytest.mark.docker, pytest.mark.attack("filesystem")]

EXPECTED_SOCKETS = {"/rlmbox/bridge.sock"}


def test_writes_outside_the_scratch_space_fail(runtime_dir, tmp_path, observe):
    targets = [
        "/x",
        "/etc/passwd",
        "/usr/lib/python3/x.py",
        "/opt/rlmbox/venv/lib/x.py",
        "/rlmbox/context.txt",
        "/rlmbox/new-file",
        "/rlmbox-ipc/x",
        "/proc/sys/kernel/hostname",
        "/sys/fs/cgroup/x",
    ]
    attack = f"""
import errno
results = {{}}
for path in {targets!r}:
    try:
        with open(path, 'a') as handle:
            handle.write('x')
        results[path] = 'WROTE'
    except OSError as e:
        results[path] = errno.errorcode[e.errno]
print('REPORT:', results)
"""
    run = run_attack([attack], runtime_dir, tmp_path)
    results = run.report(0)
    for path in targets:
        assert results[path] in {"EROFS", "EACCES", "EPERM", "ENOENT"}, (path, results[path])
        observe(f"write {path}", results[path])
    assert run.survived and run.leftovers == []


def test_sensitive_files_are_unreadable_or_hold_nothing_of_the_host(runtime_dir, tmp_path, observe):
    attack = """
import errno, os
def read(path, limit=1 << 16):
    try:
        with open(path, 'rb') as handle:
            return handle.read(limit).decode('utf-8', 'replace')
    except OSError as e:
        return errno.errorcode[e.errno]
environ = read('/proc/1/environ')
report = {
    'shadow': read('/etc/shadow'),
    'kcore': read('/proc/kcore', 16),
    'kcore_bytes': len(read('/proc/kcore', 16)),
    'environ_names': sorted(v.split('=')[0] for v in environ.split('\\0') if v),
    'keys': read('/proc/keys'),
    'cgroup_write': None,
    'my_environ': sorted(os.environ),
}
v2 = os.path.exists('/sys/fs/cgroup/cgroup.controllers')
limit_file = '/sys/fs/cgroup/memory.max' if v2 else '/sys/fs/cgroup/memory/memory.limit_in_bytes'
report['cgroup_memory_limit'] = read(limit_file).strip()
tasks_file = '/sys/fs/cgroup/cgroup.procs' if v2 else '/sys/fs/cgroup/pids/tasks'
report['cgroup_tasks'] = len(read(tasks_file).split())
try:
    open(limit_file, 'w').write('max' if v2 else '-1')
except OSError as e:
    report['cgroup_write'] = errno.errorcode[e.errno]
print('REPORT:', report)
"""
    run = run_attack([attack], runtime_dir, tmp_path, sandbox={"memory": "300m"})
    report = run.report(0)
    assert report["shadow"] == "EACCES"
    assert report["kcore"] in {"EACCES", "EPERM", "ENOENT", ""}  # masked by Docker, closed to non-root
    assert report["keys"] in {"EACCES", "", "ENOENT"}
    allowed = {"PATH", "HOME", "HOSTNAME", "LANG", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}
    allowed |= {"IPYTHONDIR", "MPLBACKEND", "PYTHONNOUSERSITE", "VIRTUAL_ENV"}  # set by the image
    allowed |= {"TERM", "PYTHONHASHSEED"}  # set by ipykernel; by rlmbox
    allowed |= {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"}
    assert report["environ_names"] == ["EACCES"]  # the init is not dumpable: its /proc files are closed
    from_host = (set(report["my_environ"]) & set(os.environ)) - allowed  # ipykernel adds a few of its own
    assert not from_host, from_host
    assert report["cgroup_write"] in {"EROFS", "EACCES", "EPERM"}
    # The cgroup view is the container's own: its limit, its few processes, not the host's.
    assert report["cgroup_memory_limit"] == str(300 * 2**20)
    assert report["cgroup_tasks"] < 50
    observe("read /etc/shadow", report["shadow"])
    observe("read /proc/kcore", report["kcore"] or "empty (masked)")
    observe("read /proc/keys", report["keys"] or "empty (masked)")
    observe("read /proc/1/environ", "EACCES (the init is not dumpable)")
    observe("the kernel's own environment", "nothing from the host's (only the image's, limits, ipykernel's)")
    observe("write a cgroup limit", report["cgroup_write"])
    observe("read /sys/fs/cgroup", "the container's own cgroup only (its limit, its processes)")
    assert run.survived


@pytest.mark.attack("secrets")
def test_no_host_path_socket_or_secret_is_reachable(runtime_dir, tmp_path, observe, monkeypatch):
    """Plant the API key in the host's environment and a canary in a host file, then let the sandbox look
    through every file it can read, every process's environment and command line, and every socket."""
    canary = f"host-canary-{secrets.token_hex(8)}"
    (tmp_path / "host-secret.txt").write_text(canary)
    Path(runtime_dir, "host-secret.txt").write_text(canary)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("RLMBOX_CANARY", canary)
    attack = f"""
import os, stat
# Written backwards so that the secrets themselves never appear in the code (which the trajectory keeps).
needles = [{canary[::-1]!r}[::-1].encode(), {API_KEY[::-1]!r}[::-1].encode()]
found, sockets, docker_names, scanned = [], [], [], 0
def scan(path):
    global scanned
    try:
        with open(path, 'rb') as handle:
            data = handle.read(1 << 24)
    except OSError:
        return
    scanned += 1
    found.extend(path for needle in needles if needle in data)
for top in ('/',):
    for root, dirs, files in os.walk(top):
        if root in ('/proc', '/sys', '/dev'):
            dirs[:] = []
            continue
        for name in files + dirs:
            path = os.path.join(root, name)
            if 'docker' in name and name.endswith('.sock'):
                docker_names.append(path)
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                continue
            if stat.S_ISSOCK(mode):
                sockets.append(path)
            elif stat.S_ISREG(mode):
                scan(path)
for pid in os.listdir('/proc'):
    if pid.isdigit():
        for leaf in ('environ', 'cmdline'):
            scan(f'/proc/{{pid}}/{{leaf}}')
mounts = [line.split()[4] for line in open('/proc/self/mountinfo')]
print('REPORT:', {{'found': found, 'sockets': sorted(sockets), 'docker': docker_names, 'scanned': scanned,
                   'mounts': sorted(set(mounts)), 'env': needles[1].decode() in str(os.environ)}})
"""
    run = run_attack([attack], runtime_dir, tmp_path)
    report = run.report(0)
    assert report["found"] == [] and report["env"] is False
    assert report["scanned"] > 1000  # the search really ran over the image
    assert report["docker"] == []
    ipc_sockets = {s for s in report["sockets"] if s.startswith("/rlmbox-ipc/")}
    assert set(report["sockets"]) - ipc_sockets == EXPECTED_SOCKETS and len(ipc_sockets) == 5
    # Host paths appear only as rlmbox's two session mounts and Docker's generated /etc files.
    allowed = {"/", "/tmp", "/home/sandbox", "/rlmbox", "/rlmbox-ipc", "/etc/hosts", "/etc/hostname"}
    allowed.add("/etc/resolv.conf")
    other = {m for m in report["mounts"] if m not in allowed and not m.startswith(("/proc", "/dev", "/sys"))}
    assert other == set(), report["mounts"]
    trajectory = Path(run.result.trajectory).read_text()
    assert API_KEY not in trajectory and API_KEY not in str(run.script.requests)
    assert run.survived and run.leftovers == []
    observe("search every readable file for a host canary", f"not found ({report['scanned']} files read)")
    observe("search files and /proc/*/environ, cmdline for the API key", "not found; not in the trajectory")
    observe("look for the Docker socket", "none anywhere")
    observe("list Unix sockets", "only the session's bridge and the kernel's 5 ipc sockets")
    observe("list mounts", "host paths: only the session's two directories and Docker's /etc files")


def test_a_host_abstract_socket_is_out_of_reach(runtime_dir, tmp_path, observe):
    """Abstract Unix sockets belong to a network namespace: the sandbox has its own."""
    name = f"\0rlmbox-canary-{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(name)
    listener.listen()
    attack = f"""
import errno, socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect({name!r})
    result = 'CONNECTED'
except OSError as e:
    result = errno.errorcode[e.errno]
print('REPORT:', repr(result))
"""
    try:
        run = run_attack([attack], runtime_dir, tmp_path)
    finally:
        listener.close()
    assert run.report(0) == "ECONNREFUSED"
    observe("connect to a host abstract Unix socket", "ECONNREFUSED (own network namespace)")
