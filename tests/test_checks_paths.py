"""The path and curve checks pass the reference and name each typical mistake."""

import math

import pytest
import torch

from minibayeslora import checks
from minibayeslora.connectivity import barrier as reference_barrier
from minibayeslora.connectivity import gauge_transform, lerp_states
from minibayeslora.curves import bernstein as reference_bernstein


def _fails_with(check, impl, hint):
    with pytest.raises(AssertionError, match=hint):
        check(impl)


def _in_place(a, b, t):
    for k in a:
        a[k].mul_(1 - t).add_(t * b[k])
    return a


INTERPOLATE = {
    "reversed": (lambda a, b, t: {k: t * a[k] + (1 - t) * b[k] for k in a}, "wrong way"),
    "not_convex": (lambda a, b, t: {k: a[k] + t * b[k] for k in a}, "sum to 1"),
    "missing_head": (lambda a, b, t: {k: (1 - t) * a[k] + t * b[k] for k in a if k != "head"}, "every tensor name"),
    "in_place": (_in_place, "in place"),
}

BARRIER = {
    "mean_of_ends": (lambda ts, L: (L.max() - (L[0] + L[-1]) / 2).item(), "not with the mean of the ends"),
    "start_only": (lambda ts, L: (L.max() - L[0]).item(), "not L\\(0\\)"),
    "min": (lambda ts, L: (L - ((1 - ts) * L[0] + ts * L[-1])).min().item(), "max, not min"),
    "max_loss": (lambda ts, L: L.max().item(), "you returned the largest loss"),
}

GAUGE = {
    "B_times_G": (lambda A, B, G: (G @ A, B @ G), "absorb the inverse"),
    "inverse_on_A": (lambda A, B, G: (torch.linalg.inv(G) @ A, B @ G), "not G⁻¹ A"),
    "inverse_transpose": (lambda A, B, G: (G @ A, B @ torch.linalg.inv(G).T), "not \\(Gᵀ\\)⁻¹"),
    "A_from_right": (lambda A, B, G: (A @ G, B @ torch.linalg.inv(G)), "shape mismatch"),
}

BERNSTEIN = {
    "no_binomial": (lambda t, n: torch.tensor([t ** k * (1 - t) ** (n - k) for k in range(n + 1)]), "binomial coefficients"),
    "reversed": (lambda t, n: reference_bernstein(t, n).flip(0), "order is reversed"),
    "n_weights": (lambda t, n: reference_bernstein(t, n)[:-1], "n \\+ 1"),
}


def _point(P, t, weights):
    return weights(t, P.shape[0] - 1) @ P


BEZIER = {
    "linear": (lambda P, t: (1 - t) * P[0] + t * P[-1], "every control point"),
    "reversed": (lambda P, t: reference_bernstein(t, P.shape[0] - 1).flip(0) @ P, "reversed"),
    "no_binomial": (lambda P, t: torch.tensor([t ** k * (1 - t) ** (P.shape[0] - 1 - k) for k in range(P.shape[0])]) @ P,
                    "binomial coefficients"),
}

LOCATE = {
    "overflow_at_1": (lambda t, K: (int(t * K), t * K - int(t * K)), "last segment"),
    "no_rescale": (lambda t, K: (min(int(t * K), K - 1), t), "rescaled"),
    "rounding": (lambda t, K: (min(round(t * K), K - 1), t * K - min(round(t * K), K - 1)), "floor"),
}


@pytest.mark.parametrize("check,reference", [
    (checks.check_interpolate, lerp_states),
    (checks.check_barrier, lambda ts, L: reference_barrier(ts, L)[0]),
    (checks.check_gauge, gauge_transform),
    (checks.check_bernstein, reference_bernstein),
    (checks.check_bezier_point, lambda P, t: reference_bernstein(t, P.shape[0] - 1) @ P),
    (checks.check_locate, lambda t, K: (min(int(t * K), K - 1), t * K - min(int(t * K), K - 1))),
], ids=["interpolate", "barrier", "gauge", "bernstein", "bezier_point", "locate"])
def test_references_pass(check, reference):
    assert check(reference)


@pytest.mark.parametrize("check,table", [
    (checks.check_interpolate, INTERPOLATE), (checks.check_barrier, BARRIER), (checks.check_gauge, GAUGE),
    (checks.check_bernstein, BERNSTEIN), (checks.check_bezier_point, BEZIER), (checks.check_locate, LOCATE),
], ids=["interpolate", "barrier", "gauge", "bernstein", "bezier_point", "locate"])
def test_each_mistake_gets_its_hint(check, table):
    assert len(table) >= 3
    for name, (impl, hint) in table.items():
        with pytest.raises(AssertionError, match=hint):
            check(impl)


def test_unimplemented_stub_is_named():
    def stub(*args):
        raise NotImplementedError()

    for check in (checks.check_interpolate, checks.check_barrier, checks.check_locate):
        with pytest.raises(AssertionError, match="not implemented yet"):
            check(stub)
