"""atjt_kernels: fused loss kernels with their torch references.

``weighted_bce(logits, labels, weights, mask=None, reduce=None)`` is the one entry point the
training code uses.
"""

from .reference import bce_with_logits, weighted_bce_autograd, weighted_bce_reference


def weighted_bce(logits, labels, weights, mask=None, reduce=None):
    """Self-normalised weighted BCE (see reference.py for the definition and gradients)."""
    return weighted_bce_reference(logits, labels, weights, mask, reduce)


__all__ = ["bce_with_logits", "weighted_bce", "weighted_bce_autograd", "weighted_bce_reference"]
