"""The Docker backend: one hardened container per session, driven through the Docker SDK.

Every blocking SDK call runs in a worker thread; the container's exit is watched by a thread of its own, so
a kernel that dies (out of memory, say) is noticed at once, even in the middle of a cell.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import docker
import docker.errors
import requests.exceptions
import structlog
from docker.models.containers import Container
from docker.types import LogConfig, Mount, Ulimit

from rlmbox._exceptions import DockerUnavailableError, ImageMissingError, SandboxError, SandboxStartError
from rlmbox.config import SandboxConfig
from rlmbox.protocol import CONNECTION_FILE, IPC_MOUNT, SESSION_MOUNT
from rlmbox.sandbox.base import KernelExit, SandboxState
from rlmbox.sandbox.kernel_backed import KernelBackedSandbox, kernel_environment
from rlmbox.sandbox.owner import ProcessIdentity
from rlmbox.sandbox.reaper import LABEL_PREFIX, reap_orphans_once
from rlmbox.sandbox.session_dir import SessionDir

__all__ = ["DockerSandbox", "connect_docker", "container_spec"]

log = structlog.get_logger(__name__)

HOME = "/home/sandbox"
CREATE_TIMEOUT_S = 60.0
DOCKER_HINT = "start it (e.g. `sudo systemctl start docker`, or `make docker` as root on Debian/Ubuntu)"


def connect_docker() -> docker.DockerClient:
    """A client for the local daemon, or DockerUnavailableError saying how to get one."""
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise DockerUnavailableError(f"cannot reach the Docker daemon ({exc}); {DOCKER_HINT}") from exc
    return client


def container_spec(config: SandboxConfig, session: SessionDir) -> dict[str, Any]:
    """Keyword arguments for ``containers.create``: the whole hardening policy in one place."""
    uid, gid = config.user.split(":")
    return {
        "image": config.image,
        "command": ["python", "-m", "rlmbox_kernel.launch", f"{SESSION_MOUNT}/{CONNECTION_FILE}"],
        "user": config.user,
        "environment": kernel_environment(config),  # nothing from the host
        "network_mode": "none",
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "pids_limit": config.pids_limit,
        "mem_limit": config.memory,
        "memswap_limit": config.memory,
        "nano_cpus": int(config.cpus * 1e9),
        "ulimits": [
            Ulimit(name="nofile", soft=config.nofile_limit, hard=config.nofile_limit),
            Ulimit(name="core", soft=0, hard=0),
        ],
        "tmpfs": {
            "/tmp": f"rw,nosuid,nodev,noexec,size={config.tmp_size},mode=1777",
            HOME: f"rw,nosuid,nodev,noexec,size={config.home_size},uid={uid},gid={gid},mode=0700",
        },
        "mounts": [
            Mount(SESSION_MOUNT, str(session.ro), type="bind", read_only=True),
            Mount(IPC_MOUNT, str(session.ipc), type="bind", read_only=False),
        ],
        "labels": {
            f"{LABEL_PREFIX}.session": session.session_id,
            f"{LABEL_PREFIX}.session_dir": str(session.path),
            **ProcessIdentity.current().as_labels(f"{LABEL_PREFIX}.owner"),
        },
        "init": False,  # the launcher is the init (see rlmbox_kernel.launch)
        "hostname": "sandbox",
        "ipc_mode": "private",
        "shm_size": "64m",
        "log_config": LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
        "runtime": config.docker_runtime,
    }


class DockerSandbox(KernelBackedSandbox):
    """A kernel in a container with no network, a read-only root, no capabilities and hard limits."""

    _container: Container | None = None
    _client: docker.DockerClient | None = None

    def kernel_paths(self, session: SessionDir) -> tuple[str, str]:
        return SESSION_MOUNT, IPC_MOUNT

    async def _launch(self, session: SessionDir, exited: asyncio.Future[KernelExit]) -> None:
        if self._client is None:
            self._client = await asyncio.to_thread(connect_docker)
        client = self._client
        await asyncio.to_thread(reap_orphans_once, client, self.config.runtime_dir)
        spec = container_spec(self.config, session)
        # The daemon finishes what a worker thread asked of it even if we stop waiting: on cancellation,
        # let the thread finish so that the container it made is recorded, and removed by _terminate.
        creation = asyncio.ensure_future(asyncio.to_thread(self._create_and_start, client, spec))
        try:
            await asyncio.shield(creation)
        except asyncio.CancelledError:
            await asyncio.wait({creation}, timeout=CREATE_TIMEOUT_S)
            raise
        except docker.errors.ImageNotFound as exc:
            raise ImageMissingError(
                f"the sandbox image {self.config.image} is not built on this machine: run `make image`"
            ) from exc
        except docker.errors.APIError as exc:
            raise SandboxStartError(f"Docker could not start the sandbox: {exc.explanation or exc}") from exc
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise DockerUnavailableError(
                f"lost the Docker daemon while starting the sandbox ({exc})"
            ) from exc
        assert self._container is not None
        log.debug("sandbox.container_started", container=self._container.short_id, session=session.session_id)
        loop = asyncio.get_running_loop()
        watcher = threading.Thread(
            target=_watch_exit, args=(self._container, loop, exited), name="rlmbox-exit-watch", daemon=True
        )
        watcher.start()

    def _create_and_start(self, client: docker.DockerClient, spec: dict[str, Any]) -> None:
        # create + start, never run(): run() would try to pull a missing image from a registry.
        self._container = client.containers.create(**spec)
        self._container.start()

    async def _terminate(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            await asyncio.to_thread(_remove, container)
        if self._client is not None and self.state is SandboxState.CLOSED:
            self._client.close()
            self._client = None

    async def _kernel_alive(self) -> bool:
        container = self._container
        if container is None:
            return False
        try:
            await asyncio.to_thread(container.reload)
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return False
        return container.status == "running"

    async def _diagnostics(self) -> str:
        container = self._container
        if container is None:
            return ""
        try:
            logs = await asyncio.to_thread(container.logs, tail=15)
        except docker.errors.DockerException:
            return ""
        text = logs.decode("utf-8", "replace").strip()
        return f"\n--- kernel log (last lines) ---\n{text}" if text else ""


def _remove(container: Container) -> None:
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        return
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # 409: removal already in progress
            raise SandboxError(f"could not remove container {container.short_id}: {exc.explanation}") from exc
    except requests.exceptions.RequestException as exc:
        message = (
            f"lost the Docker daemon before container {container.short_id} was removed; the first rlmbox "
            "process started after this one exits removes it"
        )
        raise DockerUnavailableError(message) from exc


def _watch_exit(
    container: Container, loop: asyncio.AbstractEventLoop, exited: asyncio.Future[KernelExit]
) -> None:
    """Block until the container stops, then resolve ``exited`` on the loop's thread."""
    code: int | None = None
    oom = False
    try:
        code = container.wait().get("StatusCode")
        container.reload()
        oom = bool(container.attrs.get("State", {}).get("OOMKilled"))
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        pass  # removed while we looked: the exit code we have (if any) is all there is
    with contextlib.suppress(RuntimeError):  # the loop is already closed: nobody is waiting
        loop.call_soon_threadsafe(_resolve, exited, KernelExit(code, oom))


def _resolve(future: asyncio.Future[KernelExit], value: KernelExit) -> None:
    if not future.done():
        future.set_result(value)
