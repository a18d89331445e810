"""Host-attack benchmark: what kernels attacking the host process cost it, with a neighbour session beside.

    python bench/hostile.py [--attacks a,b] [--runs K] [--timeout S] [--max-host-memory SIZE] [--json PATH]

Each run of an attack is a fresh Python process (this script, with ``--child``) that calls
``run_beside_neighbour`` (tests/support/neighbour.py): the attack's cells (tests/support/hostile.py) run as
a scripted root model's turns in one RLM run, while a second RLM run in the same event loop keeps making
sub-calls. A host that aborts or is killed takes only its own process down: its exit signal is recorded, the
peak RSS growth its parent last read in /proc is kept as a lower bound, and the containers it left behind are
counted, then removed. Each child's address space is capped (``--max-host-memory``, default 12g) so that an
attack growing the host past what this machine has ends in that child, not in the machine's OOM killer.

Per attack, the table gives how many hosts survived (and how the others died), the host's peak RSS growth
and longest event-loop stall (median, min, max), its CPU time and log lines (median), how many neighbours
finished with every output delivered and the right answer, and their longest turn (median, min, max), the
attacker runs' outcomes, and the containers left behind. ``control`` is a harmless cell: the cost of the
pair itself.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import json
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from rlmbox.config import parse_size  # noqa: E402

from support import hostile  # noqa: E402
from support.containers import rlmbox_containers  # noqa: E402

MIB = 2**20
POLL_S = 0.1  # how often the parent reads a child's memory peak
# The first line of a dying host's stderr that says why, most telling first.
DEATH_REASONS = (
    re.compile(r"Assertion failed.*"),
    re.compile(r"memory allocation of \d+ bytes failed"),
    re.compile(r"MemoryError.*"),
    re.compile(r"Fatal Python error.*"),
)


@dataclass(frozen=True)
class Attack:
    """One attack: its cells (one a turn) and the attacker's sandbox and limits."""

    cells: tuple[str, ...]
    note: str
    sandbox: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)


ZMQ_ABORT_TURNS = 4
# A cell waiting for the host's answer to a request that freezes it (its own clock runs meanwhile): long
# enough for the answer to come back, so that the table shows what it was.
PATIENT = {"cell_timeout_s": 600}
ATTACKS: dict[str, Attack] = {
    "control": Attack((hostile.HARMLESS,), "print(1): the pair's own cost"),
    "zmq_abort": Attack(
        (hostile.zmq_abort(),) * ZMQ_ABORT_TURNS,
        f"3 iopub messages of 20,000 frames of 1 KB, SIGKILL 0.05 s after they left; {ZMQ_ABORT_TURNS} turns",
        limits={"max_kernel_restarts": ZMQ_ABORT_TURNS},
    ),
    "multipart_memory": Attack((hostile.multipart_memory(),), "one iopub message of 80 frames of 12 MB"),
    "bridge_json_amplification": Attack(
        (hostile.bridge_json_amplification(),),
        "a 32 MiB rlm_query of [0,0,...] (16.7M invalid values)",
        sandbox=PATIENT,
    ),
    "bridge_json_amplification_x4": Attack(
        (hostile.bridge_json_amplification(connections=4),),
        "the same on 4 connections at once",
        sandbox=PATIENT,
    ),
    "bridge_json_amplification_4mib": Attack(
        (hostile.bridge_json_amplification(body_bytes=4 * MIB),),
        "the same, 4 MiB (1/8 of the cap)",
        sandbox=PATIENT,
    ),
    "lone_surrogate_stream": Attack((hostile.lone_surrogate("stream"),), "\\ud800 in a stream text"),
    "lone_surrogate_result": Attack((hostile.lone_surrogate("result"),), "\\ud800 in an execute_result"),
    "lone_surrogate_error": Attack((hostile.lone_surrogate("error"),), "\\ud800 in an error's evalue"),
    "lone_surrogate_final": Attack((hostile.lone_surrogate("final"),), "\\ud800 in a FINAL answer"),
    "bridge_connection_flood": Attack(
        (hostile.bridge_connection_flood(),), "connect and close the bridge socket for 10 s"
    ),
    "bridge_connection_flood_x8": Attack(
        (hostile.bridge_connection_flood(threads=8),), "the same from 8 threads"
    ),
    "frame_flood": Attack(
        (hostile.frame_flood(),),
        "40 stream messages of 12 MB past the kernel's cap",
        sandbox={"memory": "1g"},
    ),
}


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- one run, in a child process ------------------------------------------------------------------------


def child(args: argparse.Namespace) -> int:
    """Run one attack beside a neighbour and write what happened as JSON to ``args.out``."""
    from rlmbox.llm import load_litellm

    from support.host import reset_peak_rss, rss
    from support.neighbour import run_beside_neighbour

    if args.cap:  # an attack growing the host past it ends in this process, not in the machine's OOM killer
        resource.setrlimit(resource.RLIMIT_AS, (args.cap, args.cap))
    load_litellm()  # imported before the measurement, as the bench's other figures do
    attack = ATTACKS[args.child]
    reset_peak_rss()
    args.out.with_suffix(".start").write_text(json.dumps({"rss": rss()}))
    pair = run_beside_neighbour(
        list(attack.cells),
        args.runtime_dir,
        args.scratch,
        sandbox=attack.sandbox,
        limits=attack.limits,
    )
    run = pair.attacker
    reports = [line for f in (run.feedback if run else []) for line in f.splitlines() if "REPORT:" in line]
    summary = {
        **vars(pair.host),
        "neighbour_ok": pair.neighbour_ok,
        "neighbour_cells": pair.neighbour_cells,
        "neighbour_longest_turn_s": pair.neighbour_longest_turn_s,
        "neighbour_error": repr(pair.neighbour_error) if pair.neighbour_error else None,
        "attacker_status": pair.attacker_status,
        "attacker_error": f"{type(pair.attacker_error).__name__}: {pair.attacker_error}"[:300]
        if pair.attacker_error
        else None,
        "attacker_probe_ok": bool(run and run.feedback and run.survived),
        "kernel_deaths": sum(1 for e in pair.attacker_events if e.get("event") == "kernel_died"),
        "run_finished_written": any(e.get("event") == "run_finished" for e in pair.attacker_events),
        "report": [line[:300] for line in reports],
        "first_feedback": run.feedback[0][:600] if run and run.feedback else None,
        "leftovers": len(pair.leftovers),
    }
    args.out.write_text(json.dumps(summary))
    return 0


# -- the parent: runs, cleanup, table -------------------------------------------------------------------


def _vm_hwm(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    line = next((line for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return int(line.split()[1]) * 1024 if line else None


def _death_reason(stderr: str) -> str | None:
    """Why a host died, from its stderr: a known fatal message, else its last line."""
    for pattern in DEATH_REASONS:
        if match := pattern.search(stderr):
            return match.group(0)[:120]
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1][:120] if lines else None


def remove_containers(runtime_dir: Path) -> int:
    """Remove (forcibly) every rlmbox container whose session lived under ``runtime_dir``; how many."""
    ids = rlmbox_containers(runtime_dir)
    client = docker.from_env()
    try:
        for cid in ids:
            with contextlib.suppress(docker.errors.NotFound):
                client.containers.get(cid).remove(force=True)
    finally:
        client.close()
    return len(ids)


def one_run(name: str, index: int, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """Run attack ``name`` once in a child process; what happened to the host, from inside and outside."""
    runtime_dir, tmp = scratch / f"r{index}", scratch / f"t{index}"
    tmp.mkdir()
    out, errors = tmp / "result.json", tmp / "stderr.txt"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", name]
    command += ["--out", str(out), "--runtime-dir", str(runtime_dir), "--scratch", str(tmp)]
    command += ["--max-host-memory", str(args.cap)]
    started = time.monotonic()
    hwm, timed_out = None, False
    with errors.open("wb") as stderr:
        child_process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        while True:
            try:
                child_process.wait(POLL_S)
                break
            except subprocess.TimeoutExpired:
                hwm = _vm_hwm(child_process.pid) or hwm
                if time.monotonic() - started > args.timeout:
                    timed_out = True
                    child_process.kill()
    code = child_process.returncode
    text = errors.read_text(errors="replace")
    sample: dict[str, Any] = {
        "attack": name,
        "exit_code": code,
        "signal": signal.Signals(-code).name if code < 0 else None,
        "timed_out": timed_out,
        "wall_s": round(time.monotonic() - started, 2),
        "death_reason": _death_reason(text) if code else None,
        "stderr_lines": text.count("\n"),
        "stderr_bytes": errors.stat().st_size,
        "stderr_tail": text.splitlines()[-5:] if code else [],
    }
    if code == 0 and out.exists():
        sample.update(json.loads(out.read_text()), survived=True, peak_is_lower_bound=False)
    else:
        start = out.with_suffix(".start")
        baseline = json.loads(start.read_text())["rss"] if start.exists() else None
        growth = hwm - baseline if hwm is not None and baseline is not None else None
        sample.update(survived=False, peak_rss_growth=growth, peak_is_lower_bound=True)
        sample["leftovers"] = len(rlmbox_containers(runtime_dir))
    sample["containers_removed"] = remove_containers(runtime_dir)
    shutil.rmtree(runtime_dir, ignore_errors=True)
    return sample


def _attacker_outcome(sample: dict[str, Any]) -> str:
    """The attacker run's status; whether its probe after the attack saw a working kernel."""
    if not sample["survived"]:
        return "host died"
    status = sample["attacker_status"]
    if status.startswith("raised") or sample["attacker_probe_ok"]:
        return status
    return f"{status}, probe failed"


def _spread(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    if not values:
        return "n/a"
    median, low, high = (v / scale for v in (statistics.median(values), min(values), max(values)))
    return f"{median:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def _median(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f}" if values else "n/a"


def table(samples: list[dict[str, Any]], names: list[str]) -> list[str]:
    """The table's lines (one row an attack), then a note on each way a host died."""
    header = (
        "attack",
        "host survived",
        "peak RSS +MiB",
        "loop stall s",
        "CPU s",
        "log lines",
        "neighbour ok",
        "neighbour turn s",
        "attacker",
        "leftovers",
    )
    rows, notes = [], []
    for name in names:
        mine = [s for s in samples if s["attack"] == name]
        alive = [s for s in mine if s["survived"]]
        dead = [s for s in mine if not s["survived"]]
        survived = f"{len(alive)}/{len(mine)}"
        if dead:
            deaths = collections.Counter(
                "timeout" if s["timed_out"] else s["signal"] or f"exit {s['exit_code']}" for s in dead
            )
            survived += " (" + ", ".join(f"{k} x{v}" for k, v in deaths.items()) + ")"
            for reason, count in collections.Counter(s["death_reason"] for s in dead).items():
                notes.append(f"{name}: {count} host(s) died: {reason or 'no reason on stderr'}")
        growth = [s["peak_rss_growth"] for s in mine if s.get("peak_rss_growth") is not None]
        lower_bound = any(s["peak_is_lower_bound"] and s.get("peak_rss_growth") is not None for s in mine)
        statuses = collections.Counter(_attacker_outcome(s) for s in mine)
        rows.append(
            (
                name,
                survived,
                (">=" if lower_bound else "") + _spread(growth, MIB, 0),
                _spread([s["max_loop_stall_s"] for s in alive], digits=3),
                _median([s["cpu_s"] for s in alive], 1),
                _median([s["log_lines"] for s in alive], 0),
                f"{sum(bool(s.get('neighbour_ok')) for s in mine)}/{len(mine)}",
                _spread([s["neighbour_longest_turn_s"] for s in alive], digits=2),
                "; ".join(f"{k} x{v}" for k, v in statuses.items()),
                str(sum(s.get("leftovers") or 0 for s in mine)),
            )
        )
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += [
        "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows
    ]
    return lines + (["", *notes] if notes else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated, from: %(default)s")
    parser.add_argument("--runs", type=int, default=3, help="runs of each attack, each in a fresh process")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before a run's child is killed")
    parser.add_argument("--max-host-memory", default="12g", help="address-space cap of each child (0: none)")
    parser.add_argument("--json", type=Path, help="write every sample here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--runtime-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.cap = 0 if args.max_host_memory in ("0", "") else parse_size(args.max_host_memory)
    if args.child:
        return child(args)
    names = [name.strip() for name in args.attacks.split(",") if name.strip()]
    if unknown := [name for name in names if name not in ATTACKS]:
        parser.error(f"unknown attacks: {', '.join(unknown)} (known: {', '.join(ATTACKS)})")
    spec = importlib.util.find_spec("rlmbox")
    code = Path(spec.origin).parent if spec and spec.origin else "?"
    samples: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rlmbox-hostile-", dir="/tmp") as scratch:
        index = 0
        for name in names:
            for run in range(1, args.runs + 1):
                index += 1
                progress(f"[{name} {run}/{args.runs}] {ATTACKS[name].note}")
                sample = one_run(name, index, args, Path(scratch))
                samples.append(sample)
                fate = (
                    "survived" if sample["survived"] else f"died ({sample['signal'] or sample['exit_code']})"
                )
                progress(f"  host {fate} in {sample['wall_s']:.1f}s")
        swept = remove_containers(Path(scratch))
    removed = sum(s["containers_removed"] for s in samples) + swept
    cap = f"{args.cap / 2**30:g} GiB" if args.cap else "none"
    print(
        f"rlmbox from {code}; {args.runs} runs an attack, each in a fresh process; address-space cap {cap}\n"
    )
    print("\n".join(table(samples, names)))
    print(f"\nRemoved {removed} leftover container(s) of the benchmark's runtime directories.")
    print("\n" + "\n".join(f"{name}: {ATTACKS[name].note}" for name in names))
    if args.json:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "samples": samples}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
