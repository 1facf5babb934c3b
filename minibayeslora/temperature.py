"""Temperature scaling (Guo et al., 2017): one scalar T > 0 that divides a trained model's logits,

    p_T(y | x) = softmax(z(x) / T),     T* = argmin_T  −mean_i log p_T(y_i | x_i)  on validation data.

T > 1 softens over-confident predictions, T < 1 sharpens; the argmax (hence accuracy) never changes.
It is the cheapest post-hoc calibration, so every Bayesian method should be measured against it.
"""

from __future__ import annotations

import torch
from torch import nn

from .train import eval_mode, predict_logits


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """T* minimising the NLL of ``softmax(logits / T)``: logits (N, C), labels (N,).

    In β = 1/T the NLL f(β) = mean_i [logsumexp(β z_i) − β z_iy] is convex, with
    f'(β) = mean_i (E_p[z_i] − z_iy) and f''(β) = mean_i Var_p[z_i] ≥ 0, so Newton's method (kept at β > 0)
    finds the minimum in a few steps.
    """
    z = torch.as_tensor(logits, dtype=torch.float64)
    labels = torch.as_tensor(labels, dtype=torch.long)
    if z.dim() != 2 or labels.shape != (len(z),):
        raise ValueError(f"expected logits (N, C) and labels (N,), got {tuple(z.shape)} and {tuple(labels.shape)}.")
    z_true = z.gather(1, labels[:, None]).squeeze(1)
    beta = 1.0
    for _ in range(max_iter):
        p = (beta * z).softmax(-1)
        mean_z = (p * z).sum(-1)
        grad = float((mean_z - z_true).mean())
        curvature = float(((p * z * z).sum(-1) - mean_z ** 2).mean())
        if curvature <= 0:          # every prediction one-hot: nothing to tune
            break
        step = grad / curvature
        while beta - step <= 0:      # stay at β > 0
            step /= 2
        beta -= step
        if abs(step) < 1e-12 * beta:
            break
    return 1.0 / beta


class TemperatureScaled:
    """A model's predictions at temperature T: ``predict_samples(inputs, S)`` -> (1, N, C)."""

    def __init__(self, model: nn.Module, temperature: float):
        if not temperature > 0:
            raise ValueError(f"the temperature must be positive, got {temperature!r}.")
        self.model, self.temperature = model, float(temperature)

    @classmethod
    def fit(cls, model: nn.Module, val_data) -> "TemperatureScaled":
        """T fitted on the model's validation logits (``ClassificationData``)."""
        return cls(model, fit_temperature(predict_logits(model, val_data), val_data.labels))

    @torch.no_grad()
    def predict_samples(self, inputs: dict, S: int = 1) -> torch.Tensor:
        with eval_mode(self.model):
            return (self.model(**inputs).double() / self.temperature).softmax(-1).float().unsqueeze(0).cpu()
