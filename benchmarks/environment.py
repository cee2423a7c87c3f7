"""Where a benchmark ran: package versions, the commit measured and the CPU. Imports nothing from fusion, so
scripts that measure an older checkout (``benchmarks/foundation.py``) can use it too."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def package_version(package: str) -> str:
    """An installed distribution's version, or "not installed"."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_revision(default: str = "unknown") -> str:
    """The short commit of the repository, noting uncommitted changes under fusion/ (``default`` without git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "fusion"], cwd=REPO, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return default
    return head + (" + uncommitted changes under fusion/" if dirty else "")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what ``platform`` says)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
