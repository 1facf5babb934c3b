"""Bézier curves and chains of them in the space of adapter states (our reconstruction of LoRA-Curve).

A Bézier curve of degree n through control points P_0 … P_n (each a whole adapter state):

    θ(τ) = Σ_k b_{k,n}(τ) P_k,     b_{k,n}(τ) = C(n, k) τ^k (1 − τ)^{n−k},   τ ∈ [0, 1].

The Bernstein weights b_{k,n} are non-negative and sum to 1, θ(0) = P_0 and θ(1) = P_n.

A *chain* joins K = len(anchors) − 1 such segments; segment k covers t ∈ [k/K, (k+1)/K] and
consecutive segments share their end points (the *junctions*, which start at the anchors).
Interior control points start on the straight line between their junctions, equally spaced, so
the untrained chain is exactly the piecewise-linear path (Bernstein polynomials reproduce lines).
In ``"anchored"`` mode the junctions are fixed (independently trained optima); in ``"free"``
mode every control point trains.
"""

from __future__ import annotations

import math

import torch
from torch import nn

MODES = ("anchored", "free")


def bernstein(t, degree: int) -> torch.Tensor:
    """Weights b_{0..n,n}(t): t of shape (...) -> (..., degree + 1)."""
    if not isinstance(degree, int) or degree < 1:
        raise ValueError(f"degree must be a positive int, got {degree!r}.")
    t = torch.as_tensor(t, dtype=torch.get_default_dtype())
    if ((t < 0) | (t > 1)).any():
        raise ValueError("t must lie in [0, 1].")
    k = torch.arange(degree + 1, dtype=t.dtype)
    coefficients = torch.tensor([math.comb(degree, int(i)) for i in k], dtype=t.dtype)
    t = t.unsqueeze(-1)
    return coefficients * t ** k * (1 - t) ** (degree - k)


class BezierChain(nn.Module):
    """K Bézier segments of one degree through adapter-state anchors; ``point(t)`` -> adapter state.

    Stored per tensor name i: ``junction_i`` (K+1, *shape) and ``interior_i`` (K, degree−1, *shape).
    """

    def __init__(self, anchors: list[dict[str, torch.Tensor]], degree: int = 2, mode: str = "anchored"):
        super().__init__()
        if len(anchors) < 2:
            raise ValueError(f"a chain needs at least 2 anchors, got {len(anchors)}.")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        if not isinstance(degree, int) or degree < 1:
            raise ValueError(f"degree must be a positive int, got {degree!r}.")
        names = list(anchors[0])
        for j, anchor in enumerate(anchors[1:], 1):
            if list(anchor) != names or any(anchor[n].shape != anchors[0][n].shape for n in names):
                raise ValueError(f"anchor {j} has other tensor names or shapes than anchor 0.")
        self.names, self.degree, self.mode, self.num_segments = names, degree, mode, len(anchors) - 1
        fractions = torch.arange(1, degree) / degree  # interior points, equally spaced on the line
        for i, name in enumerate(names):
            junctions = torch.stack([a[name].detach().float() for a in anchors])        # (K+1, *shape)
            fractions = fractions.to(junctions.device)
            shape = (-1,) + (1,) * (junctions.dim() - 1)
            start, end = junctions[:-1].unsqueeze(1), junctions[1:].unsqueeze(1)       # (K, 1, *shape)
            interior = start + fractions.view(1, *shape) * (end - start)               # (K, degree−1, *shape)
            if mode == "free":
                self.register_parameter(f"junction_{i}", nn.Parameter(junctions.clone()))
            else:
                self.register_buffer(f"junction_{i}", junctions.clone())
            self.register_parameter(f"interior_{i}", nn.Parameter(interior.clone()))

    def control_points(self, name: str, segment: int) -> torch.Tensor:
        """The degree+1 control points of one segment for one tensor: (degree+1, *shape)."""
        i = self.names.index(name)
        junctions, interior = getattr(self, f"junction_{i}"), getattr(self, f"interior_{i}")
        return torch.cat([junctions[segment:segment + 1], interior[segment], junctions[segment + 1:segment + 2]])

    def locate(self, t: float) -> tuple[int, float]:
        """Chain parameter t ∈ [0, 1] -> (segment k, local τ ∈ [0, 1])."""
        if not 0.0 <= float(t) <= 1.0:
            raise ValueError(f"t must lie in [0, 1], got {t}.")
        k = min(int(float(t) * self.num_segments), self.num_segments - 1)
        return k, float(t) * self.num_segments - k

    def point(self, t: float) -> dict[str, torch.Tensor]:
        """θ(t) as an adapter state (differentiable w.r.t. the trainable control points)."""
        k, tau = self.locate(t)
        weights = bernstein(tau, self.degree)
        out = {}
        for name in self.names:
            points = self.control_points(name, k)
            out[name] = torch.tensordot(weights.to(points.device, points.dtype), points, dims=1)
        return out

    def arc_length_table(self, grid: int = 201) -> tuple[torch.Tensor, torch.Tensor]:
        """(t grid, cumulative length s(t) / total) with ‖·‖ the Euclidean norm over all tensors."""
        ts = torch.linspace(0, 1, grid)
        with torch.no_grad():
            flat = torch.stack([torch.cat([v.flatten() for v in self.point(float(t)).values()]) for t in ts]).cpu()
        steps = (flat[1:] - flat[:-1]).norm(dim=1)
        cumulative = torch.cat([torch.zeros(1), steps.cumsum(0)])
        total = cumulative[-1]
        return ts, cumulative / total if total > 0 else ts.clone()


def sample_t(n: int, generator: torch.Generator | None = None, chain: BezierChain | None = None,
             grid: int = 201) -> torch.Tensor:
    """n values of t: uniform on [0, 1], or (given ``chain``) uniform in arc length along it."""
    u = torch.rand(n, generator=generator)
    if chain is None:
        return u
    ts, fraction = chain.arc_length_table(grid)
    # invert the monotone map t -> s(t)/S by linear interpolation on the grid
    idx = torch.searchsorted(fraction, u).clamp(1, grid - 1)
    lo, hi = fraction[idx - 1], fraction[idx]
    w = ((u - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    return ts[idx - 1] + w * (ts[idx] - ts[idx - 1])


def nested_grid(n_fine: int, k: int) -> list[int]:
    """Indices of k equally spaced points among ``n_fine`` equally spaced t on [0, 1], ends included.

    k = 1 is the middle point. The k-point grid must sit exactly on the fine one, i.e. (k − 1)
    divides (n_fine − 1): a 17-point grid holds the 2-, 3-, 5-, 9- and 17-point grids, so curve
    BMA with k points can be read off one set of predictions at the 17 points.
    """
    if not 1 <= k <= n_fine:
        raise ValueError(f"k must be between 1 and n_fine = {n_fine}, got {k}.")
    if k == 1:
        if (n_fine - 1) % 2:
            raise ValueError(f"a grid of {n_fine} points has no middle point; use an odd n_fine.")
        return [(n_fine - 1) // 2]
    if (n_fine - 1) % (k - 1):
        raise ValueError(f"{k} equally spaced points do not lie on a grid of {n_fine}: k − 1 must divide {n_fine - 1}.")
    step = (n_fine - 1) // (k - 1)
    return list(range(0, n_fine, step))
