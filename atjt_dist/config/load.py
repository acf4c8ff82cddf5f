"""Building a config: the defaults, then a YAML file (with ``include:``), then command-line
overrides, then :func:`~atjt_dist.config.validation.validate`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml

from ..errors import ConfigError
from .coerce import _from_mapping, set_key
from .run_sections import Config
from .validation import validate


def _merge(base: dict, top: dict) -> dict:
    """Deep merge of two config mappings; ``top`` wins."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path, _seen: tuple = ()) -> dict:
    """Read a YAML config file into a mapping (empty file = empty mapping).

    A file may start from others: ``include: [a.yaml, b.yaml]`` (paths relative to the file)
    are loaded in order and merged, then the file's own keys override them. This is how
    configs/grid/<dataset>-<model>.yaml combine a dataset's and a model's settings.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.resolve() in _seen:
        raise ConfigError(f"config file {path} includes itself (through {', '.join(str(p) for p in _seen)})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections at the top level")
    includes = data.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"config file {path}: 'include' must be a file name or a list of file names")
    merged: dict = {}
    for inc in includes:
        merged = _merge(merged, load_yaml(path.parent / inc, _seen + (path.resolve(),)))
    return _merge(merged, data)


def parse_overrides(argv: list[str]) -> tuple[Optional[str], list[tuple[str, Any]], list[str]]:
    """Split ``argv`` into (config file, [(dotted key, value)], flags).

    Accepts ``--config FILE``, ``--key=value`` and ``--key value``; a ``--flag`` followed by
    another option or nothing is a boolean ``true`` (e.g. ``--atjt.enabled``); ``--no-key`` sets
    a boolean to false. Values are parsed as YAML scalars (``1e-3``, ``true``, ``null``).
    """
    config_file: Optional[str] = None
    overrides: list[tuple[str, Any]] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: options look like --section.key=value")
        body = arg[2:]
        if "=" in body:
            key, raw = body.split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, raw = body, argv[i + 1]
            i += 2
        else:
            key, raw = body, None
            i += 1
        if key == "config":
            if raw is None:
                raise ConfigError("--config needs a file name")
            config_file = raw
            continue
        if raw is None:
            if key.startswith("no-"):
                overrides.append((key[3:], False))
            else:
                overrides.append((key, True))
            continue
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        if raw.strip() == "":
            value = ""
        overrides.append((key, value))
    return config_file, overrides, rest


def build_config(
    argv: Optional[list[str]] = None,
    config_file: Optional[str | Path] = None,
    base: Optional[Config] = None,
) -> Config:
    """Defaults <- YAML file <- command-line overrides; raises ConfigError on any bad key."""
    cfg = base if base is not None else Config()
    file_from_argv, overrides, _ = parse_overrides(list(argv or []))
    for path in [p for p in (config_file, file_from_argv) if p is not None]:
        _from_mapping(cfg, load_yaml(path), "")
    for key, value in overrides:
        set_key(cfg, key, value)
    validate(cfg)
    return cfg
