"""Shared fixtures. Tests marked ``docker`` need the engine and the sandbox image, tests marked ``realmodel``
the local model (``make local-model``), and tests using the ``chromium`` fixture need Chromium and
Playwright: they fail when one is missing in CI (``CI=true``) and are skipped elsewhere, saying why."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlmbox.config import SandboxConfig

IN_CI = os.environ.get("CI", "").lower() == "true"


@functools.cache
def docker_problem() -> str | None:
    """Why Docker tests cannot run here, or None when they can."""
    import docker
    import docker.errors
    import requests.exceptions

    try:
        client = docker.from_env()
        client.ping()
        client.images.get(SandboxConfig().image)
    except docker.errors.ImageNotFound:
        return f"the sandbox image {SandboxConfig().image} is missing (run `make image`)"
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        return f"no Docker engine ({exc})"
    client.close()
    return None


@pytest.fixture(autouse=True)
def _docker_gate(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("docker") is None:
        return
    problem = docker_problem()
    if problem is None:
        return
    if IN_CI:
        pytest.fail(f"Docker tests must run in CI: {problem}")
    pytest.skip(problem)


@functools.cache
def local_model_problem() -> str | None:
    """Why tests marked ``realmodel`` cannot run here, or None when they can."""
    from rlmbox.local_model import MODELS, default_dir
    from rlmbox.local_model.weights import is_ready

    cache_dir = default_dir()
    if not (cache_dir / "venv" / "bin" / "python").exists():
        return f"no local model server in {cache_dir}/venv (run `make local-model`)"
    missing = [name for name, spec in MODELS.items() if not is_ready(spec, cache_dir / "models")]
    if missing:
        return f"the local model {', '.join(missing)} is not in {cache_dir}/models (run `make local-model`)"
    return None


@pytest.fixture(autouse=True)
def _realmodel_gate(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("realmodel") is None:
        return
    problem = local_model_problem()
    if problem is None:
        return
    if IN_CI:
        pytest.fail(f"real-model tests must run in CI: {problem}")
    pytest.skip(problem)


CHROMIUM = os.environ.get("RLMBOX_CHROMIUM", "/usr/bin/chromium")


@functools.cache
def browser_problem() -> str | None:
    """Why browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is missing (make install)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (run scripts/ensure-chromium.sh, or set RLMBOX_CHROMIUM)"
    return None


@pytest.fixture
def chromium() -> str:
    """The system Chromium for Playwright: fails in CI when missing, skips elsewhere."""
    problem = browser_problem()
    if problem is not None:
        if IN_CI:
            pytest.fail(f"browser tests must run in CI: {problem}")
        pytest.skip(problem)
    return CHROMIUM


@pytest.fixture
def runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A short, private runtime directory (socket paths must stay short)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="rbt-", dir="/tmp"))
    yield path
    import shutil

    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def docker_config(runtime_dir: Path) -> SandboxConfig:
    return SandboxConfig(backend="docker", runtime_dir=runtime_dir, cell_timeout_s=30, memory="512m")


@pytest.fixture
def local_config(runtime_dir: Path) -> SandboxConfig:
    return SandboxConfig(backend="local", runtime_dir=runtime_dir, cell_timeout_s=30)


# -- the escape suite's report: what each attack observed, for the table in docs/SECURITY.md ---------------

_OBSERVED: list[dict[str, str]] = []


@pytest.fixture
def observe(request: pytest.FixtureRequest):
    """``observe(attack, outcome)`` records a row of the attack table (a test may record several)."""

    def record(attack: str, outcome: str) -> None:
        request.node.user_properties.append(("observed", {"attack": attack, "outcome": outcome}))

    return record


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    marker = item.get_closest_marker("attack")
    if marker is None or not (call.when == "call" or report.failed):
        return report
    status = "passed" if report.passed else ("skipped" if report.skipped else "FAILED")
    rows = [row for name, row in item.user_properties if name == "observed"]
    if not rows and report.failed:  # failed before it could say what it saw: the table must still show it
        rows = [{"attack": item.name, "outcome": f"the test failed in {call.when}"}]
    for row in rows:
        _OBSERVED.append({"category": marker.args[0], **row, "result": status, "test": item.nodeid})
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    """With RLMBOX_SECURITY_REPORT=PATH, write the attack rows there (for scripts/security_table.py)."""
    target = os.environ.get("RLMBOX_SECURITY_REPORT")
    if target and _OBSERVED:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps(_OBSERVED, indent=1))
