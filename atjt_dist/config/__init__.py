"""The typed configuration tree of atjt-dist.

One dataclass per section; every field is declared with :func:`knob`, which carries the
field's documentation (``atjt_dist.train --help`` prints it, ``docs/config.md`` is generated
from it). A config is built from the defaults, then a YAML file (``--config FILE``), then
command-line overrides (``--section.key=value`` or ``--section.key value``), in that order.

Unknown keys and values of the wrong type are :class:`ConfigError` s that name the key, the
expected type and, for choices, the allowed values. The resolved config is written next to every
output (``config.yaml`` in the run directory) so a run can be repeated with ``--config``.

The package's modules, each importable on its own but normally used through the names below:

- ``fields``: :func:`knob`, the documented field constructor;
- ``data_sections``: ``data`` and ``data.synthetic``;
- ``model_sections``: ``model`` and its per-model subsections;
- ``run_sections``: the ATJT recogniser and schedule, objective, train, eval, log, dist and
  checkpoint sections, and :class:`Config`, the root;
- ``coerce``: typed assignment of one value (:func:`set_key`);
- ``load``: YAML files, command-line overrides and :func:`build_config`;
- ``validation``: the cross-field checks (:func:`validate`);
- ``output``: plain data, YAML and the documentation table (:func:`describe`, :func:`config_doc`).

Nothing here imports torch: ``--help`` and config errors stay fast.
"""

from __future__ import annotations

from ..errors import ConfigError
from .coerce import _coerce as _coerce
from .coerce import _field_types as _field_types
from .coerce import _from_mapping as _from_mapping
from .coerce import _type_name as _type_name
from .coerce import set_key
from .data_sections import DataConfig, SyntheticConfig
from .fields import knob
from .load import _merge as _merge
from .load import build_config, load_yaml, parse_overrides
from .model_sections import DCNConfig, DINConfig, FEARecConfig, ModelConfig, S3RecConfig, SASRecConfig, WideDeepConfig
from .output import CONFIG_DOC_HEADER, config_doc, describe, dump_yaml, iter_fields, to_dict
from .run_sections import (
    ATJTConfig,
    CheckpointConfig,
    Config,
    DistConfig,
    EvalConfig,
    LogConfig,
    ObjectiveConfig,
    RecognizerConfig,
    TrainConfig,
)
from .validation import validate

__all__ = [
    "ATJTConfig",
    "CONFIG_DOC_HEADER",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DCNConfig",
    "DINConfig",
    "DataConfig",
    "DistConfig",
    "EvalConfig",
    "FEARecConfig",
    "LogConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "RecognizerConfig",
    "S3RecConfig",
    "SASRecConfig",
    "SyntheticConfig",
    "TrainConfig",
    "WideDeepConfig",
    "build_config",
    "config_doc",
    "describe",
    "dump_yaml",
    "iter_fields",
    "knob",
    "load_yaml",
    "parse_overrides",
    "set_key",
    "to_dict",
    "validate",
]
