"""What rlmbox has left on the Docker engine."""

from __future__ import annotations

import re
from pathlib import Path

import docker


def rlmbox_containers(runtime_dir: Path) -> list[str]:
    """Ids of the rlmbox containers, running or not, whose sessions live under ``runtime_dir``."""
    client = docker.from_env()
    try:
        found = client.containers.list(all=True, sparse=True, filters={"label": "io.rlmbox.session"})
        prefix = f"{runtime_dir}/"
        return [
            c.id
            for c in found
            if (c.attrs.get("Labels") or {}).get("io.rlmbox.session_dir", "").startswith(prefix)
        ]
    finally:
        client.close()


def orphan_container_processes() -> list[int]:
    """Host processes of an rlmbox kernel still in the cgroup of a container that no longer exists.

    Read as root (the kernel's /proc files are not readable by others: it is non-dumpable). The containers
    known are those of the daemon DOCKER_HOST names: with several daemons, run this against each.
    """
    client = docker.from_env()
    try:
        live = {c.id for c in client.containers.list(all=True, sparse=True)}
    finally:
        client.close()
    orphans = []
    for cgroup in Path("/proc").glob("[0-9]*/cgroup"):
        try:
            if b"rlmbox_kernel" not in (cgroup.parent / "cmdline").read_bytes():
                continue
            ids = set(re.findall(r"\b[0-9a-f]{64}\b", cgroup.read_text()))
        except OSError:
            continue
        if ids and not ids & live:
            orphans.append(int(cgroup.parent.name))
    return orphans
