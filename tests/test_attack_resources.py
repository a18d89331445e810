"""Escape suite, resources: code that tries to exhaust processes, memory, CPU, disk or the host's memory.

Each attack runs as a model-written cell through the whole pipeline; the run must go on (or end cleanly)
and leave nothing behind.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from support.attacks import run_attack
from support.containers import orphan_container_processes
from support.host import peak_rss, reset_peak_rss, rss

pytestmark = [pytest.mark.docker, pytest.mark.attack("resources")]


def test_fork_bomb_is_stopped_at_the_pids_limit_and_the_kernel_replaced(runtime_dir, tmp_path, observe):
    spawn = """
import subprocess
procs, error = [], None
try:
    for _ in range(200):
        procs.append(subprocess.Popen(['sleep', '60']))
except OSError as e:
    error = e.errno
for p in procs:
    p.kill()
    p.wait()
print('REPORT:', {"started": len(procs), "errno": error})
"""
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    run = run_attack(
        [spawn, bomb],
        runtime_dir,
        tmp_path,
        sandbox={"pids_limit": 48, "cell_timeout_s": 4, "interrupt_grace_s": 2},
    )
    spawned = run.report(0)
    assert spawned["errno"] == 11 and spawned["started"] < 48  # EAGAIN at the pids limit
    bomb_cell = run.cells()[1]
    assert bomb_cell["timed_out"]  # interrupted, or (usually) the kernel replaced: either way cut off
    assert run.survived and run.leftovers == [] and orphan_container_processes() == []
    observe("200 subprocesses", f"refused at {spawned['started']} (EAGAIN, pids limit 48)")
    how = "kernel replaced" if bomb_cell["kernel_restarted"] else "interrupted"
    observe(
        "fork bomb (os.fork loop)",
        f"cut off at the 4s cell limit ({how} after {bomb_cell['duration_s']:.1f}s); run went on; no process"
        " left on the host",
    )


def test_memory_bomb_is_reported_as_out_of_memory_and_the_kernel_restarted(runtime_dir, tmp_path, observe):
    bomb = "blocks = []\nwhile True:\n    blocks.append(bytearray(32 * 2**20))"
    run = run_attack([bomb], runtime_dir, tmp_path, sandbox={"memory": "192m"})
    (death,) = [e for e in run.events if e["event"] == "kernel_died"]
    assert death["oom"] and "out of memory" in run.feedback[0] and "192 MiB" in run.feedback[0]
    assert "restarted" in run.feedback[0]
    assert run.survived and run.leftovers == []
    observe("memory bomb", "killed at the 192 MiB limit, reported as out of memory; kernel restarted")


def test_cpu_spin_is_interrupted_at_the_time_limit_and_state_kept(runtime_dir, tmp_path, observe):
    run = run_attack(
        ["x = 41", "while True:\n    pass", "print('REPORT:', x + 1)"],
        runtime_dir,
        tmp_path,
        sandbox={"cell_timeout_s": 2},
    )
    spin = run.cells()[1]
    assert spin["timed_out"] and not spin["kernel_restarted"]
    assert "time limit and was interrupted" in run.feedback[1]
    assert run.report(2) == 42 and run.survived
    observe(
        "CPU spin (while True: pass)", f"interrupted at the 2s limit ({spin['duration_s']:.1f}s); state kept"
    )


@pytest.mark.parametrize(
    ("name", "loop"),
    [
        (
            "SIGINT ignored",
            "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass",
        ),
        (
            "KeyboardInterrupt swallowed",
            "import time\nwhile True:\n    try:\n        time.sleep(9)\n"
            "    except KeyboardInterrupt:\n        pass",
        ),
    ],
)
def test_loop_ignoring_the_interrupt_gets_its_kernel_replaced(runtime_dir, tmp_path, observe, name, loop):
    run = run_attack(
        ["x = 1", loop], runtime_dir, tmp_path, sandbox={"cell_timeout_s": 2, "interrupt_grace_s": 1}
    )
    cell = run.cells()[1]
    assert cell["timed_out"] and cell["kernel_restarted"]
    assert "ignored the interrupt; the kernel was restarted" in run.feedback[1]
    assert run.survived and run.leftovers == []
    observe(f"loop with {name}", f"kernel replaced after {cell['duration_s']:.1f}s (limit 2s + 1s grace)")


def test_filling_the_writable_filesystems_ends_in_enospc(runtime_dir, tmp_path, observe):
    fill = """
import os
written = {}
for target in ('/tmp', os.path.expanduser('~'), '/dev/shm'):
    total, error = 0, None
    try:
        with open(os.path.join(target, 'fill'), 'wb') as handle:
            while True:
                handle.write(b'x' * 2**20)
                handle.flush()
                total += 2**20
    except OSError as e:
        error = e.errno
    written[target] = [total // 2**20, error]
print('REPORT:', written)
"""
    docker_root = "/var/lib/docker" if Path("/var/lib/docker").exists() else "/"
    before = shutil.disk_usage(docker_root).free
    run = run_attack([fill], runtime_dir, tmp_path, sandbox={"tmp_size": "48m", "home_size": "16m"})
    after = shutil.disk_usage(docker_root).free
    written = run.report(0)
    assert written["/tmp"][1] == written["/home/sandbox"][1] == written["/dev/shm"][1] == 28  # ENOSPC
    assert 46 <= written["/tmp"][0] <= 48 and 14 <= written["/home/sandbox"][0] <= 16
    assert written["/dev/shm"][0] <= 64
    assert before - after < 32 * 2**20  # tmpfs: nothing reached the host's disk
    assert run.survived and run.leftovers == []
    for target, (size, _) in written.items():
        observe(
            f"fill {target}", f"ENOSPC after {size} MiB; host disk: {(before - after) / 2**20:+.0f} MiB used"
        )


def test_millions_of_lines_are_capped_at_the_source_and_on_the_host(runtime_dir, tmp_path, observe):
    flood = (
        "import sys\nfor _ in range(100):\n    sys.stdout.write('spam spam spam\\n' * 100_000)\n"
        "for i in range(200_000):\n    print(i)"
    )
    reset_peak_rss()
    baseline = rss()
    run = run_attack([flood], runtime_dir, tmp_path)
    growth = peak_rss() - baseline
    cell = run.cells()[0]
    assert not cell["timed_out"] and cell["stdout"]["chars"] <= 2_000_000
    dropped = int(
        run.feedback[0].split(" bytes of output were dropped")[0].rsplit("[", 1)[1].replace(",", "")
    )
    assert dropped > 140_000_000  # 100 x 1.5 MB written, 2 MB kept
    assert growth < 64 * 2**20  # 2 MB kept; the rest never left the sandbox
    assert run.survived
    observe(
        "10 million lines of stdout",
        f"{dropped / 1e6:.0f} MB dropped in the sandbox, 2 MB kept; host peak RSS +{growth / 2**20:.0f} MiB",
    )


def test_a_huge_display_payload_is_cut_at_the_source(runtime_dir, tmp_path, observe):
    huge = (
        "from IPython.display import display\n"
        "display({'text/plain': 'y' * 60_000_000, 'image/png': 'A' * 20_000_000}, raw=True)"
    )
    reset_peak_rss()
    baseline = rss()
    run = run_attack([huge], runtime_dir, tmp_path, sandbox={"memory": "1g"})
    growth = peak_rss() - baseline
    assert "bytes of output were dropped" in run.feedback[0]
    assert growth < 64 * 2**20  # 2 MB kept; the rest never left the sandbox
    assert run.survived
    observe(
        "one 80 MB display payload",
        f"cut to 2 MB of text in the sandbox; host peak RSS +{growth / 2**20:.0f} MiB",
    )
