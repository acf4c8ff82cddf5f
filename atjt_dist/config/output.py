"""The config as output: plain data and YAML (``RUN_DIR/config.yaml``), and its documentation,
the table of every key that ``--help-all`` prints and ``docs/config.md`` is generated from."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from .coerce import _field_types, _type_name
from .run_sections import Config


def to_dict(cfg: Any) -> dict:
    """The config as plain data (what ``config.yaml`` holds)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any, path: str | Path) -> None:
    """Write the resolved config; loading it with --config reproduces the run's config."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def iter_fields(cls: type = Config, prefix: str = ""):
    """Yield (dotted key, type, default, help) for every leaf field of the tree."""
    types_ = _field_types(cls)
    instance = cls()
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = types_[f.name]
        if dataclasses.is_dataclass(tp):
            yield from iter_fields(tp, key + ".")
        else:
            yield key, tp, getattr(instance, f.name), f.metadata.get("help", "")


def describe(cls: type = Config) -> str:
    """A Markdown table of every config key (the source of docs/config.md and --help)."""
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, tp, default, help_ in iter_fields(cls):
        lines.append(f"| `{key}` | {_type_name(tp)} | `{default!r}` | {help_} |")
    return "\n".join(lines) + "\n"


CONFIG_DOC_HEADER = """# Configuration reference

Every key of the config tree (`atjt_dist/config/`), its type, default and meaning. A run's
config is these defaults, then `--config FILE` (YAML, sections as below; `include: [...]` pulls
in other files first), then `--section.key=value` overrides. The resolved config is written to
`RUN_DIR/config.yaml`.

This file is generated: `python -m atjt_dist.config > docs/config.md` (a test checks it is
current).

"""


def config_doc() -> str:
    """docs/config.md: a short header and the table of every key (:func:`describe`)."""
    return CONFIG_DOC_HEADER + describe()
