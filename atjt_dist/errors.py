"""The errors a user can cause or a run can stop with: one line each, no traceback.

Every command line (atjt_dist.cli) prints them as ``PROG: error: MESSAGE`` and exits with
status 2 (a :class:`RunError` with its own ``exit_status``); ``ATJT_DEBUG=1`` shows the traceback.
This module imports nothing, so that any layer can raise them.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message says which and what is allowed."""


class DatasetError(ValueError):
    """A dataset directory is missing, incomplete or inconsistent; the message says what to do."""


class RunError(RuntimeError):
    """A run stopped for a reason its message fully explains (a non-finite loss, a dead peer):
    one line on stderr and ``exit_status``, no traceback (subclasses: atjt_dist.faults)."""

    exit_status = 2


class ReportError(ValueError):
    """An input of ``atjt report`` is not a run or compare directory, or a report dependency
    (matplotlib) is missing."""
