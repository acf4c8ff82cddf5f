"""Building blocks shared by the models: Dice, keyed dropout, MLPs and DIN-style target attention."""

from __future__ import annotations

import contextlib
import hashlib
import math
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


# ---------------------------------------------------------------------------------------------
# Keyed dropout
# ---------------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15  # splitmix64's increment (the golden ratio in 64 bits)
_MIX = ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB), (31, None))  # splitmix64's finaliser


def _as_int64(v: int) -> int:
    """An unsigned 64-bit value as the int64 that has the same bits."""
    v &= _MASK64
    return v - (1 << 64) if v >> 63 else v


def mix64(z: int) -> int:
    """splitmix64's finaliser (Steele, Lea, Flood 2014) of a 64-bit value, as an unsigned int:
    the reference of :func:`mix64_`."""
    z &= _MASK64
    for shift, mult in _MIX:
        z ^= z >> shift
        if mult is not None:
            z = (z * mult) & _MASK64
    return z


def mix64_(z: torch.Tensor) -> torch.Tensor:
    """:func:`mix64` of every element of an int64 tensor, in place (same bits, as int64).

    int64 products wrap modulo 2^64 as the unsigned ones do; torch's right shift of int64
    copies the sign bit, so the bits it shifts in are masked off to make it a logical shift.
    """
    t = torch.empty_like(z)
    for shift, mult in _MIX:
        torch.bitwise_right_shift(z, shift, out=t)
        t &= (1 << (64 - shift)) - 1
        z ^= t
        if mult is not None:
            z *= _as_int64(mult)
    return z


def dropout_key(*parts: int) -> int:
    """One 64-bit key from integers (seed, step, layer id, call): a chain of :func:`mix64`."""
    h = 0
    for v in parts:
        h = mix64((h ^ (v & _MASK64)) + _GAMMA)
    return h


def layer_id(name: str) -> int:
    """A dropout layer's id from its module path (the same in every process and every run)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little") >> 1


class _StepKey:
    """The key of one training step's masks: (seed, step) and each layer's calls so far."""

    def __init__(self, seed: int, step: int) -> None:
        self.seed, self.step = seed, step
        self.calls: dict[int, int] = {}

    def next(self, layer: int) -> int:
        call = self.calls.get(layer, 0)
        self.calls[layer] = call + 1
        return dropout_key(self.seed, self.step, layer, call)


class _DropoutState:
    """What keys the masks of the forward in progress: the step's key (None outside a training
    step) and the global row ids of the rows the current model call reads (None: unknown)."""

    key: Optional[_StepKey] = None
    rows: Optional[torch.Tensor] = None
    #: bool [B] aligned with ``rows``: rows that pass through every dropout layer unchanged
    exempt: Optional[torch.Tensor] = None


_STATE = _DropoutState()


@contextlib.contextmanager
def dropout_step(seed: int, step: int) -> Iterator[None]:
    """Key every dropout mask drawn inside the block to (``seed``, ``step``); each layer's call
    counter starts at 0. The trainer wraps each training step's forward in it; the model calls
    inside must name their rows with :func:`dropout_rows`."""
    previous = _STATE.key
    _STATE.key = _StepKey(seed, step)
    try:
        yield
    finally:
        _STATE.key = previous


@contextlib.contextmanager
def dropout_rows(rows: Optional[torch.Tensor], exempt: Optional[torch.Tensor] = None) -> Iterator[None]:
    """Inside the block, dropout inputs are rows of a batch whose global row ids are ``rows``
    (int64 [B], on the inputs' device; ``SequenceBatch.row_ids``): an input's first dimension
    is B rows, or B row-major groups ([B * k, ...], e.g. [B * heads, L, L]), unless the call
    passes its rows (packed layouts). ``None``: the rows are not known (local positions).
    ``exempt`` (bool [B], optional): rows that no dropout layer drops out, as in eval mode
    (the ATJT weights' rows with ``atjt.weight_dropout=false``), while the others are."""
    previous = _STATE.rows, _STATE.exempt
    _STATE.rows, _STATE.exempt = rows, exempt
    try:
        yield
    finally:
        _STATE.rows, _STATE.exempt = previous


def name_dropout_layers(module: nn.Module) -> None:
    """Give every :class:`Dropout` inside ``module`` the id of its module path (called once
    the model tree is built, before it is wrapped: the same ids in every process)."""
    for name, m in module.named_modules():
        if isinstance(m, Dropout):
            m.layer_id = layer_id(name)


def keep_mask(
    shape: torch.Size, device: torch.device, threshold: int, layer: int, rows: Optional[torch.Tensor] = None, slots: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """bool ``shape``: the units a dropout layer keeps (see :class:`Dropout`).

    The input is seen as [n, m]: n groups (its first dimension's entries, or the current rows
    when ``rows`` is None), m elements each. Group i belongs to the row whose global id is
    ``R[rows[i]]`` (R = the current rows; ``rows[i]`` itself without them), at slot ``slots[i]``
    of it (0 by default). Element j of slot s of a row is byte (s * W + j) mod 8 of splitmix64's
    output number (s * W + j) div 8 of the row's stream, W = 8 * ceil(m / 8); the stream is
    seeded by the row's id and the key of (seed, step, layer, call). Eight units per 64-bit
    hash: the mask costs about as much as one random byte per unit.
    """
    state = _STATE
    if state.key is not None and state.rows is None:
        raise RuntimeError(
            "dropout inside a training step (dropout_step) needs the global ids of its rows: run the model call inside dropout_rows(batch.row_ids)"
        )
    if state.key is not None:
        key = state.key.next(layer)
    else:  # outside a training step: a fresh key from torch's generator, as nn.Dropout would draw
        key = dropout_key(int(torch.randint(0, 1 << 62, ())), layer)
    if rows is None:
        n = len(state.rows) if state.rows is not None else shape[0]
        if n == 0 or shape[0] % n:
            raise ValueError(f"a dropout input of shape {tuple(shape)} is not row-major groups of {n} rows")
        ids = state.rows if state.rows is not None else torch.arange(n, device=device)
    else:
        n = rows.shape[0]
        if n != shape[0]:
            raise ValueError(f"{n} row indices for a dropout input of {shape[0]} entries")
        ids = state.rows[rows] if state.rows is not None else rows
    m = math.prod(shape) // n
    words = -(-m // 8)
    base = mix64_(ids.to(device=device, dtype=torch.int64) * _as_int64(_GAMMA) + _as_int64(key))
    if slots is not None:
        base += slots.to(torch.int64) * _as_int64(words * _GAMMA)
    counters = torch.arange(1, words + 1, device=device, dtype=torch.int64) * _as_int64(_GAMMA)
    stream = mix64_(base[:, None] + counters[None, :])  # [n, words]
    return (stream.view(torch.uint8)[:, :m] >= threshold).reshape(shape)


class Dropout(nn.Module):
    """Inverted dropout whose masks are a function of (seed, step, layer, call, global row,
    element), so that a row is dropped out the same way whichever process computes it, in a
    batch of any size.

    Inside a training step (:func:`dropout_step`, with the rows named by :func:`dropout_rows`)
    the mask of element e of the row with global id r, at the c-th call in step s of the layer
    with id ``layer_id`` (its module path: :func:`name_dropout_layers`), is a counter-based hash
    of those integers (splitmix64, :func:`keep_mask`): it does not depend on the other rows, on
    the process or on any generator's state, so a run on any number of data-parallel processes
    draws the masks of the one-process run, and a resumed run those of the uninterrupted one.
    Outside a training step (unit use, pre-training) each call draws its key from torch's global
    generator (``torch.manual_seed`` makes it repeatable, as for nn.Dropout) and the rows are
    the input's local positions. In eval mode it is the identity.

    A unit is kept when its hash byte is >= round(256 p), so the drop probability is p rounded
    to a multiple of 1/256 (exact for 0.5, the recogniser's; stated in ``effective_p``); the
    kept units are scaled by 1 / (1 - effective_p).

    ``forward(x, rows=None, slots=None)``: ``x``'s first dimension holds the current rows (or
    row-major groups of them); for packed layouts, ``rows`` [x.shape[0]] gives the row (an index
    into the current rows) of each entry and ``slots`` its position in that row, e.g. a packed
    token's position in its sequence.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.threshold = min(int(round(p * 256)), 255)
        self.effective_p = self.threshold / 256
        #: this layer's id in the masks' key (name_dropout_layers sets it from the module path)
        self.layer_id = 0

    def forward(self, x: torch.Tensor, rows: Optional[torch.Tensor] = None, slots: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self.training or self.threshold == 0 or x.numel() == 0:
            return x
        keep = keep_mask(x.shape, x.device, self.threshold, self.layer_id, rows, slots)
        out = x * keep * (1.0 / (1.0 - self.effective_p))
        exempt = _STATE.exempt
        if exempt is None:
            return out
        # Exempt rows pass unchanged: broadcast their flags over the input as keep_mask lays
        # it out (row-major groups of the current rows, or the given rows of packed entries).
        flags = exempt if rows is None else exempt[rows]
        n = flags.shape[0]
        return torch.where(flags[:, None], x.reshape(n, -1), out.reshape(n, -1)).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"p={self.p}"


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
    """Linear -> activation (-> dropout) for each hidden size, then a final Linear to ``out``
    (with a bias unless ``out_bias`` is false)."""

    def __init__(self, inp: int, hidden: list[int], out: int, act: str, dropout: float = 0.0, out_bias: bool = True) -> None:
        super().__init__()
        self.linears = nn.ModuleList()
        self.acts = nn.ModuleList()
        width = inp
        for h in hidden:
            self.linears.append(nn.Linear(width, h))
            self.acts.append(activation(act, h))
            width = h
        self.out = nn.Linear(width, out, bias=out_bias)
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
        # Under softmax a shift of every score changes nothing, so a bias on the score would get
        # only rounding noise as its gradient; without weight decay Adagrad scales that noise up
        # into steps that differ with the process count. The raw scores keep their bias.
        self.mlp = MLP(4 * dim, hidden, 1, act, dropout, out_bias=normalise != "softmax")

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
