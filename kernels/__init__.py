"""atjt_kernels: fused loss kernels with their torch references.

``weighted_bce(logits, labels, weights, mask=None, reduce=None, deterministic=False,
backend="auto")`` is the one entry point the training code uses. It returns the
self-normalised weighted BCE L = sum w l / sum w (fp32 scalar; fp64 for fp64 logits), with
gradients to logits and weights (definition, gradients, ``reduce`` and the W = 0 convention:
reference.py).

Backends:
- ``"auto"`` (default): the fused Triton kernel (weighted_bce_triton.py) for CUDA tensors with
  fp32/bf16/fp16 logits and at least ``min_rows`` rows (``TRITON_MIN_ROWS`` by default); the
  torch reference otherwise (CPU tensors, fp64 logits, fewer rows, or CUDA without Triton
  installed). A fused kernel pays only where the loss's memory traffic dominates its launch
  costs; a training step has 10^3-10^4 rows.
- ``"triton"``: always the Triton kernel. On CPU tensors this works only when TRITON_INTERPRET=1
  was set before the kernel module was first imported (Triton's interpreter; the tests do this).
- ``"torch"``: always the reference.

Triton is imported lazily, on the first call that takes the Triton path: importing this
package never imports Triton or touches a GPU driver.

``deterministic=True`` asks for bit-identical results from call to call. Both backends always
give them (fixed-order reductions, no atomics), so the flag never changes the result today; it
states the requirement for any faster variant added later.
"""

from __future__ import annotations

import importlib.util
from typing import Optional

import torch

from .reference import Reduce, bce_with_logits, rows_per_weight, weighted_bce_autograd, weighted_bce_reference

BACKENDS = ("auto", "triton", "torch")
#: rows from which "auto" takes the Triton path. Measured on an H200 (benchmarks/kernel.md): the
#: fused forward + backward was 1.8-3.7x faster than torch's formula at every N from 2^10 rows
#: (the smallest measured; a training step has 10^3-10^4) to 2^26, in fp32 and bf16, where
#: torch's several kernel launches cost more than the one fused pass. Below 2^10 rows the
#: formula is kept: unmeasured, and the loss is then a negligible share of a step.
TRITON_MIN_ROWS = 1 << 10
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_triton_available: Optional[bool] = None


def _has_triton() -> bool:
    global _triton_available
    if _triton_available is None:
        _triton_available = importlib.util.find_spec("triton") is not None
    return _triton_available


def use_triton(logits: torch.Tensor, backend: str = "auto", min_rows: int = TRITON_MIN_ROWS) -> bool:
    """Whether ``weighted_bce`` takes the Triton path for these logits."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend == "triton"
    return logits.is_cuda and logits.numel() >= min_rows and logits.dtype in _TRITON_DTYPES and _has_triton()


def weighted_bce(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    reduce: Reduce = None,
    deterministic: bool = False,
    backend: str = "auto",
    min_rows: int = TRITON_MIN_ROWS,
) -> torch.Tensor:
    """Self-normalised weighted BCE on logits: fused Triton kernel on CUDA, torch reference elsewhere.

    logits: [N] or any shape (rows = elements), fp32/bf16/fp16 (fp64: reference only).
    labels: one per row, any numeric or bool dtype. mask: optional, one per row, nonzero = keep.
    weights: one per row, or N/k of them each covering k consecutive rows (see reference.py);
    the weight gradient comes back in the weights' dtype and shape.
    reduce: sums a float64 [S, W] tensor over ranks (e.g. an all-reduce), so that L and the
    gradients use the global sums.
    backend, min_rows: which implementation (see the module docstring).
    """
    if use_triton(logits, backend, min_rows):
        from .weighted_bce_triton import weighted_bce_triton  # lazy: imports Triton

        return weighted_bce_triton(logits, labels, weights, mask, reduce, deterministic)
    return weighted_bce_reference(logits, labels, weights, mask, reduce)


__all__ = [
    "BACKENDS",
    "TRITON_MIN_ROWS",
    "bce_with_logits",
    "rows_per_weight",
    "use_triton",
    "weighted_bce",
    "weighted_bce_autograd",
    "weighted_bce_reference",
]
