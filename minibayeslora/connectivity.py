"""Paths between adapter states, loss barriers and the gauge symmetry of LoRA factors.

**Paths.** θ(t), t ∈ [0, 1]: the straight line in factor space is θ(t) = (1 − t) θ_a + t θ_b for
every tensor (A, B and the head alike).

**Barrier** (design §6). With losses L(t) on a grid, the barrier of a path is the largest excess
of the loss over the chord between its ends,

    barrier = max_t [ L(θ(t)) − ((1 − t) L(θ(0)) + t L(θ(1))) ],

computed per segment for a chain of K segments (segment k: t ∈ [k/K, (k+1)/K]).

**Gauge.** For any invertible G ∈ GL(r), A → G A, B → B G⁻¹ leaves ΔW = B A unchanged, so two
adapters can compute nearly the same function with very different factors. Writing each ΔW in
its balanced SVD form, B = U √S, A = √S Vᵀ (top r singular triplets), removes all of the gauge
but the signs (and the order of equal singular values); matching those makes factors comparable.
"""

from __future__ import annotations

import torch


def lerp_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], t: float) -> dict[str, torch.Tensor]:
    """(1 − t)·a + t·b for every tensor of two adapter states with the same names and shapes."""
    if set(a) != set(b):
        raise KeyError(f"the two states differ in names: {sorted(set(a) ^ set(b))[:4]}.")
    return {name: torch.lerp(a[name], b[name], float(t)) for name in a}


def barrier(ts, losses, segments: int = 1) -> list[float]:
    """Per-segment barrier of a path from losses on a t grid (each segment's ends must be on the grid)."""
    ts, losses = torch.as_tensor(ts, dtype=torch.float64), torch.as_tensor(losses, dtype=torch.float64)
    if ts.shape != losses.shape or ts.dim() != 1:
        raise ValueError("ts and losses must be 1-D and of equal length.")
    out = []
    for k in range(segments):
        lo, hi = k / segments, (k + 1) / segments
        inside = (ts >= lo - 1e-9) & (ts <= hi + 1e-9)
        t_seg, l_seg = ts[inside], losses[inside]
        if len(t_seg) < 3 or abs(t_seg.min() - lo) > 1e-9 or abs(t_seg.max() - hi) > 1e-9:
            raise ValueError(f"segment {k} needs its end points {lo:g}, {hi:g} and an interior point on the grid.")
        start, end = l_seg[t_seg.argmin()], l_seg[t_seg.argmax()]
        chord = start + (t_seg - lo) / (hi - lo) * (end - start)
        out.append(float((l_seg - chord).max()))
    return out


def gauge_transform(A: torch.Tensor, B: torch.Tensor, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A (r, d_in), B (d_out, r), G (r, r) invertible -> (G A, B G⁻¹): same B A."""
    return G @ A, torch.linalg.solve(G.T, B.T).T


def balanced_factors(delta: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced rank-r factors of ΔW (d_out, d_in): B = U_r √S_r, A = √S_r V_rᵀ (so A Aᵀ = Bᵀ B = diag(S_r))."""
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    root = S[:r].sqrt()
    return root[:, None] * Vh[:r], U[:, :r] * root[None, :]


def align_to(A_ref: torch.Tensor, B_ref: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Put (A, B) in balanced form, then permute and flip its rank directions to match (A_ref, B_ref)'s.

    Both products are unchanged; afterwards factor-space interpolation compares like with like.
    """
    r = A.shape[0]
    A_ref, B_ref = balanced_factors(B_ref @ A_ref, r)
    A, B = balanced_factors(B @ A, r)
    similarity = (A_ref / A_ref.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ (A / A.norm(dim=1, keepdim=True).clamp_min(1e-12)).T
    order, used = [], set()
    for i in range(r):  # greedy matching on |cos| (r is small)
        scores = similarity[i].abs().clone()
        scores[list(used)] = -1
        j = int(scores.argmax())
        used.add(j)
        order.append(j)
    signs = torch.sign(similarity[torch.arange(r), torch.tensor(order)])
    signs[signs == 0] = 1
    return signs[:, None] * A[order], B[:, order] * signs[None, :]
