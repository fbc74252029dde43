"""natgrad.tasks.digits: data shapes and ranges, model structure, seeding."""

import pytest
import torch
from torch import nn

from natgrad.tasks import autoencoder_loss, digits_autoencoder, digits_classifier, load_digits_tensors


def test_digits_shapes_ranges_and_labels():
    X, y = load_digits_tensors()
    assert X.shape == (1797, 64) and X.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.int64
    assert X.min().item() == 0.0 and X.max().item() == 1.0
    # raw pixels are integers 0..16, so scaled values are multiples of 1/16
    assert torch.equal(X * 16, (X * 16).round())
    counts = torch.bincount(y, minlength=10)
    assert counts.numel() == 10 and counts.sum().item() == 1797
    assert counts.min().item() >= 170  # sklearn's digits: 174..183 per class


@pytest.mark.parametrize("through", ["file", "sklearn"])
def test_digits_are_sklearns_load_digits(through, monkeypatch):
    """The file read without importing scikit-learn, and the fallback through it, give exactly
    sklearn.datasets.load_digits() (pixels / 16, labels)."""
    from sklearn.datasets import load_digits

    from natgrad.tasks import digits

    digits._digits_numpy.cache_clear()
    if through == "sklearn":
        monkeypatch.setattr(digits, "_digits_file", lambda: None)
    try:
        X, y = digits._digits_numpy()
        ref = load_digits()
        assert (X == ref.data / 16.0).all() and (y == ref.target).all() and y.dtype.name == "int64"
    finally:
        digits._digits_numpy.cache_clear()


def test_digits_dtype_device_and_repeatable():
    X64, y64 = load_digits_tensors(dtype=torch.float64, device="cpu")
    X32, y32 = load_digits_tensors()
    assert X64.dtype == torch.float64 and X64.device.type == "cpu"
    assert torch.equal(X64.float(), X32) and torch.equal(y64, y32)
    X64[0, 0] = 5.0  # callers get their own copy
    assert load_digits_tensors(dtype=torch.float64)[0][0, 0].item() != 5.0


@pytest.mark.parametrize(
    "factory, widths", [(digits_autoencoder, (64, 128, 64, 32, 8, 32, 64, 128, 64)), (digits_classifier, (64, 32, 10))]
)
def test_model_structure(factory, widths):
    model = factory()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == list(zip(widths[:-1], widths[1:], strict=True))
    assert isinstance(model[-1], nn.Linear)  # no activation after the last layer
    assert len(model) == 2 * len(linears) - 1
    assert all(isinstance(m, nn.Tanh) for m in list(model)[1::2])
    out = model(torch.rand(5, widths[0]))
    assert out.shape == (5, widths[-1])


def test_custom_widths_and_activation():
    model = digits_classifier(widths=(64, 16, 16, 10), act=nn.ReLU)
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]


@pytest.mark.parametrize("factory", [digits_autoencoder, digits_classifier])
def test_seed_determinism_and_global_rng_untouched(factory):
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = factory(seed=7)
    after = torch.rand(3)
    assert torch.equal(before, after)  # building a model does not advance the global RNG
    b = factory(seed=7)
    c = factory(seed=8)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pb)
        assert not torch.equal(pa, pc)


def test_autoencoder_loss_matches_mse():
    torch.manual_seed(0)
    out, target = torch.randn(6, 64), torch.rand(6, 64)
    # 0.5 * sum over the 64 outputs, mean over the batch = 0.5 * 64 * elementwise mean
    expected = 0.5 * 64 * nn.functional.mse_loss(out, target)
    assert torch.allclose(autoencoder_loss(out, target), expected)
    manual = sum(0.5 * ((out[b] - target[b]) ** 2).sum() for b in range(6)) / 6
    assert torch.allclose(autoencoder_loss(out, target), manual)


def test_autoencoder_reconstructs_digits_shape():
    X, _ = load_digits_tensors()
    model = digits_autoencoder()
    loss = autoencoder_loss(model(X[:32]), X[:32])
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
