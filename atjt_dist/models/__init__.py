"""Models: the base recommenders (registry below) and the noise recogniser."""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..config import ModelConfig
from .base import ModelSpec, Recommender
from .din import DIN
from .recognizer import NoiseRecognizer

#: name -> builder(spec, model config) of every base recommender
REGISTRY: dict[str, Callable[[ModelSpec, ModelConfig], Recommender]] = {
    "din": DIN,
}


def build_recommender(spec: ModelSpec, cfg: ModelConfig) -> Recommender:
    """The base model named ``cfg.name``; a clear error lists the known names."""
    try:
        builder = REGISTRY[cfg.name]
    except KeyError:
        raise ValueError(f"model.name={cfg.name!r}: expected one of {', '.join(sorted(REGISTRY))}") from None
    return builder(spec, cfg)


__all__ = ["REGISTRY", "ModelSpec", "NoiseRecognizer", "Recommender", "build_recommender", "nn"]
