"""Optimisers: fused sparse Adagrad for the embedding tables, torch Adagrad for the rest.

METHOD.md section 5: Adagrad everywhere; the recommender at ``train.lr``, recogniser j at
``atjt.recognizer_lrs[j]`` (the last value repeats), weight decay ``train.weight_decay``.

Embedding tables are updated inside the backward pass by FBGEMM's exact Adagrad (TorchRec's
fused optimiser): the optimiser class and its arguments are attached to each table's parameter
before sharding, so every table gets its model's learning rate. Weight decay on a table is
applied to the rows a batch touches (sparse L2), the usual semantics for embedding tables; dense
parameters get ordinary L2 weight decay.
"""

from __future__ import annotations

import re
from typing import Callable

import torch
from fbgemm_gpu.split_table_batched_embeddings_ops_training import WeightDecayMode
from torch import nn
from torch.distributed.optim import _apply_optimizer_in_backward
from torchrec.optim import optimizers as trec_optim
from torchrec.optim.optimizers import in_backward_optimizer_filter

from .config import Config

ADAGRAD_EPS = 1e-10  # torch.optim.Adagrad's default, used for the tables too
_RECOGNIZER = re.compile(r"(?:^|\.)recognizers\.(\d+)\.")


def learning_rate(cfg: Config, param_name: str) -> float:
    """The learning rate of a parameter, from the model it belongs to."""
    m = _RECOGNIZER.search(param_name)
    if m is None:
        return cfg.train.lr
    lrs = cfg.atjt.recognizer_lrs
    return lrs[min(int(m.group(1)), len(lrs) - 1)]


def _is_table(name: str) -> bool:
    return ".embeddings.embeddings." in name or name.startswith("embeddings.embeddings.")


def build_optimizers(model: nn.Module, cfg: Config) -> Callable[[nn.Module], torch.optim.Optimizer]:
    """Attach the fused Adagrad to every embedding table of ``model`` (before sharding) and
    return a factory that builds the dense Adagrad for the sharded model."""
    for name, param in model.named_parameters():
        if _is_table(name):
            _apply_optimizer_in_backward(
                trec_optim.Adagrad,
                [param],
                {
                    "lr": learning_rate(cfg, name),
                    "eps": ADAGRAD_EPS,
                    "weight_decay": cfg.train.weight_decay,
                    "weight_decay_mode": WeightDecayMode.L2,
                },
            )

    def dense_optimizer(sharded: nn.Module) -> torch.optim.Optimizer:
        groups: dict[float, list[nn.Parameter]] = {}
        for name, param in in_backward_optimizer_filter(sharded.named_parameters()):
            if param.requires_grad:
                groups.setdefault(learning_rate(cfg, name), []).append(param)
        return torch.optim.Adagrad(
            [{"params": ps, "lr": lr} for lr, ps in groups.items()],
            lr=cfg.train.lr,
            eps=ADAGRAD_EPS,
            weight_decay=cfg.train.weight_decay,
        )

    return dense_optimizer
