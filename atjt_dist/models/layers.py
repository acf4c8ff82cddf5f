"""Building blocks shared by the models: Dice, MLPs and DIN-style target attention."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..collectives import global_sum_differentiable


class Dice(nn.Module):
    """Dice activation (Zhou et al., DIN, KDD 2018): p(s) * s + (1 - p(s)) * alpha * s.

    p(s) = sigmoid of s standardised with batch statistics (training) or running ones (eval);
    ``alpha`` is learned per feature. The batch statistics are taken over the valid positions
    only (``mask``) and over the *global* batch when several ranks train together, so the
    activation of a row does not depend on how the batch was split across processes.

    The running statistics (an exponential average with ``momentum``) trail the weights: at the
    learning rates that train on small data they were far behind the last steps, and evaluation
    with them made DIN's test AUC swing by up to 0.26 with the seed. Evaluation therefore uses
    population statistics recomputed over training batches (:func:`population_statistics`),
    as PreciseBN does (Wu and Johnson, "Rethinking 'Batch' in BatchNorm", 2021).
    """

    def __init__(self, num_features: int, eps: float = 1e-8, momentum: float = 0.01) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(num_features))
        self.eps = eps
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        #: while recomputing population statistics: summed global moments [sum, sum of squares,
        #: count] of the batches seen (None otherwise; see population_statistics)
        self.population_moments: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.training:
            flat = x.reshape(-1, x.shape[-1])
            if mask is not None:
                flat = flat[mask.reshape(-1)]
            moments = torch.cat([flat.sum(0), (flat * flat).sum(0), flat.new_tensor([flat.shape[0]])])
            moments = global_sum_differentiable(moments)
            h = x.shape[-1]
            count = moments[-1].clamp_min(1.0)
            mean = moments[:h] / count
            var = (moments[h : 2 * h] / count - mean * mean).clamp_min(0.0)
            with torch.no_grad():
                if self.population_moments is not None:
                    self.population_moments += moments.detach().to(self.population_moments.dtype)
                else:
                    self.running_mean.lerp_(mean.detach(), self.momentum)
                    self.running_var.lerp_(var.detach(), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        p = torch.sigmoid((x - mean) / torch.sqrt(var + self.eps))
        return p * x + (1.0 - p) * self.alpha * x


def dice_layers(module: nn.Module) -> list[Dice]:
    """Every Dice layer inside ``module`` (in module order)."""
    return [m for m in module.modules() if isinstance(m, Dice)]


@contextlib.contextmanager
def population_statistics(module: nn.Module) -> Iterator[list[Dice]]:
    """Recompute the running statistics of every Dice layer in ``module`` exactly.

    Inside the block, forward passes in training mode standardise with their batch statistics
    as usual but, instead of updating the exponential averages, add their global moments to an
    accumulator; on exit each layer's running mean and variance become the pooled mean and
    variance of every position seen (a layer that saw nothing keeps its statistics). Run the
    forwards under ``torch.no_grad()``; yields the Dice layers (empty: nothing to recompute).
    """
    layers = dice_layers(module)
    for d in layers:
        # float64: sums of squares over hundreds of thousands of positions
        d.population_moments = torch.zeros(2 * d.running_mean.numel() + 1, dtype=torch.float64, device=d.running_mean.device)
    try:
        yield layers
        for d in layers:
            h = d.running_mean.numel()
            total = d.population_moments
            count = total[-1]
            if count > 0:
                mean = total[:h] / count
                var = (total[h : 2 * h] / count - mean * mean).clamp_min(0.0)
                d.running_mean.copy_(mean.to(d.running_mean.dtype))
                d.running_var.copy_(var.to(d.running_var.dtype))
    finally:
        for d in layers:
            d.population_moments = None


class PReLU(nn.Module):
    """PReLU with one slope per feature of the *last* dimension (nn.PReLU uses dimension 1,
    which is the sequence axis for [B, L, H] inputs)."""

    def __init__(self, num_features: int, init: float = 0.25) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((num_features,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # relu(x) - a * relu(-x): the same function; on CPU its forward and backward take about
        # a quarter of F.prelu's time (whose slope gradient reduces poorly) on [B*L, H] inputs.
        return F.relu(x) - self.weight * F.relu(-x)


class Dropout(nn.Module):
    """Inverted dropout whose mask costs one random byte per element.

    The recogniser drops out every history position's hidden units, and on CPU torch's
    bernoulli_ (or a uniform draw per element) dominates that layer's cost. Here each 64-bit
    random word yields eight bytes; a unit is kept when its byte is >= round(256 p), so the drop
    probability is p rounded to a multiple of 1/256 (exact for 0.5, the recogniser's; stated in
    ``effective_p``). The kept units are scaled by 1 / (1 - effective_p).
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.threshold = min(int(round(p * 256)), 255)
        self.effective_p = self.threshold / 256

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        n = x.numel()
        words = torch.empty((n + 7) // 8, dtype=torch.int64, device=x.device).random_()
        keep = words.view(torch.uint8)[:n].view(x.shape) >= self.threshold
        return x * keep * (1.0 / (1.0 - self.effective_p))


def activation(name: str, width: int) -> nn.Module:
    """'dice', 'prelu', 'relu' or 'sigmoid' for a layer of ``width`` features."""
    if name == "dice":
        return Dice(width)
    if name == "prelu":
        return PReLU(width)
    if name == "relu":
        return nn.ReLU()
    if name == "sigmoid":
        return nn.Sigmoid()
    raise ValueError(f"unknown activation {name!r}")


class MLP(nn.Module):
    """Linear -> activation (-> dropout) for each hidden size, then a final Linear to ``out``."""

    def __init__(self, inp: int, hidden: list[int], out: int, act: str, dropout: float = 0.0) -> None:
        super().__init__()
        self.linears = nn.ModuleList()
        self.acts = nn.ModuleList()
        width = inp
        for h in hidden:
            self.linears.append(nn.Linear(width, h))
            self.acts.append(activation(act, h))
            width = h
        self.out = nn.Linear(width, out)
        self.dropout = Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self.linears:
            return self.out(x)
        return self.forward_from_first(self.linears[0](x), mask)

    def forward_from_first(self, z: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The network given the first layer's pre-activation ``z`` (computed by the caller)."""
        for i, act in enumerate(self.acts):
            if i > 0:
                z = self.linears[i](z)
            z = act(z, mask) if isinstance(act, Dice) else act(z)
            z = self.dropout(z)
        return self.out(z)


class TargetAttention(nn.Module):
    """DIN's local activation unit: a score per history position from [h; t; h - t; h * t].

    ``normalise='softmax'`` gives DIN's softmax over valid positions; ``'none'`` keeps the raw
    masked scores (the noise recogniser's form). Returns the pooled history [B, D].
    """

    def __init__(self, dim: int, hidden: list[int], act: str, dropout: float = 0.0, normalise: str = "softmax") -> None:
        super().__init__()
        if normalise not in ("softmax", "none"):
            raise ValueError(f"normalise must be 'softmax' or 'none', got {normalise!r}")
        self.normalise = normalise
        if not hidden:
            raise ValueError("target attention needs at least one hidden layer")
        self.mlp = MLP(4 * dim, hidden, 1, act, dropout)

    def forward(self, hist: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.mlp.forward_from_first(self._first_layer(hist, target), mask).squeeze(-1)  # [B, L]
        if self.normalise == "softmax":
            # A row without history gets uniform weights over zero vectors: pooled = 0, no NaN.
            weights = torch.softmax(scores.masked_fill(~mask, -1e30), dim=-1)
        else:
            weights = scores * mask
        # A broadcast multiply and sum: on CPU about 3x faster than bmm/einsum at these sizes.
        return (weights[..., None] * hist).sum(1)

    def _first_layer(self, hist: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """W [h; t; h - t; h * t] + b without building the [B, L, 4D] input.

        With W = [Wa | Wb | Wc | Wd]: W x = (Wa + Wc) h + (Wb - Wc) t + Wd (h * t). The target
        term is computed once per row instead of once per position, and the history terms need
        two D-wide products instead of one 4D-wide: the same function, about half the work.
        """
        lin = self.mlp.linears[0]
        wa, wb, wc, wd = lin.weight.split(hist.shape[-1], dim=1)
        per_row = target @ (wb - wc).T + lin.bias  # [B, H]
        return hist @ (wa + wc).T + (hist * target[:, None, :]) @ wd.T + per_row[:, None, :]
