"""``rlmbox doctor``: is this machine ready to run sandboxes? Each check says what to do when it fails."""

from __future__ import annotations

from dataclasses import dataclass

from rlmbox._exceptions import ConfigError, DockerUnavailableError
from rlmbox.config import Settings
from rlmbox.sandbox.session_dir import MAX_SOCKET_PATH, ensure_runtime_dir, longest_socket_path

__all__ = ["Check", "run_checks"]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def run_checks(settings: Settings) -> list[Check]:
    sandbox = settings.sandbox
    checks = [_runtime_dir(settings)]
    if sandbox.backend == "local":
        return [*checks, Check("backend", True, "local backend: NO isolation (Docker checks skipped)")]
    from rlmbox.sandbox.docker import connect_docker  # the docker SDK only when needed

    try:
        client = connect_docker()
    except DockerUnavailableError as exc:
        return [*checks, Check("docker", False, str(exc))]
    version = client.version()
    checks.append(Check("docker", True, f"engine {version.get('Version')}, API {version.get('ApiVersion')}"))
    info = client.info()
    checks.append(
        Check("cgroups", True, f"cgroup v{info.get('CgroupVersion', '1')}, {info.get('CgroupDriver')}")
    )
    images = {tag for image in client.images.list() for tag in image.tags}
    if sandbox.image in images:
        checks.append(Check("image", True, sandbox.image))
    else:
        checks.append(Check("image", False, f"{sandbox.image} is not built: run `make image`"))
    if sandbox.docker_runtime and sandbox.docker_runtime not in info.get("Runtimes", {}):
        checks.append(Check("runtime", False, f"OCI runtime {sandbox.docker_runtime} is not registered"))
    client.close()
    return checks


def _runtime_dir(settings: Settings) -> Check:
    path = settings.sandbox.runtime_dir
    try:
        ensure_runtime_dir(path)
    except (ConfigError, OSError) as exc:
        return Check("runtime dir", False, f"{path}: {exc}")
    longest = longest_socket_path(path)
    if longest > MAX_SOCKET_PATH:
        return Check("socket paths", False, f"{longest} bytes, over {MAX_SOCKET_PATH}: shorten runtime_dir")
    return Check("runtime dir", True, f"{path} (socket paths {longest} of {MAX_SOCKET_PATH} bytes)")
