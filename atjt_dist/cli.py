"""What every command-line entry point shares: --help from the config tree, and errors.

A bad config key, a missing dataset or a similar user error prints one line on stderr and
exits with status 2 (a traceback only with ATJT_DEBUG=1); so does a :class:`RunError` (a run
stopped by a fault it explains, with its own exit status); other failures propagate.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from .config import ConfigError, describe
from .data.layout import DatasetError

USER_ERRORS = (ConfigError, DatasetError, FileNotFoundError)


class RunError(RuntimeError):
    """A run stopped for a reason its message fully explains (a non-finite loss, a dead peer):
    one line on stderr and ``exit_status``, no traceback (subclasses: atjt_dist.faults)."""

    exit_status = 2


def print_help(prog: str, summary: str) -> None:
    """Usage, then every config key with its type, default and meaning."""
    print(f"usage: {prog} [--config FILE] [--section.key=value ...]\n\n{summary}\n")
    print("Config keys (YAML sections or --section.key=value overrides):\n")
    print(describe())


def run_cli(main: Callable[[list[str]], int], argv: list[str] | None, prog: str, summary: str) -> int:
    """Run ``main(argv)``, turning user errors into one line on stderr and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print_help(prog, summary)
        return 0
    try:
        return main(argv)
    except (*USER_ERRORS, RunError) as exc:
        if os.environ.get("ATJT_DEBUG"):
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_status if isinstance(exc, RunError) else 2
