"""What rlmbox has left on the Docker engine."""

from __future__ import annotations

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


def orphan_container_processes(uid: int = 10001) -> list[int]:
    """Host processes of the sandbox user still in the cgroup of a container that no longer exists."""
    import re

    client = docker.from_env()
    try:
        live = {c.id for c in client.containers.list(all=True, sparse=True)}
    finally:
        client.close()
    orphans = []
    for cgroup in Path("/proc").glob("[0-9]*/cgroup"):
        try:
            status = (cgroup.parent / "status").read_text()
            owner = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
            ids = set(re.findall(r"\b[0-9a-f]{64}\b", cgroup.read_text()))
        except (OSError, StopIteration):
            continue
        if owner != uid:
            continue
        if ids and not ids & live:
            orphans.append(int(cgroup.parent.name))
    return orphans
