"""The host process's own memory, as Linux counts it."""

from __future__ import annotations

from pathlib import Path


def _status_kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith(f"{field}:")).split()[1])


def rss() -> int:
    """Resident set size now, in bytes."""
    return _status_kib("VmRSS") * 1024


def peak_rss() -> int:
    """The highest resident set size since the last ``reset_peak_rss``, in bytes."""
    return _status_kib("VmHWM") * 1024


def reset_peak_rss() -> None:
    """Start a new peak; first import what a run imports lazily, so that the peak measures the run alone."""
    import litellm  # noqa: F401  (its first import alone adds well over 100 MB)

    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)
