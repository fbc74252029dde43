"""The Fisher-blocks lab's numbers against an exact identity.

K-FAC is block diagonal and F - blockdiag(F) lives only off the diagonal
blocks, so the two differences are orthogonal in the Frobenius inner product:
err(K-FAC)^2 = err(blockdiag)^2 + ||blockdiag(F) - K||^2 / ||F||^2.
"""

import numpy as np
import pytest

from natgrad.snapshots import fisher_snapshot


@pytest.mark.parametrize("steps", [0, 50])
def test_pythagoras_between_block_diagonal_and_kfac(steps):
    s = fisher_snapshot(train_steps=steps, examples=128)
    F, B, K = (s.matrices[k] for k in ("exact Fisher", "block diagonal", "K-FAC"))
    assert F.shape == (444, 444) and s.boundaries == [204, 334]
    rhs = s.errors["block diagonal"] ** 2 + (np.linalg.norm(B - K) / np.linalg.norm(F)) ** 2
    assert s.errors["K-FAC"] ** 2 == pytest.approx(rhs, rel=1e-9)
    assert 0 < s.errors["block diagonal"] < 1
    np.testing.assert_allclose(F, F.T, atol=1e-12)
    assert np.linalg.eigvalsh(F).min() > -1e-10  # a Fisher is positive semi-definite


def test_training_lowers_the_loss():
    assert fisher_snapshot(train_steps=100, examples=64).train_loss < fisher_snapshot(train_steps=0, examples=64).train_loss


def test_a_fisher_snapshot_needs_examples():
    with pytest.raises(ValueError, match="examples must be >= 1"):  # (0 gave NaN errors)
        fisher_snapshot(examples=0)
