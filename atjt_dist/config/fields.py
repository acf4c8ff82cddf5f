"""The ``knob`` field constructor that every config section declares its fields with."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import field
from typing import Any


def knob(default: Any, help: str) -> Any:  # noqa: A002 - "help" reads best at call sites
    """A config field with a default and its documentation."""
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        # A deep copy per instance: nested sections and lists are never shared between configs.
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})
