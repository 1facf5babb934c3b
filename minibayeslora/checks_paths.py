"""Checks for the path and curve exercises (notebooks 02 and 03); import them from ``minibayeslora.checks``.

Same contract as the LoRA checks: pass -> one printed line and True; a recognised mistake -> an
AssertionError that names it.
"""

from __future__ import annotations

import math

import torch

from ._check_tools import _call, _diagnose, _ok


def _states(seed=0):
    g = torch.Generator().manual_seed(seed)
    return ({"lora_A": torch.randn(2, 5, generator=g), "head": torch.randn(3, generator=g)},
            {"lora_A": torch.randn(2, 5, generator=g), "head": torch.randn(3, generator=g)})


def check_interpolate(interpolate) -> bool:
    """``interpolate(a, b, t)`` -> {name: (1 − t)·a[name] + t·b[name]} for every tensor, inputs untouched."""
    a, b = _states()
    copies = {k: v.clone() for k, v in a.items()}, {k: v.clone() for k, v in b.items()}
    for t in (0.0, 0.3, 1.0):
        got = _call(interpolate, a, b, t, what="interpolate", shape_hint="Interpolate tensor by tensor.")
        if any(not torch.equal(x[k], c[k]) for x, c in ((a, copies[0]), (b, copies[1])) for k in x):
            raise AssertionError("interpolate changed its inputs in place: build new tensors.")
        if not isinstance(got, dict) or set(got) != set(a):
            raise AssertionError(f"interpolate must return a dict with every tensor name {sorted(a)}; "
                                 f"got {sorted(got) if isinstance(got, dict) else type(got).__name__}.")
        for name in a:
            _diagnose(got[name], (1 - t) * a[name] + t * b[name], {
                "t runs the wrong way: θ(0) must be a and θ(1) must be b.": t * a[name] + (1 - t) * b[name],
                "the weights must sum to 1: (1 − t)·a + t·b, not a + t·b.": a[name] + t * b[name],
            }, f"interpolate(a, b, {t})[{name!r}]")
    return _ok("check_interpolate")


def check_barrier(barrier) -> bool:
    """``barrier(ts, losses)`` -> max_t [L(t) − ((1 − t) L(0) + t L(1))] for a grid ts on [0, 1]."""
    ts = torch.linspace(0, 1, 21)
    losses = 1.0 + 2.0 * ts + 3.0 * ts * (1 - ts) ** 2  # chord 1 + 2t; excess 3t(1 − t)², max 4/9 at t = 1/3
    got = _call(barrier, ts, losses, what="barrier", shape_hint="ts and losses are 1-D tensors of equal length.")
    got = float(got)
    expected = float((losses - (1 + 2 * ts)).max())
    if math.isclose(got, expected, rel_tol=1e-4, abs_tol=1e-6):
        return _ok("check_barrier")
    mistakes = {
        float(losses.max() - (losses[0] + losses[-1]) / 2): "compare L(t) with the chord at the same t, not with the mean of the ends.",
        float(losses.max() - losses[0]): "subtract the chord (1 − t) L(0) + t L(1) at each t, not L(0).",
        float(losses.max() - torch.maximum(losses[0], losses[-1])): "subtract the chord at each t, not the larger end loss.",
        float((losses - (1 + 2 * ts)).min()): "the barrier is the largest excess over the chord: max, not min.",
        float(losses.max()): "you returned the largest loss; subtract the chord between the ends.",
    }
    for value, hint in mistakes.items():
        if math.isclose(got, value, rel_tol=1e-4, abs_tol=1e-6):
            raise AssertionError(f"barrier returned {got:.4f}, expected {expected:.4f}: {hint}")
    raise AssertionError(f"barrier returned {got:.4f}, expected {expected:.4f}.")


def check_gauge(gauge) -> bool:
    """``gauge(A, B, G)`` -> (G A, B G⁻¹): new factors with the same product B A."""
    g = torch.Generator().manual_seed(4)
    A, B = torch.randn(3, 6, generator=g), torch.randn(5, 3, generator=g)
    G = torch.randn(3, 3, generator=g) + 3 * torch.eye(3)
    got = _call(gauge, A, B, G, what="gauge", shape_hint="A is (r, d_in) and G is (r, r): G multiplies A from the left.")
    if not (isinstance(got, tuple) and len(got) == 2):
        raise AssertionError("gauge must return a pair (new_A, new_B).")
    new_A, new_B = got
    G_inv = torch.linalg.inv(G)
    _diagnose(new_A, G @ A, {"A transforms as G A, not G⁻¹ A.": G_inv @ A, "A transforms as G A, not Gᵀ A.": G.T @ A},
              "the new A", atol=1e-4)
    _diagnose(new_B, B @ G_inv, {
        "B must absorb the inverse: B G⁻¹, otherwise B A changes.": B @ G,
        "B transforms with G⁻¹, not (Gᵀ)⁻¹.": B @ G_inv.T,
    }, "the new B", atol=1e-4)
    return _ok("check_gauge")


def check_bernstein(bernstein) -> bool:
    """``bernstein(t, n)`` -> tensor of the n+1 weights C(n, k) t^k (1 − t)^{n−k}, k = 0..n."""
    for n, t in ((2, 0.3), (3, 0.8), (4, 0.5)):
        got = _call(bernstein, t, n, what="bernstein", shape_hint="Return a 1-D tensor of n + 1 weights.")
        got = torch.as_tensor(got, dtype=torch.float32)
        k = torch.arange(n + 1, dtype=torch.float32)
        comb = torch.tensor([math.comb(n, i) for i in range(n + 1)], dtype=torch.float32)
        ref = comb * t ** k * (1 - t) ** (n - k)
        _diagnose(got, ref, {
            "you forgot the binomial coefficients C(n, k): the weights must sum to 1.": t ** k * (1 - t) ** (n - k),
            "the order is reversed: weight k multiplies t^k (weight 0 belongs to the start point).": ref.flip(0),
            f"there are n + 1 = {n + 1} weights, k = 0..n.": ref[:-1],
        }, f"bernstein({t}, {n})")
    return _ok("check_bernstein")


def check_bezier_point(bezier_point) -> bool:
    """``bezier_point(P, t)`` with control points P (n+1, d) -> Σ_k b_{k,n}(t) P_k, shape (d,)."""
    g = torch.Generator().manual_seed(5)
    P = torch.randn(4, 6, generator=g)
    n = 3
    for t in (0.0, 0.35, 1.0):
        got = _call(bezier_point, P, t, what="bezier_point", shape_hint="P has one control point per row.")
        w = torch.tensor([math.comb(n, k) * t ** k * (1 - t) ** (n - k) for k in range(n + 1)])
        ref = w @ P
        _diagnose(got, ref, {
            "only the end points count on a Bézier curve? No: every control point is weighted by b_{k,n}(t).": (1 - t) * P[0] + t * P[-1],
            "the weights are reversed: θ(0) must be P_0.": w.flip(0) @ P,
            "you forgot the binomial coefficients C(n, k).": torch.tensor([t ** k * (1 - t) ** (n - k) for k in range(n + 1)]) @ P,
        }, f"bezier_point(P, {t})")
    return _ok("check_bezier_point")


def check_locate(locate) -> bool:
    """``locate(t, K)`` -> (k, τ): segment k = min(⌊tK⌋, K − 1) of a K-segment chain and τ = tK − k."""
    cases = [(0.0, 3), (0.2, 3), (0.5, 2), (0.9, 4), (1.0, 3)]
    for t, K in cases:
        got = _call(locate, t, K, what="locate", shape_hint="Return a pair (segment index, local tau).")
        k = min(int(t * K), K - 1)
        tau = t * K - k
        if not (isinstance(got, tuple) and len(got) == 2):
            raise AssertionError("locate must return a pair (k, tau).")
        got_k, got_tau = int(got[0]), float(got[1])
        if got_k == k and math.isclose(got_tau, tau, abs_tol=1e-6):
            continue
        if t == 1.0 and got_k == K:
            raise AssertionError("t = 1 must fall in the last segment K − 1 (with τ = 1), not in a segment K that does not exist.")
        if got_k == k and math.isclose(got_tau, t, abs_tol=1e-6):
            raise AssertionError("τ must be rescaled to the segment: τ = tK − k, not t.")
        if got_k == round(t * K) and got_k != k:
            raise AssertionError("use the floor of tK for the segment, not rounding.")
        raise AssertionError(f"locate({t}, {K}) returned {got}, expected ({k}, {tau:.3f}).")
    return _ok("check_locate")
