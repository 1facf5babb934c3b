"""Paths between adapter states, loss barriers and the gauge symmetry of LoRA factors.

**Paths.** θ(t), t ∈ [0, 1]: the straight line in factor space is θ(t) = (1 − t) θ_a + t θ_b for
every tensor (A, B and the head alike).

**Barrier** (Garipov et al. 2018; Draxler et al. 2018). With losses L(t) on a grid, the barrier of a path is the largest excess
of the loss over the chord between its ends,

    barrier = max_t [ L(θ(t)) − ((1 − t) L(θ(0)) + t L(θ(1))) ],

computed per segment for a chain of K segments (segment k: t ∈ [k/K, (k+1)/K]).

**Gauge.** For any invertible G ∈ GL(r), A → G A, B → B G⁻¹ leaves ΔW = B A unchanged, so two
adapters can compute nearly the same function with very different factors. Writing each ΔW in
its balanced SVD form, B = U √S, A = √S Vᵀ (top r singular triplets), removes all of the gauge
but the signs (and the order of equal singular values); matching those makes factors comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import config


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
    G = G.to(A.device, A.dtype)
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


def aligned_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Both adapter states with every LoRA layer's factors in balanced form, b's rank directions matched to a's.

    Every product B A (so every function) is unchanged; the head and other tensors are copied as they are.
    Interpolating the results (``lerp_states``) is the "aligned factors" straight line.
    """
    a2, b2 = dict(a), dict(b)
    for key in a:
        if not key.endswith(".lora_A"):
            continue
        name = key.removesuffix(".lora_A")
        A_a, B_a = a[f"{name}.lora_A"], a[f"{name}.lora_B"]
        a2[f"{name}.lora_A"], a2[f"{name}.lora_B"] = align_to(A_a, B_a, A_a, B_a)
        b2[f"{name}.lora_A"], b2[f"{name}.lora_B"] = align_to(A_a, B_a, b[f"{name}.lora_A"], b[f"{name}.lora_B"])
    return a2, b2


def delta_space_state(model: torch.nn.Module, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                      t: float) -> dict[str, torch.Tensor]:
    """A ``functional_call`` state for the straight line in ΔW space, ΔW(t) = (1 − t) ΔW_a + t ΔW_b.

    ΔW(t) generally has rank up to 2r, so it cannot be written as rank-r factors: the state puts
    W₀ + ΔW(t) into each adapted layer's base weight and zeroes its B; other tensors (the head)
    are interpolated as in factor space.
    """
    from .lora import lora_layers

    state = lerp_states(a, b, t)
    for name, layer in lora_layers(model).items():
        w0 = layer.base.weight.detach()
        delta = [layer.scaling * (s[f"{name}.lora_B"] @ s[f"{name}.lora_A"]).to(w0.device) for s in (a, b)]
        state[f"{name}.base.weight"] = w0 + torch.lerp(delta[0], delta[1], float(t))
        state[f"{name}.lora_B"] = torch.zeros_like(state[f"{name}.lora_B"])
    return state


@torch.no_grad()
def evaluate_path(model: torch.nn.Module, state_at, data, ts, batch_size: int | None = None,
                  cache: bool = True) -> dict[str, list[float]]:
    """Loss (mean NLL) and accuracy of ``model`` at ``state_at(t)`` for each t, on a ClassificationData.

    ``state_at(t)`` returns a dict of tensors that replace the model's own (``functional_call``).
    With ``cache`` (default) the result is stored on disk and a later identical evaluation loads it
    (``prediction_cache.path_key``: the model's tensors and settings, the states at every t, the data).
    """
    import torch.nn.functional as F
    from torch.func import functional_call

    from . import prediction_cache
    from .train import batched_logits, eval_mode

    states = [state_at(float(t)) for t in ts]
    key = prediction_cache.path_key(model, ts, states, data, batch_size) if cache else None
    if key is not None and (cached := prediction_cache.load_json(key)) is not None:
        return cached
    nll, acc = [], []
    device = config.model_device(model)
    with eval_mode(model):
        for state in states:
            state = {name: tensor.to(device) for name, tensor in state.items()}
            logits = batched_logits(lambda inputs: functional_call(model, state, args=(), kwargs=inputs, strict=False),
                                    data, batch_size)
            nll.append(F.cross_entropy(logits, data.labels).item())
            acc.append((logits.argmax(1) == data.labels).float().mean().item())
    result = {"t": [float(t) for t in ts], "nll": nll, "acc": acc}
    if key is not None:
        prediction_cache.store_json(key, result)
    return result


@torch.no_grad()
def probabilities_along(model: torch.nn.Module, state_at, inputs: dict, ts) -> torch.Tensor:
    """Class probabilities of one batch of ``inputs`` at ``state_at(t)`` for each t: (len(ts), N, C)."""
    from .predictive import StateAverage

    return StateAverage(model, [state_at(float(t)) for t in ts]).predict_samples(inputs)


def _flatten(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([state[name].flatten().float() for name in sorted(state)])


def _unflatten(vector: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, offset = {}, 0
    for name in sorted(like):
        n = like[name].numel()
        out[name] = vector[offset:offset + n].view_as(like[name]).to(like[name].dtype)
        offset += n
    return out


@dataclass
class Plane:
    """The plane through three states θ₀, θ₁, θ₂ (Garipov et al., 2018): θ(x, y) = θ₀ + x û + y v̂.

    û = (θ₁ − θ₀)/‖θ₁ − θ₀‖ and v̂ is the unit part of θ₂ − θ₀ orthogonal to û; ``coords`` holds
    the (x, y) of the three states.
    """

    origin: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    like: dict
    coords: list[tuple[float, float]]

    def point(self, x: float, y: float) -> dict[str, torch.Tensor]:
        return _unflatten(self.origin + x * self.u + y * self.v, self.like)

    def project(self, state: dict[str, torch.Tensor]) -> tuple[float, float]:
        """(x, y) of the orthogonal projection of ``state`` onto the plane."""
        offset = _flatten({k: state[k] for k in self.like}) - self.origin
        return float(offset @ self.u), float(offset @ self.v)


def plane_through(states: list[dict[str, torch.Tensor]]) -> Plane:
    if len(states) != 3:
        raise ValueError(f"a plane needs exactly 3 states, got {len(states)}.")
    t0, t1, t2 = (_flatten(s) for s in states)
    u = t1 - t0
    if u.norm() == 0:
        raise ValueError("the first two states are equal.")
    u = u / u.norm()
    w = t2 - t0
    v = w - (w @ u) * u
    if v.norm() < 1e-5 * max(1.0, float(w.norm())):
        raise ValueError("the three states lie on one line.")
    v = v / v.norm()
    coords = [(float((t - t0) @ u), float((t - t0) @ v)) for t in (t0, t1, t2)]
    return Plane(t0, u, v, {k: val.detach() for k, val in states[0].items()}, coords)
