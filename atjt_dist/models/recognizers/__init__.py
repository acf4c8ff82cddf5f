"""The noise recognisers g: P(clean | history, target) of a training sequence, one per kind
(``atjt.recognizer.kind``):

- ``din`` (:class:`NoiseRecognizer`): the paper's DIN-like target-attention network;
- ``din_pos`` (:class:`PositionAwareRecognizer`): the same with reverse-position embeddings;
- ``transformer`` (:class:`ItemLevelRecognizer`): a bidirectional self-attention replaced-item
  detector that scores every history item and derives the sequence's P(clean) from them.

All share one interface (recognizers/base.py): ``forward(batch) -> seq_logits [B]`` and
``forward_items(batch, frozen_user_rows=0) -> (seq_logits [B], item_logits [B, L] or None)``,
with ``item_level`` telling whether item logits exist.
"""

from __future__ import annotations

from ...config import RecognizerConfig
from ..base import ModelSpec
from .base import MAX_LOGIT, Recognizer, log1mexp, reverse_position_ids, sequence_logits, split_user_rows
from .din import NoiseRecognizer, PositionAwareRecognizer
from .transformer import ItemLevelRecognizer

#: atjt.recognizer.kind -> the class
KINDS: dict[str, type[Recognizer]] = {
    "din": NoiseRecognizer,
    "din_pos": PositionAwareRecognizer,
    "transformer": ItemLevelRecognizer,
}


def build_recognizer(spec: ModelSpec, cfg: RecognizerConfig, table_prefix: str = "rg") -> Recognizer:
    """The recogniser of kind ``cfg.kind`` for the dataset ``spec``; ``table_prefix`` keeps its
    table names unique in a module tree (rg0, rg1, ... for the phases' recognisers)."""
    cfg.check()
    try:
        cls = KINDS[cfg.kind]
    except KeyError:
        raise ValueError(f"atjt.recognizer.kind={cfg.kind!r}: expected one of {', '.join(KINDS)}") from None
    return cls(spec, cfg, table_prefix=table_prefix)


__all__ = [
    "KINDS",
    "MAX_LOGIT",
    "ItemLevelRecognizer",
    "NoiseRecognizer",
    "PositionAwareRecognizer",
    "Recognizer",
    "build_recognizer",
    "log1mexp",
    "reverse_position_ids",
    "sequence_logits",
    "split_user_rows",
]
