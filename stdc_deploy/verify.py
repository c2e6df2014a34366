"""Numerical comparison of two artifacts' outputs: max abs error and label agreement."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria for a comparison against a reference."""

    max_abs_error: float = 5e-3
    min_label_agreement: float = 0.9995


@dataclass(frozen=True)
class Parity:
    """How closely ``test`` logits reproduce ``reference`` logits (both N, C, H, W)."""

    shape: tuple[int, ...]
    max_abs_error: float
    mean_abs_error: float
    reference_abs_max: float
    label_agreement: float  # fraction of pixels whose argmax matches

    def passes(self, tol: Tolerance) -> bool:
        return self.max_abs_error <= tol.max_abs_error and self.label_agreement >= tol.min_label_agreement

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
