"""The capstone checks pass correct implementations (written independently here) and name each typical mistake."""

import math

import pytest
import torch

from minibayeslora import checks, compare
from minibayeslora.temperature import fit_temperature as package_temperature


def _fails_with(check, impl, hint):
    with pytest.raises(AssertionError, match=hint):
        check(impl)


def _nll(logits, labels, t):
    return torch.nn.functional.cross_entropy(logits / t, labels)


def _grid_temperature(logits, labels):
    """Brute force: the best T of a fine log grid, then a golden-section refinement."""
    grid = torch.logspace(-2, 2, 401, dtype=torch.float64)
    best = float(grid[torch.stack([_nll(logits, labels, t) for t in grid]).argmin()])
    lo, hi = math.log(best) - 0.03, math.log(best) + 0.03
    for _ in range(60):
        a, b = lo + 0.382 * (hi - lo), lo + 0.618 * (hi - lo)
        if _nll(logits, labels, math.exp(a)) < _nll(logits, labels, math.exp(b)):
            hi = b
        else:
            lo = a
    return math.exp((lo + hi) / 2)


def test_temperature_check_passes_the_package_and_a_grid_search():
    assert checks.check_temperature(package_temperature)
    assert checks.check_temperature(_grid_temperature)


def test_temperature_check_names_the_mistakes():
    _fails_with(checks.check_temperature, lambda z, y: 1 / package_temperature(z, y), "β = 1/T")
    _fails_with(checks.check_temperature, lambda z, y: float(_nll(z, y, package_temperature(z, y))), "an NLL")
    _fails_with(checks.check_temperature, lambda z, y: 1.0, "did not move")
    _fails_with(checks.check_temperature, lambda z, y: -package_temperature(z, y), "positive")
    _fails_with(checks.check_temperature, lambda z, y: 1.3 * package_temperature(z, y), "Minimise the mean NLL")

    def ece_temperature(z, y):
        from minibayeslora.checks_capstone import _grid_ece_temperature
        return _grid_ece_temperature(z, y)
    _fails_with(checks.check_temperature, ece_temperature, "lowest ECE")

    def not_implemented(z, y):
        raise NotImplementedError()
    _fails_with(checks.check_temperature, not_implemented, "not implemented")


def _laplace(phi, w_map, lam, x_new):
    """Written out without the check's helper: GGN Hessian, its inverse, the probit approximation."""
    p = torch.sigmoid(phi @ w_map)
    H = sum(pi * (1 - pi) * torch.outer(f, f) for pi, f in zip(p, phi)) + lam * torch.eye(len(w_map), dtype=phi.dtype)
    sigma = torch.linalg.inv(H)
    return torch.stack([torch.sigmoid((x @ w_map) / math.sqrt(1 + math.pi / 8 * float(x @ sigma @ x))) for x in x_new])


def test_laplace_check_passes_an_independent_implementation_close_to_monte_carlo():
    assert checks.check_laplace_logistic(_laplace)
    # the probit approximation is close to the exact predictive E[σ(xᵀw)], w ~ N(w_map, Σ), estimated by Monte Carlo
    from minibayeslora.checks_capstone import _laplace_case

    phi, w_map, lam, x_new = _laplace_case()
    p = torch.sigmoid(phi @ w_map)
    H = (phi * (p * (1 - p))[:, None]).T @ phi + lam * torch.eye(3, dtype=torch.float64)
    draws = torch.distributions.MultivariateNormal(w_map, torch.linalg.inv(H)).sample((200_000,))
    exact = torch.sigmoid(draws @ x_new.T).mean(0)
    assert (exact - _laplace(phi, w_map, lam, x_new)).abs().max() < 0.02


def test_laplace_check_names_the_mistakes():
    from minibayeslora.checks_capstone import laplace_logistic_reference as ref

    _fails_with(checks.check_laplace_logistic, lambda phi, w, lam, x: torch.sigmoid(x @ w), "MAP prediction")
    _fails_with(checks.check_laplace_logistic, lambda phi, w, lam, x: ref(phi, w, lam, x, with_prior=False), "prior precision")
    _fails_with(checks.check_laplace_logistic, lambda phi, w, lam, x: ref(phi, w, lam, x, invert=False), "H⁻¹")
    _fails_with(checks.check_laplace_logistic, lambda phi, w, lam, x: ref(phi, w, lam, x, pi_factor=1.0), "π/8")
    _fails_with(checks.check_laplace_logistic, lambda phi, w, lam, x: ref(phi, w, lam, x, sqrt=False), "square root")
    _fails_with(checks.check_laplace_logistic, lambda phi, w, lam, x: ref(phi, w, lam, x, gauss_newton=False), "p\\(1 − p\\)")
    _fails_with(checks.check_laplace_logistic, lambda phi, w, lam, x: _laplace(phi, w, lam, x)[:-1], "shape")
    _fails_with(checks.check_laplace_logistic, lambda phi, w, lam, x: 0.9 * _laplace(phi, w, lam, x), "differs")


def test_pareto_check_passes_the_package_and_names_the_mistakes():
    assert checks.check_pareto_front(compare.pareto_front)

    def worst(cost, loss):
        return compare.pareto_front([-c for c in cost], [-v for v in loss])

    def weak(cost, loss):
        return [not any(cj <= ci and lj <= li for j, (cj, lj) in enumerate(zip(cost, loss)) if j != i)
                for i, (ci, li) in enumerate(zip(cost, loss))]

    _fails_with(checks.check_pareto_front, worst, "worst on both axes")
    _fails_with(checks.check_pareto_front, weak, "only tied")
    _fails_with(checks.check_pareto_front, lambda cost, loss: [v == min(loss) for v in loss], "one axis only")
    _fails_with(checks.check_pareto_front, lambda cost, loss: [True] * (len(cost) - 1), "values for")
