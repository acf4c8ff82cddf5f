"""Models: the base recommenders (registry below) and the noise recognisers (models.recognizers)."""

from __future__ import annotations

import importlib

from ..config import ModelConfig
from .base import ModelSpec, Recommender, SequentialRecommender
from .recognizers import ItemLevelRecognizer, NoiseRecognizer, PositionAwareRecognizer, Recognizer, build_recognizer

#: name -> "module:Class" of every base recommender (imported on first use)
REGISTRY: dict[str, str] = {
    "din": "atjt_dist.models.din:DIN",
    "dcn": "atjt_dist.models.dcn:DCN",
    "wide_deep": "atjt_dist.models.wide_deep:WideDeep",
    "sasrec": "atjt_dist.models.sasrec:SASRec",
    "fearec": "atjt_dist.models.fearec:FEARec",
    "s3rec": "atjt_dist.models.s3rec:S3Rec",
}


def model_class(name: str) -> type[Recommender]:
    """The class registered under ``name``; a clear error lists the known names."""
    try:
        module, cls = REGISTRY[name].split(":")
    except KeyError:
        raise ValueError(f"model.name={name!r}: expected one of {', '.join(sorted(REGISTRY))}") from None
    return getattr(importlib.import_module(module), cls)


def build_recommender(spec: ModelSpec, cfg: ModelConfig) -> Recommender:
    """The base model named ``cfg.name``, built for the dataset ``spec``."""
    return model_class(cfg.name)(spec, cfg)


__all__ = [
    "REGISTRY",
    "ItemLevelRecognizer",
    "ModelSpec",
    "NoiseRecognizer",
    "PositionAwareRecognizer",
    "Recognizer",
    "Recommender",
    "SequentialRecommender",
    "build_recognizer",
    "build_recommender",
    "model_class",
]
