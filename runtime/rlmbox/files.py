"""Opening files named by data (an evaluation's task files, datasets and contexts, a trajectory to view) only
when they are regular files.

Opening a FIFO for reading waits for a writer, and opening a device can wait or have side effects: a path
named by a task file, a flag or a record must never stall rlmbox. Anything but a regular file is refused with
a ``ConfigError`` naming it, and nothing here ever waits on the other end of a pipe.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from rlmbox._exceptions import ConfigError

__all__ = ["open_regular_file", "read_regular_file"]

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISLNK, "a symbolic link"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _refuse(name: str, kind: str) -> ConfigError:
    return ConfigError(f"{name} is {kind}, not a regular file")


def open_regular_file(path: Path, *, name: str | None = None, follow_symlinks: bool = True) -> BinaryIO:
    """``path`` opened for binary reading, if it is a regular file; otherwise a ConfigError naming it.

    ``name`` says what the path is in messages (default: the path). Without ``follow_symlinks`` a symbolic
    link is refused too. Other failures (missing, no permission) raise the usual ``OSError``.
    """
    label = name or str(path)
    # Looked at before opening, so that no device is ever opened; checked again on the open descriptor,
    # in case the path was replaced in between.
    mode = (os.stat(path) if follow_symlinks else os.lstat(path)).st_mode
    if not stat.S_ISREG(mode):
        raise _refuse(label, _kind(mode))
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise _refuse(label, "a symbolic link") from exc
        if exc.errno == errno.ENXIO:  # a socket, or a device without its driver
            raise _refuse(label, "a socket or a device") from exc
        raise
    try:
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    mode = os.fstat(handle.fileno()).st_mode
    if not stat.S_ISREG(mode):
        handle.close()
        raise _refuse(label, _kind(mode))
    return handle


def read_regular_file(path: Path, *, name: str | None = None, follow_symlinks: bool = True) -> bytes:
    """All of ``path``, read as ``open_regular_file`` opens it."""
    with open_regular_file(path, name=name, follow_symlinks=follow_symlinks) as handle:
        return handle.read()
