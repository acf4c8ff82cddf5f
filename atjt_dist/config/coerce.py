"""Typed assignment: a value from YAML or the command line checked against a field's type
annotation and converted to it, or a :class:`ConfigError` that names the key and the expected
type (for choices, the allowed values)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import TYPE_CHECKING, Any, Literal, Union

import yaml

from ..errors import ConfigError

if TYPE_CHECKING:
    from .run_sections import Config


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"mapping of {_type_name(k)} to {_type_name(v)}"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {tp.__name__} fields"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise bad
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise bad
    if origin is list:
        if isinstance(value, str):  # "--x.y=1,2,3" on the command line
            value = [yaml.safe_load(v) for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise bad
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if isinstance(value, str):  # "--x.y=a=1,b=2" (or a:1) on the command line
            pairs = [v.replace(":", "=", 1) if "=" not in v else v for v in value.split(",") if v.strip()]
            if not all("=" in v for v in pairs):
                raise bad
            value = {k.strip(): yaml.safe_load(v) for k, v in (p.split("=", 1) for p in pairs)}
        if not isinstance(value, dict):
            raise bad
        key_tp, value_tp = typing.get_args(tp)
        return {_coerce(k, key_tp, key): _coerce(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return _from_mapping(tp(), value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string; so do our flags
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise ConfigError(f"config key '{key}': expected a finite number, got {value!r}")
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise bad


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _from_mapping(obj: Any, mapping: dict, prefix: str) -> Any:
    types_ = _field_types(type(obj))
    for name, value in mapping.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        attr = str(name).replace("-", "_")
        if attr not in types_:
            allowed = ", ".join(sorted(types_))
            raise ConfigError(f"unknown config key '{key}'; allowed keys here: {allowed}")
        tp = types_[attr]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            _from_mapping(getattr(obj, attr), value, key)
        else:
            setattr(obj, attr, _coerce(value, tp, key))
    return obj


def set_key(cfg: Config, dotted: str, value: Any) -> None:
    """Assign ``value`` (already parsed) to the dotted key, with type checking."""
    parts = dotted.replace("-", "_").split(".")
    mapping: Any = value
    for part in reversed(parts):
        mapping = {part: mapping}
    _from_mapping(cfg, mapping, "")
