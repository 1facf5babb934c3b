"""Checks for the capstone exercises (notebook 07); import them from ``minibayeslora.checks``.

Same contract as the other checks: pass -> one printed line and True; a recognised mistake -> an
AssertionError that names it.
"""

from __future__ import annotations

import math

import torch

from ._check_tools import _call, _ok


def _nll_at(logits, labels, temperature):
    return float(torch.nn.functional.cross_entropy(logits / temperature, labels))


def _grid_ece_temperature(logits, labels):
    """The T of a fine grid that minimises ``metrics.ece`` of softmax(logits / T): a mistake, since temperature
    scaling minimises the NLL (the ECE is bumpy in T and can be gamed)."""
    from . import metrics

    grid = torch.logspace(-1, 1, 401, dtype=torch.float64)
    eces = torch.tensor([metrics.ece((logits.double() / t).softmax(-1), labels) for t in grid])
    return float(grid[eces.argmin()])


def check_temperature(fit_temperature) -> bool:
    """``fit_temperature(logits, labels)`` must return the T > 0 minimising the NLL of softmax(logits / T)."""
    from .temperature import fit_temperature as reference

    g = torch.Generator().manual_seed(7)
    for scale, n in ((4.0, 300), (0.4, 200)):       # an over-confident model (T* > 1) and an under-confident one (T* < 1)
        logits = scale * torch.randn(n, 3, generator=g, dtype=torch.float64)
        labels = torch.where(torch.rand(n, generator=g) < 0.7, logits.argmax(-1), torch.randint(0, 3, (n,), generator=g))
        got = _call(fit_temperature, logits.clone(), labels.clone(), what="fit_temperature")
        try:
            got = float(got)
        except (TypeError, ValueError):
            raise AssertionError(f"fit_temperature must return one number T, got {type(got).__name__}.") from None
        best = reference(logits, labels)
        if not got > 0 or not math.isfinite(got):
            raise AssertionError(f"fit_temperature returned T = {got}: T must be a positive number.")
        if _nll_at(logits, labels, got) <= _nll_at(logits, labels, best) + 1e-4:
            continue
        if abs(got * best - 1) < 0.02:
            raise AssertionError(f"fit_temperature returned {got:.3f}, about 1/T* (T* = {best:.3f}): you returned β = 1/T, "
                                 "or multiplied the logits by T instead of dividing them.")
        if abs(got - _nll_at(logits, labels, best)) < 1e-3 or abs(got - _nll_at(logits, labels, 1.0)) < 1e-3:
            raise AssertionError("fit_temperature returned an NLL, not the temperature T that minimises it.")
        if abs(got - _grid_ece_temperature(logits, labels)) < 0.02:
            raise AssertionError(f"fit_temperature returned {got:.3f}, the T with the lowest ECE: temperature scaling "
                                 f"minimises the NLL (T* = {best:.3f}); the ECE is bumpy in T and can be gamed.")
        if abs(got - 1.0) < 1e-9:
            raise AssertionError("fit_temperature returned T = 1: it did not move from the start.")
        raise AssertionError(f"fit_temperature returned T = {got:.3f} with NLL {_nll_at(logits, labels, got):.4f}; "
                             f"T* = {best:.3f} gives {_nll_at(logits, labels, best):.4f}. Minimise the mean NLL "
                             "of softmax(logits / T) over T > 0 (e.g. in log T, or in β = 1/T where it is convex).")
    return _ok("check_temperature")


def _laplace_case(seed=3):
    g = torch.Generator().manual_seed(seed)
    phi = torch.randn(40, 3, generator=g, dtype=torch.float64)
    w_map = torch.tensor([1.5, -0.7, 0.3], dtype=torch.float64)
    x_new = 2.0 * torch.randn(6, 3, generator=g, dtype=torch.float64)
    return phi, w_map, 2.0, x_new


def laplace_logistic_reference(phi, w_map, prior_precision, x_new, pi_factor=math.pi / 8, with_prior=True, invert=True,
                               sqrt=True, gauss_newton=True):
    """The probit-approximated Laplace predictive of a logistic last layer, and its usual mistakes (by flags)."""
    p = torch.sigmoid(phi @ w_map)
    weights = p * (1 - p) if gauss_newton else torch.ones_like(p)
    H = (phi * weights[:, None]).T @ phi + (prior_precision * torch.eye(len(w_map), dtype=phi.dtype) if with_prior else 0)
    sigma = torch.linalg.inv(H) if invert else H
    mean = x_new @ w_map
    var = ((x_new @ sigma) * x_new).sum(-1)
    return torch.sigmoid(mean / torch.sqrt(1 + pi_factor * var) if sqrt else mean / (1 + pi_factor * var))


def check_laplace_logistic(laplace_predictive) -> bool:
    """``laplace_predictive(phi, w_map, prior_precision, x_new)`` -> p(y = 1 | x_new), (M,): the Laplace posterior of
    a logistic regression at its MAP weights (Hessian Σ_i p_i(1 − p_i) φ_i φ_iᵀ + λI) with the probit approximation
    σ(μ / √(1 + π s²/8)), μ = xᵀw, s² = xᵀ Σ x."""
    phi, w_map, lam, x_new = _laplace_case()
    got = _call(laplace_predictive, phi.clone(), w_map.clone(), lam, x_new.clone(), what="laplace_predictive",
                shape_hint="phi is (N, D), w_map (D,), x_new (M, D); return (M,) probabilities of class 1.")
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"laplace_predictive must return a torch.Tensor, got {type(got).__name__}.")
    expected = laplace_logistic_reference(phi, w_map, lam, x_new)
    if got.shape != expected.shape:
        raise AssertionError(f"laplace_predictive returned shape {tuple(got.shape)}, expected {tuple(expected.shape)}: "
                             "one probability of class 1 per row of x_new.")
    got = got.to(torch.float64)
    if torch.allclose(got, expected, atol=1e-6):
        return _ok("check_laplace_logistic")
    mistakes = {
        "this is the MAP prediction σ(xᵀw): the posterior's variance never entered.": torch.sigmoid(x_new @ w_map),
        "the prior precision λI is missing from the Hessian.": laplace_logistic_reference(phi, w_map, lam, x_new, with_prior=False),
        "you used the Hessian itself as the covariance: Σ = H⁻¹.": laplace_logistic_reference(phi, w_map, lam, x_new, invert=False),
        "the probit factor is π/8: σ(μ / √(1 + π s²/8)), not σ(μ / √(1 + s²)).": laplace_logistic_reference(phi, w_map, lam, x_new, pi_factor=1.0),
        "take the square root: σ(μ / √(1 + π s²/8)), not σ(μ / (1 + π s²/8)).": laplace_logistic_reference(phi, w_map, lam, x_new, sqrt=False),
        "the Hessian of the logistic loss weights each φφᵀ by p(1 − p), the Bernoulli variance at the MAP.":
            laplace_logistic_reference(phi, w_map, lam, x_new, gauss_newton=False),
    }
    for hint, wrong in mistakes.items():
        if torch.allclose(got, wrong, atol=1e-6):
            raise AssertionError(f"laplace_predictive: {hint}")
    raise AssertionError(f"laplace_predictive differs from the probit-approximated Laplace predictive by up to "
                         f"{(got - expected).abs().max():.3g}.")


def _front(cost, loss):
    return [not any(cj <= ci and lj <= li and (cj < ci or lj < li) for cj, lj in zip(cost, loss)) for ci, li in zip(cost, loss)]


def check_pareto_front(pareto_front) -> bool:
    """``pareto_front(cost, loss)`` -> one bool per point: True where no other point is at least as good on both
    (lower cost, lower loss) and strictly better on one."""
    cases = [([1, 2, 3, 4], [4.0, 3.0, 3.5, 1.0]),       # one dominated point
             ([1, 1, 2, 3], [2.0, 2.0, 1.0, 1.0]),       # a tie (both stay) and a point beaten by an equal loss at lower cost
             ([5, 1, 3], [1.0, 5.0, 3.0])]               # all on the front
    for cost, loss in cases:
        got = _call(pareto_front, list(cost), list(loss), what="pareto_front")
        try:
            got = [bool(x) for x in got]
        except TypeError:
            raise AssertionError(f"pareto_front must return a list of booleans, got {type(got).__name__}.") from None
        expected = _front(cost, loss)
        if got == expected:
            continue
        if len(got) != len(expected):
            raise AssertionError(f"pareto_front returned {len(got)} values for {len(expected)} points.")
        flipped = _front([-c for c in cost], [-v for v in loss])
        if got == flipped:
            raise AssertionError("pareto_front kept the points that are worst on both axes: lower cost and lower loss "
                                 "are better.")
        weak = [not any(cj <= ci and lj <= li for j, (cj, lj) in enumerate(zip(cost, loss)) if j != i)
                for i, (ci, li) in enumerate(zip(cost, loss))]
        if got == weak:
            raise AssertionError("pareto_front removed points that are only tied: a point is beaten only by one at "
                                 "least as good on both axes and strictly better on one.")
        if got == [v == min(loss) for v in loss] or got == [c == min(cost) for c in cost]:
            raise AssertionError("pareto_front looked at one axis only: the front trades cost against loss.")
        raise AssertionError(f"pareto_front({cost}, {loss}) returned {got}, expected {expected}.")
    return _ok("check_pareto_front")
