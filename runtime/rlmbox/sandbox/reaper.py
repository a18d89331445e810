"""Remove what dead rlmbox processes left behind: containers and session directories.

Ownership is recorded as host, pid and process start time (so a recycled pid is not mistaken for the
owner); only what belongs to a dead process on this host is removed.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import structlog
from pydantic import ValidationError

from rlmbox.sandbox.owner import ProcessIdentity

__all__ = ["LABEL_PREFIX", "ReapReport", "reap_containers", "reap_orphans_once", "reap_session_dirs"]

log = structlog.get_logger(__name__)

LABEL_PREFIX = "io.rlmbox"
OWNER_FILE = "owner.json"

# Global state, on purpose: reaping happens once per process and runtime directory.
_reaped: set[Path] = set()
_reaped_lock = threading.Lock()


@dataclass(frozen=True)
class ReapReport:
    containers: int = 0
    session_dirs: int = 0


def _orphaned(owner: ProcessIdentity | None) -> bool:
    return owner is not None and owner.is_local() and not owner.is_alive()


def reap_containers(client: docker.DockerClient) -> int:
    """Remove rlmbox containers whose owning process has died; returns how many."""
    removed = 0
    # sparse: no per-container inspect, which would race with containers being removed meanwhile
    try:
        listed = client.containers.list(all=True, sparse=True, filters={"label": f"{LABEL_PREFIX}.session"})
    except docker.errors.DockerException as exc:
        log.warning("sandbox.reap_failed", error=str(exc))
        return 0
    for container in listed:
        labels = container.attrs.get("Labels") or {}
        if not _orphaned(ProcessIdentity.from_labels(labels, f"{LABEL_PREFIX}.owner")):
            continue
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            continue
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # another process is removing it right now
                continue
            log.warning("sandbox.reap_failed", container=container.short_id, error=str(exc))
            continue
        removed += 1
        log.info("sandbox.reaped_container", container=container.short_id)
    return removed


def reap_session_dirs(runtime_dir: Path) -> int:
    """Remove session directories whose owning process has died; returns how many."""
    if not runtime_dir.is_dir() or runtime_dir.is_symlink():
        return 0
    removed = 0
    for session in runtime_dir.iterdir():
        try:
            owner = ProcessIdentity.model_validate_json((session / OWNER_FILE).read_bytes())
        except (OSError, ValidationError):
            continue
        if _orphaned(owner):
            shutil.rmtree(session, ignore_errors=True)
            removed += 1
            log.info("sandbox.reaped_session_dir", session=session.name)
    return removed


def reap_orphans_once(client: docker.DockerClient | None, runtime_dir: Path) -> ReapReport:
    """Reap (containers first, then directories) the first time this process starts a sandbox there."""
    with _reaped_lock:
        if runtime_dir in _reaped:
            return ReapReport()
        _reaped.add(runtime_dir)
    containers = reap_containers(client) if client is not None else 0
    return ReapReport(containers, reap_session_dirs(runtime_dir))
