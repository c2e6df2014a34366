import numpy as np
import pytest

from stdc_deploy.parity import Tolerance, compare_logits


def test_compare_logits_on_known_values():
    ref = np.zeros((1, 2, 2, 2), np.float32)
    ref[0, 0] = [[3.0, 3.0], [3.0, -40.0]]  # class 0 wins except at (1, 1)
    test = ref.copy()
    test[0, 1, 0, 0] = 4.0  # flips pixel (0, 0) to class 1
    test[0, 0, 1, 0] += 0.5
    p = compare_logits(ref, test)
    assert p.max_abs_error == pytest.approx(4.0)
    assert p.mean_abs_error == pytest.approx(4.5 / 8)
    assert p.reference_abs_max == 40.0
    assert p.label_agreement == 0.75


def test_tolerance_scales_with_logit_range():
    tol = Tolerance(atol=1e-3, rtol=1e-4, min_label_agreement=0.999)
    assert tol.max_error_for(100.0) == pytest.approx(1.1e-2)
    ref = np.zeros((1, 3, 4, 4), np.float32)
    ref[:, 0] = 100.0
    assert compare_logits(ref, ref + 5e-3).passes(tol)  # within 1e-3 + 1e-4 * 100
    assert not compare_logits(ref, ref + 2e-2).passes(tol)
    small = ref / 100.0  # logits within +-1: limit 1.1e-3
    assert not compare_logits(small, small + 5e-3).passes(tol)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes differ"):
        compare_logits(np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 3, 4)))
