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
