"""Numerical comparison of two artifacts' outputs: max abs error and label agreement."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria for a comparison against a reference.

    The allowed error grows with the logits' range (``atol + rtol * max|reference|``):
    float32 rounding differences between runtimes scale with the activations, and a
    trained model's logits may span +-40 or +-150. Real export bugs (a wrong resize
    mode, a missing bias) show up as errors of order 1 and a collapse in agreement.
    """

    atol: float = 1e-3
    rtol: float = 1e-4
    min_label_agreement: float = 0.9995

    def max_error_for(self, reference_abs_max: float) -> float:
        return self.atol + self.rtol * reference_abs_max

    def describe(self, reference_abs_max: float) -> str:
        if self.atol == float("inf"):
            return f"agreement >= {self.min_label_agreement:.2%} (no logit error limit)"
        return (f"max abs error <= {self.max_error_for(reference_abs_max):.2e} "
                f"({self.atol:g} + {self.rtol:g} x {reference_abs_max:.1f}), "
                f"agreement >= {self.min_label_agreement:.2%}")


# FP16 keeps 11 significant bits: errors of ~1% of the logit range are rounding, and
# near-tie pixels flip (random weights have many; trained models far fewer).
FP16_TOLERANCE = Tolerance(atol=0.05, rtol=0.02, min_label_agreement=0.98)


@dataclass(frozen=True)
class Parity:
    """How closely ``test`` logits reproduce ``reference`` logits (both N, C, H, W)."""

    shape: tuple[int, ...]
    max_abs_error: float
    mean_abs_error: float
    reference_abs_max: float
    label_agreement: float  # fraction of pixels whose argmax matches

    def passes(self, tol: Tolerance) -> bool:
        return (self.max_abs_error <= tol.max_error_for(self.reference_abs_max)
                and self.label_agreement >= tol.min_label_agreement)

    def describe(self) -> str:
        size = "x".join(map(str, self.shape))
        return (f"{size}: max abs error {self.max_abs_error:.2e} (logits within "
                f"+-{self.reference_abs_max:.1f}), label agreement {self.label_agreement:.4%}")


def compare_logits(reference: np.ndarray, test: np.ndarray) -> Parity:
    if reference.shape != test.shape:
        raise ValueError(f"output shapes differ: {reference.shape} vs {test.shape}")
    ref = reference.astype(np.float32, copy=False)
    diff = np.abs(ref - test.astype(np.float32, copy=False))
    agreement = float(np.mean(ref.argmax(1) == test.argmax(1)))
    return Parity(tuple(ref.shape), float(diff.max()), float(diff.mean()), float(np.abs(ref).max()), agreement)


# INT8 logits are coarse by design: judge them by label agreement only
INT8_TOLERANCE = Tolerance(atol=float("inf"), rtol=0.0, min_label_agreement=0.90)
_RANK = {"fp32": 0, "bf16": 1, "fp16": 1, "int8": 2}


def default_tolerance(*precisions: str) -> Tolerance:
    """The tolerance for comparing artifacts of these precisions (the coarsest decides)."""
    worst = max(_RANK.get(p, 0) for p in precisions)
    return (Tolerance(), FP16_TOLERANCE, INT8_TOLERANCE)[worst]
