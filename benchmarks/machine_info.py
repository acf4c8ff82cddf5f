"""The machine and versions lines every benchmark report starts with (one place for them).

The benchmark scripts run as ``python benchmarks/<name>.py``, so this module is importable as
``machine_info`` from them (the script's folder is on sys.path).
"""

from __future__ import annotations

import importlib
import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() where that is missing)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def memory_gib() -> float:
    """Physical memory in GiB."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def machine_line() -> str:
    """'N cores (CPU), M GiB RAM, OS release' for a report's header."""
    return f"{os.cpu_count()} cores ({cpu_model()}), {memory_gib():.0f} GiB RAM, {platform.system()} {platform.release()}"


def versions_line(*modules: str) -> str:
    """'Python x, torch y, ...' for the named modules (imported here, so only pass installed ones)."""
    parts = [f"Python {platform.python_version()}"]
    parts += [f"{name} {importlib.import_module(name).__version__}" for name in modules]
    return ", ".join(parts)
