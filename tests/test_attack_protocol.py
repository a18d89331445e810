"""Escape suite, protocol: a kernel that lies on its Jupyter channels, or breaks them.

The kernel holds the session's signing key, so it can sign anything: the host must treat every message as
untrusted bytes, attribute output only to the request that asked for it, and replace a kernel that breaks
the protocol.
"""

from __future__ import annotations

import pytest

from support.attacks import run_attack
from support.host import peak_rss, reset_peak_rss, rss

pytestmark = [pytest.mark.docker, pytest.mark.attack("protocol")]

FORGE = """
import json
kernel = get_ipython().kernel
session = kernel.session
parent = kernel.get_parent()['header']
other = dict(parent, msg_id='not-this-cell')

def send(msg_type, parent_header, content):
    type(session).send(session, kernel.iopub_socket, msg_type, content, parent=parent_header)
"""


def test_the_kernel_sockets_cannot_be_swapped(runtime_dir, tmp_path, observe):
    attack = """
import errno, os
results = {}
for name, action in {
    'unlink a kernel socket': lambda: os.unlink('/rlmbox-ipc/k-1'),
    'rename a kernel socket': lambda: os.rename('/rlmbox-ipc/k-1', '/rlmbox-ipc/x'),
    'symlink a host socket in': lambda: os.symlink('/var/run/docker.sock', '/rlmbox-ipc/k-9'),
    'chmod the ipc directory': lambda: os.chmod('/rlmbox-ipc', 0o777),
    'replace the bridge socket': lambda: os.unlink('/rlmbox/bridge.sock'),
}.items():
    try:
        action()
        results[name] = 'DONE'
    except OSError as e:
        results[name] = errno.errorcode[e.errno]
print('REPORT:', results)
"""
    run = run_attack([attack], runtime_dir, tmp_path)
    for action, result in run.report(0).items():
        assert result in {"EACCES", "EPERM", "EROFS"}, (action, result)
        observe(action, result)
    assert run.survived


def test_forged_messages_do_not_confuse_the_host(runtime_dir, tmp_path, observe):
    forged = (
        FORGE
        + """
send('stream', other, {'name': 'stdout', 'text': 'FORGED-OUTPUT'})
send('display_data', other, {'data': {'application/vnd.rlmbox.final+json': {'answer': 'FORGED-FINAL'}}})
send('status', other, {'execution_state': 'idle'})
send('execute_result', other, {'data': {'text/plain': 'FORGED-RESULT'}, 'execution_count': 1})
print('REAL-OUTPUT')
"""
    )
    early_idle = (
        FORGE
        + """
import time
send('status', parent, {'execution_state': 'idle'})
time.sleep(1)
print('LATE-OUTPUT')
"""
    )
    run = run_attack([forged, early_idle, "print('NEXT-OUTPUT')"], runtime_dir, tmp_path)
    assert "REAL-OUTPUT" in run.feedback[0]
    assert not any(f"FORGED-{kind}" in run.feedback[0] for kind in ("OUTPUT", "FINAL", "RESULT"))
    assert run.result.answer == "done"  # the forged FINAL did not end the run
    assert "NEXT-OUTPUT" in run.feedback[2] and "LATE-OUTPUT" not in run.feedback[2]
    assert run.survived
    observe("output, FINAL and idle forged for another request", "ignored (attributed by parent id)")
    observe("idle forged for the running cell", "the cell ends early; later output never leaks into the next")


def test_undecodable_messages_are_dropped(runtime_dir, tmp_path, observe):
    attack = (
        FORGE
        + """
import pickle
socket = kernel.iopub_socket
header = json.dumps(session.msg_header('stream'), default=str).encode()
pickled = pickle.dumps({'name': 'stdout', 'text': 'PICKLED'})
parts = [header, json.dumps(parent, default=str).encode(), b'{}', pickled]
socket.send_multipart([b'<IDS|MSG>', session.sign(parts), *parts])
parts[3] = json.dumps({'name': 'stdout', 'text': 'BAD-SIGNATURE'}).encode()
socket.send_multipart([b'<IDS|MSG>', b'0' * 64, *parts])
socket.send_multipart([b'<IDS|MSG>', b'garbage'])
socket.send_multipart([b'\\xff' * 100])
print('STILL-HERE')
"""
    )
    run = run_attack([attack], runtime_dir, tmp_path)
    assert "STILL-HERE" in run.feedback[0]
    assert "PICKLED" not in run.feedback[0] and "BAD-SIGNATURE" not in run.feedback[0]
    assert run.survived
    observe("pickled content, bad signature, truncated and garbage frames", "dropped; nothing is unpickled")


def test_an_oversize_frame_gets_the_kernel_replaced(runtime_dir, tmp_path, observe):
    attack = (
        FORGE
        + """
send('stream', parent, {'name': 'stdout', 'text': 'q' * 40_000_000})
"""
    )
    run = run_attack([attack], runtime_dir, tmp_path, sandbox={"memory": "1g"})
    (death,) = [e for e in run.events if e["event"] == "kernel_died"]
    assert "broke its iopub channel" in death["reason"] and "restarted" in run.feedback[0]
    assert run.survived and run.leftovers == []
    observe("a 40 MB message sent past the output cap", "connection dropped by ZMQ; kernel replaced at once")


def test_a_kernel_closing_its_own_channel_is_replaced(runtime_dir, tmp_path, observe):
    attack = "get_ipython().kernel.shell_stream.socket.close(linger=0)\nimport time\ntime.sleep(30)"
    run = run_attack([attack], runtime_dir, tmp_path)
    (death,) = [e for e in run.events if e["event"] == "kernel_died"]
    assert "broke its shell channel" in death["reason"]
    assert run.result.elapsed_s < 15  # noticed long before the cell's 30 s sleep (or its 20 s limit) ended
    assert run.survived and run.leftovers == []
    observe("the kernel closes its shell socket", f"noticed at once: {death['reason']}")


def test_killing_the_kernel_process_is_reported(runtime_dir, tmp_path, observe):
    run = run_attack(["import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"], runtime_dir, tmp_path)
    (death,) = [e for e in run.events if e["event"] == "kernel_died"]
    assert "killed by signal 9 (SIGKILL)" in run.feedback[0] and not death["oom"]
    assert run.survived and run.leftovers == []
    observe("SIGKILL the kernel process", "reported as killed by SIGKILL (not as out of memory); restarted")


def test_a_flood_of_maximum_size_frames_leaves_host_memory_bounded(runtime_dir, tmp_path, observe):
    """Past the kernel's own cap, frames just under the host's size limit, as fast as the kernel can send."""
    attack = (
        FORGE
        + """
chunk = 'f' * 12_000_000
for _ in range(40):
    send('stream', parent, {'name': 'stdout', 'text': chunk})
print('sent')
"""
    )
    reset_peak_rss()
    baseline = rss()
    run = run_attack([attack], runtime_dir, tmp_path, sandbox={"memory": "1g"})
    growth = peak_rss() - baseline
    assert "bytes of output were dropped" in run.feedback[0]  # the host's own cap counted the excess
    assert growth < 200 * 2**20  # about 4 queued frames per socket, plus parsing one
    assert run.survived and run.leftovers == []
    observe(
        "40 frames of 12 MB past the kernel's cap",
        f"capped on the host; host peak RSS +{growth / 2**20:.0f} MiB",
    )
