"""``rlmbox serve`` under clients that never authenticate: what they hold, what the server writes and spends,
and whether a valid client is served meanwhile.

    python bench/serve_hostile.py [--runtime DIR] [--server-args "..."] [--hold S] [--slow N] [--nofile N]

Two scenarios, each against a fresh server process (no model or sandbox is needed: nothing here may start
a run, and the valid client asks ``GET /v1/models``):

- slow headers: ``--slow`` connections each send a partial request and then one more header byte a second;
  one the server closes is opened again. Reported: connections the server holds (sampled each second),
  the longest any was held, and how many were closed within a second of opening.
- descriptor exhaustion: the server runs with ``RLIMIT_NOFILE`` at ``--nofile`` and the attacker opens
  that many connections and 300 more, then holds them. Reported over the hold: bytes and lines the
  server logged, its CPU seconds, and after the attacker leaves, how long until a new client is served.

In both, a valid client asks each second on a keep-alive connection that presented its token before the
attack, and on a new connection (2 s timeout). ``--runtime`` runs another checkout's ``rlmbox`` (its
``runtime/`` directory), to compare; ``--server-args`` adds flags to ``rlmbox serve``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import selectors
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

TOKEN = "bench-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    port: int
    log: Path

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def log_size(self) -> tuple[int, int]:
        data = self.log.read_bytes()
        return len(data), data.count(b"\n")


@contextlib.contextmanager
def server(runtime: Path | None, extra: list[str], nofile: int | None) -> Iterator[Server]:
    with tempfile.TemporaryDirectory(prefix="rlmbox-hostile-", dir="/tmp") as scratch:
        log = Path(scratch) / "server.log"
        env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/tmp"),
            "RLMBOX_SANDBOX__RUNTIME_DIR": f"{scratch}/rt",
            "RLMBOX_TRAJECTORY_DIR": f"{scratch}/runs",
            **({"PYTHONPATH": str(runtime)} if runtime else {}),
        }

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with log.open("w") as stderr:
            process = subprocess.Popen(
                [
                    sys.executable, "-m", "rlmbox.cli", "serve", "--port", "0", "--token", TOKEN,
                    "--model", "openai/x", "--api-base", "http://127.0.0.1:9", "--warm-sandboxes", "0",
                    *extra,
                ],
                stdout=subprocess.DEVNULL, stderr=stderr, env=env,
                preexec_fn=None if nofile is None else limit,  # noqa: PLW1509 (no other thread yet)
            )  # fmt: skip
            try:
                deadline = time.monotonic() + 60
                while "listening on" not in log.read_text(errors="replace"):
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"the server did not start:\n{log.read_text()}")
                    time.sleep(0.05)
                line = next(x for x in log.read_text().splitlines() if "listening on" in x)
                url = line.split("listening on ", 1)[1].split("/v1", 1)[0]
                yield Server(process, url, int(url.rsplit(":", 1)[1]), log)
            finally:
                process.terminate()
                process.wait(timeout=60)


class ValidClient(threading.Thread):
    """Asks each second, on a kept connection (its token presented before the attack) and on a new one;
    counts what was served."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        kept = httpx.Limits(max_connections=1, keepalive_expiry=600)
        self.kept = httpx.Client(base_url=url, headers=AUTH, timeout=2, limits=kept)
        assert self.kept.get("/v1/models").status_code == 200
        self.counts = {"kept": [0, 0], "new": [0, 0]}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1):
            for kind, request in (("kept", self._kept), ("new", self.new)):
                served = request()
                self.counts[kind][0] += served
                self.counts[kind][1] += 1

    def _kept(self) -> bool:
        try:
            return self.kept.get("/v1/models").status_code == 200
        except httpx.TransportError:
            return False

    def new(self, timeout: float = 2) -> bool:
        try:
            return httpx.get(f"{self.url}/v1/models", headers=AUTH, timeout=timeout).status_code == 200
        except httpx.TransportError:
            return False

    def served(self, kind: str) -> str:
        self.stop.set()
        self.join()
        ok, asked = self.counts[kind]
        return f"{ok}/{asked}"


def slow_headers(srv: Server, count: int, hold: float) -> dict[str, str]:
    valid = ValidClient(srv.url)
    cpu, (size, lines) = srv.cpu_s(), srv.log_size()
    selector = selectors.DefaultSelector()
    opened: dict[socket.socket, float] = {}
    held: list[int] = []
    longest, refused = 0.0, 0

    def top_up() -> None:
        nonlocal refused
        for _ in range(count - len(opened)):
            try:
                sock = socket.create_connection(("127.0.0.1", srv.port), timeout=2)
                sock.setblocking(False)
                sock.send(b"GET /v1/models HTTP/1.1\r\nHost: rlmbox\r\nX-Slow: ")
            except OSError:
                refused += 1
                continue
            opened[sock] = time.monotonic()
            selector.register(sock, selectors.EVENT_READ)

    top_up()
    valid.start()
    started = next_tick = time.monotonic()
    while time.monotonic() - started < hold:
        for key, _ in selector.select(timeout=max(0.0, next_tick - time.monotonic())):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            with contextlib.suppress(OSError):
                if sock.recv(4096):
                    continue
            age = time.monotonic() - opened.pop(sock)
            longest = max(longest, age)
            refused += age < 1
            selector.unregister(sock)
            sock.close()
        if time.monotonic() >= next_tick:  # each second: one more header byte, a sample, the lost reopened
            next_tick += 1
            for sock in opened:
                with contextlib.suppress(OSError):
                    sock.send(b"a")
            held.append(len(opened))
            top_up()
    now = time.monotonic()
    longest = max([longest, *(now - at for at in opened.values())])
    size2, lines2 = srv.log_size()
    for sock in opened:
        sock.close()
    return {
        "held (median of 1 s samples)": str(sorted(held)[len(held) // 2]),
        "longest held (s)": f"{longest:.1f}",
        "refused, or closed within 1 s": str(refused),
        "log bytes / lines": f"{size2 - size} / {lines2 - lines}",
        "server CPU (s)": f"{srv.cpu_s() - cpu:.1f}",
        "valid, kept connection": valid.served("kept"),
        "valid, new connection": valid.served("new"),
    }


def exhaustion(srv: Server, nofile: int, hold: float) -> dict[str, str]:
    valid = ValidClient(srv.url)
    cpu, (size, lines) = srv.cpu_s(), srv.log_size()
    attackers = []
    for _ in range(nofile + 300):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", srv.port))
        attackers.append(sock)
    valid.start()
    time.sleep(hold)
    size2, lines2 = srv.log_size()
    spent = srv.cpu_s() - cpu
    kept, new = valid.served("kept"), valid.served("new")
    for sock in attackers:
        sock.close()
    left = time.monotonic()
    while not valid.new(timeout=5) and time.monotonic() - left < 60:
        time.sleep(0.2)
    recovered = time.monotonic() - left
    return {
        "log bytes / lines": f"{size2 - size} / {lines2 - lines}",
        "server CPU (s)": f"{spent:.1f}",
        "valid, kept connection": kept,
        "valid, new connection": new,
        "new client served after the attack (s)": f"{recovered:.1f}" if recovered < 60 else "no",
        "server alive": "yes" if srv.process.poll() is None else "no",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runtime", type=Path, help="another checkout's runtime/ directory")
    parser.add_argument("--server-args", default="", help="more flags for rlmbox serve")
    parser.add_argument("--hold", type=float, default=60.0, help="seconds each attack lasts (default 60)")
    parser.add_argument("--slow", type=int, default=1000, help="slow-header connections (default 1000)")
    parser.add_argument("--nofile", type=int, default=256, help="the server's RLIMIT_NOFILE (default 256)")
    parser.add_argument("--only", choices=["slow", "exhaustion"], help="run one scenario")
    args = parser.parse_args(argv)
    extra = shlex.split(args.server_args)
    results: dict[str, dict[str, str]] = {}
    if args.only in (None, "slow"):
        with server(args.runtime, extra, None) as srv:
            results["slow headers"] = slow_headers(srv, args.slow, args.hold)
    if args.only in (None, "exhaustion"):
        with server(args.runtime, extra, args.nofile) as srv:
            results["descriptor exhaustion"] = exhaustion(srv, args.nofile, args.hold)
    print(f"runtime: {args.runtime or 'this checkout'}  server args: {args.server_args or '(none)'}\n")
    for scenario, figures in results.items():
        print(f"| {scenario:<40} | {'':>20} |\n|{'-' * 42}|{'-' * 22}|")
        for name, value in figures.items():
            print(f"| {name:<40} | {value:>20} |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
