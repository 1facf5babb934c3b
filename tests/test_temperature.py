"""Temperature scaling against a brute-force search, and as a predictive method."""

import pytest
import torch
from torch import nn

from minibayeslora.temperature import TemperatureScaled, fit_temperature


def _nll(logits, labels, t):
    return nn.functional.cross_entropy(logits.double() / t, labels).item()


@pytest.mark.parametrize("sharpness", [3.0, 0.4])
def test_fitted_temperature_is_the_grid_minimum(sharpness):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (500,), generator=g)
    logits = torch.randn(500, 3, generator=g) + 2.0 * nn.functional.one_hot(labels, 3)
    logits = logits * sharpness                  # over-confident (T* > 1) or under-confident (T* < 1)
    t = fit_temperature(logits, labels)
    grid = torch.linspace(-3, 3, 6001, dtype=torch.float64).exp()             # T on a log grid, steps of 0.001
    scaled = logits.double()[None] / grid[:, None, None]                       # every T at once: (G, N, C)
    nlls = -scaled.log_softmax(-1).gather(2, labels[None, :, None].expand(len(grid), -1, 1)).squeeze(2).mean(1)
    assert _nll(logits, labels, t) <= nlls.min().item() + 1e-12, "a grid point beats the fitted temperature"
    assert abs(torch.log(torch.tensor(t)) - grid[nlls.argmin()].log()) < 1e-3
    assert (t > 1) == (sharpness > 1)
    assert _nll(logits, labels, t) <= _nll(logits, labels, 1.0) + 1e-12


def test_temperature_scaled_predictions_keep_the_argmax():
    model = nn.Sequential(nn.Linear(4, 3))
    wrapped = TemperatureScaled(_Kw(model), 2.5)
    x = torch.randn(7, 4)
    probs = wrapped.predict_samples({"x": x})
    assert probs.shape == (1, 7, 3)
    with torch.no_grad():
        torch.testing.assert_close(probs[0], (model(x) / 2.5).softmax(-1))
        assert torch.equal(probs[0].argmax(-1), model(x).argmax(-1))
    with pytest.raises(ValueError, match="positive"):
        TemperatureScaled(model, 0.0)
    with pytest.raises(ValueError, match="expected logits"):
        fit_temperature(torch.randn(5), torch.zeros(5, dtype=torch.long))


class _Kw(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)
