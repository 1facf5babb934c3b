"""Check functions for the exercises: they name the likely mistake, not just "wrong".

Each ``check_*`` runs a learner's implementation on small random inputs, compares it with a
reference and, on a mismatch, compares it with the outputs of the typical mistakes (forgot the
scaling, transposed a factor, B not zero-initialised, W₀ left trainable ...) to say which one it
made. On success it prints one line and returns True; on failure it raises ``AssertionError``
with the hint, so nbgrader and plain notebooks both see a failed cell.
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from . import config
from ._check_tools import _call, _diagnose, _ok, assert_own_work  # noqa: F401 (hidden tests call checks.assert_own_work)


def _private_rng(check):
    """Run ``check`` with torch's RNG seeded to 0, restoring the caller's random stream afterwards."""
    @functools.wraps(check)
    def wrapper(*args, **kwargs):
        with config.private_rng(0):
            return check(*args, **kwargs)
    return wrapper


def _factors(d_out=5, d_in=7, r=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g)


def check_delta_weight(delta_weight) -> bool:
    """``delta_weight(A, B, alpha, r)`` must return ΔW = (α/r)·B A of shape (d_out, d_in)."""
    A, B = _factors()
    alpha, r = 6.0, 3
    got = _call(delta_weight, A, B, alpha, r, what="delta_weight")
    _diagnose(got, (alpha / r) * B @ A, {
        "you forgot the scaling α/r.": B @ A,
        "the scaling is α/r, not r/α.": (r / alpha) * B @ A,
        "the scaling is α/r, not α alone.": alpha * B @ A,
        "ΔW is transposed: it must be (d_out, d_in) = B @ A, not Aᵀ Bᵀ.": ((alpha / r) * B @ A).T,
    }, "delta_weight")
    return _ok("check_delta_weight")


def check_lora_forward(lora_forward) -> bool:
    """``lora_forward(x, W0, b0, A, B, alpha, r)`` must return x W₀ᵀ + b₀ + (α/r)·x Aᵀ Bᵀ, shape (N, d_out)."""
    g = torch.Generator().manual_seed(1)
    d = 6  # square W₀, so that a transposed W₀ gives a wrong value rather than a shape error
    x, W0, b0 = torch.randn(4, d, generator=g), torch.randn(d, d, generator=g), torch.randn(d, generator=g)
    A, B = _factors(d, d, 2, seed=2)
    alpha, r = 4.0, 2
    update = x @ A.T @ B.T
    got = _call(lora_forward, x, W0, b0, A, B, alpha, r, what="lora_forward")
    _diagnose(got, x @ W0.T + b0 + (alpha / r) * update, {
        "you forgot the scaling α/r on the low-rank update.": x @ W0.T + b0 + update,
        "you forgot the frozen path W₀x + b₀: LoRA adds to the pretrained layer, it does not replace it.": (alpha / r) * update,
        "you forgot the bias b₀ of the frozen layer.": x @ W0.T + (alpha / r) * update,
        "the frozen weight is applied untransposed: a Linear computes x W₀ᵀ.": x @ W0 + b0 + (alpha / r) * update,
        "the scaling is α/r, not r/α.": x @ W0.T + b0 + (r / alpha) * update,
    }, "lora_forward")
    return _ok("check_lora_forward")


@_private_rng
def check_lora_layer(layer_cls) -> bool:
    """``layer_cls(base, r, alpha)``: lora_A (r, d_in) random, lora_B (d_out, r) zeros, W₀ frozen, right forward."""
    base = nn.Linear(7, 5)
    reference_weight = base.weight.detach().clone()
    layer = _call(layer_cls, base, 3, 6.0, what="the layer")
    for name in ("lora_A", "lora_B"):
        if not isinstance(getattr(layer, name, None), nn.Parameter):
            raise AssertionError(f"the layer needs a trainable nn.Parameter named {name}.")
    A, B = layer.lora_A, layer.lora_B
    if tuple(A.shape) == (7, 3) or tuple(B.shape) == (3, 5):
        raise AssertionError(f"a factor is transposed: lora_A must be (r, d_in) = (3, 7) and lora_B (d_out, r) = (5, 3); "
                             f"got {tuple(A.shape)} and {tuple(B.shape)}.")
    if tuple(A.shape) != (3, 7) or tuple(B.shape) != (5, 3):
        raise AssertionError(f"lora_A must be (r, d_in) = (3, 7) and lora_B (d_out, r) = (5, 3); got {tuple(A.shape)} and {tuple(B.shape)}.")
    if any(p.requires_grad for p in base.parameters()) or any(
            p.requires_grad for n, p in layer.named_parameters() if not n.startswith("lora_")):
        raise AssertionError("the pretrained weight W₀ (and bias) must be frozen: call base.requires_grad_(False).")
    if not A.requires_grad or not B.requires_grad:
        raise AssertionError("lora_A and lora_B must be trainable (requires_grad=True).")
    if not torch.equal(B.detach(), torch.zeros_like(B)):
        raise AssertionError("lora_B must start at zero, so that the adapted layer equals the pretrained one at step 0.")
    if torch.equal(A.detach(), torch.zeros_like(A)):
        raise AssertionError("lora_A must start random, not zero: with A = B = 0 the gradient of both factors is zero "
                             "and training never starts.")
    x = torch.randn(4, 7)
    with torch.no_grad():
        _diagnose(layer(x), base(x), {}, "the forward pass at initialisation (it must equal base(x))")
        A.copy_(torch.randn_like(A))
        B.copy_(torch.randn_like(B))
        got = layer(x)
    if not torch.equal(base.weight.detach(), reference_weight):
        raise AssertionError("the layer changed W₀: LoRA leaves the pretrained weight untouched.")
    update = x @ A.detach().T @ B.detach().T
    _diagnose(got, base(x) + 2.0 * update, {
        "you forgot the scaling α/r = 6/3 = 2.": base(x) + update,
        "the scaling is α/r, not α.": base(x) + 6.0 * update,
        "the scaling is α/r, not r/α.": base(x) + 0.5 * update,
        "you forgot the frozen path base(x).": 2.0 * update,
    }, "the forward pass")
    return _ok("check_lora_layer")


@_private_rng
def check_lora_embedding(layer_cls) -> bool:
    """``layer_cls(base: nn.Embedding, r, alpha)``: LoRA on an embedding table, compared with PEFT's own layer.

    E ∈ R^{V×H} (V tokens, H dims); ``lora_embedding_A`` (r, V), ``lora_embedding_B`` (H, r) as in PEFT;
    ``forward(ids) = E[ids] + (α/r) · Aᵀ[ids] Bᵀ``, i.e. ΔE = (α/r)(B A)ᵀ. One factor starts at zero.
    """
    from peft import LoraConfig
    from peft.tuners.lora.layer import Embedding as PeftEmbedding

    V, H, r, alpha = 11, 6, 3, 6.0
    base = nn.Embedding(V, H)
    reference_table = base.weight.detach().clone()
    layer = _call(layer_cls, base, r, alpha, what="the layer", shape_hint="A is (r, V), B is (H, r), ids are (N, L).")
    for name in ("lora_embedding_A", "lora_embedding_B"):
        if not isinstance(getattr(layer, name, None), nn.Parameter):
            raise AssertionError(f"the layer needs a trainable nn.Parameter named {name} (PEFT's names).")
    A, B = layer.lora_embedding_A, layer.lora_embedding_B
    if tuple(A.shape) == (V, r) or tuple(B.shape) == (r, H):
        raise AssertionError(f"a factor is transposed: lora_embedding_A must be (r, V) = ({r}, {V}) and lora_embedding_B "
                             f"(H, r) = ({H}, {r}); got {tuple(A.shape)} and {tuple(B.shape)}.")
    if tuple(A.shape) != (r, V) or tuple(B.shape) != (H, r):
        raise AssertionError(f"lora_embedding_A must be (r, V) = ({r}, {V}) and lora_embedding_B (H, r) = ({H}, {r}); "
                             f"got {tuple(A.shape)} and {tuple(B.shape)}.")
    if base.weight.requires_grad or not (A.requires_grad and B.requires_grad):
        raise AssertionError("freeze the table (base.requires_grad_(False)) and keep both factors trainable.")
    a_zero, b_zero = (not t.detach().any() for t in (A, B))
    if a_zero and b_zero:
        raise AssertionError("both factors start at zero: then neither gets a gradient and training never starts. "
                             "Start one at zero (PEFT: A) and the other random (PEFT: B).")
    ids = torch.tensor([[0, 3, 10, 3], [5, 5, 1, 7]])
    with torch.no_grad():
        if not (a_zero or b_zero):
            raise AssertionError("one factor must start at zero, so that the adapted table starts as the pretrained one.")
        _diagnose(layer(ids), base(ids), {}, "the lookup at initialisation (it must equal base(ids))")
        A.copy_(torch.randn_like(A))
        B.copy_(torch.randn_like(B))
        got = layer(ids)
        peft_layer = PeftEmbedding(nn.Embedding(V, H), "default", LoraConfig(r=r, lora_alpha=alpha), r=r, lora_alpha=alpha)
        peft_layer.base_layer.weight.copy_(reference_table)
        peft_layer.lora_embedding_A["default"].copy_(A)
        peft_layer.lora_embedding_B["default"].copy_(B)
        expected = peft_layer(ids)                                              # PEFT, the independent reference
    if not torch.equal(base.weight.detach(), reference_table):
        raise AssertionError("the layer changed the pretrained table: LoRA leaves it untouched.")
    update = A.detach().T[ids] @ B.detach().T                                   # (N, L, H)
    _diagnose(got, expected, {
        "you forgot the scaling α/r = 6/3 = 2.": base(ids) + update,
        "the scaling is α/r, not α.": base(ids) + alpha * update,
        "the scaling is α/r, not r/α.": base(ids) + (r / alpha) * update,
        "you forgot the pretrained lookup base(ids).": (alpha / r) * update,
    }, "the lookup")
    trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    if trainable != r * (V + H):
        raise AssertionError(f"the layer trains {trainable} numbers; LoRA on a {V}×{H} table with r = {r} trains r·(V + H) = "
                             f"{r * (V + H)}: only the two factors.")
    return _ok("check_lora_embedding")


@_private_rng
def check_merge(merge) -> bool:
    """``merge(layer)`` takes a LoRALinear and returns a new ``nn.Linear`` with weight W₀ + ΔW (and the bias)."""
    from .lora import LoRALinear

    layer = LoRALinear(nn.Linear(6, 6), r=2, alpha=4.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    before = copy.deepcopy(layer.state_dict())
    merged = _call(merge, layer, what="merge")
    changed = any(not torch.equal(before[k], v) for k, v in layer.state_dict().items())
    if changed or getattr(layer, "merged", False):
        raise AssertionError("merge changed the adapted layer: build and return a new nn.Linear, leave the input alone.")
    if not isinstance(merged, nn.Linear):
        raise AssertionError(f"merge must return an nn.Linear, got {type(merged).__name__}.")
    W0, b0, A, B = (layer.base.weight.detach(), layer.base.bias.detach(), layer.lora_A.detach(), layer.lora_B.detach())
    _diagnose(merged.weight.detach(), W0 + 2.0 * B @ A, {
        "you forgot the scaling α/r.": W0 + B @ A,
        "ΔW is transposed: add B @ A (d_out, d_in), not its transpose.": W0 + 2.0 * (B @ A).T,
        "the merged weight is only ΔW: add it to W₀.": 2.0 * B @ A,
    }, "the merged weight")
    if merged.bias is None or not torch.allclose(merged.bias.detach(), b0):
        raise AssertionError("the merged layer lost the bias b₀: copy it over.")
    x = torch.randn(3, 6)
    with torch.no_grad():
        _diagnose(merged(x), layer(x), {}, "merged(x) vs layer(x)")
    return _ok("check_merge")


@_private_rng
def check_trainable_count(count_trainable) -> bool:
    """``count_trainable(model)`` must return the number of trainable *elements* (LoRA factors + head)."""
    from .lora import inject_lora

    model = nn.Sequential()
    model.add_module("layer", nn.ModuleList([nn.ModuleDict({"query": nn.Linear(8, 8), "value": nn.Linear(8, 8)}) for _ in range(2)]))
    model.add_module("head", nn.Linear(8, 2))
    inject_lora(model, ["query", "value"], r=2, alpha=4)
    params = list(model.named_parameters())
    expected = sum(p.numel() for _, p in params if p.requires_grad)
    got = _call(count_trainable, model, what="count_trainable")
    if isinstance(got, torch.Tensor):
        got = got.item()
    if got == expected:
        return _ok("check_trainable_count")
    mistakes = {
        sum(p.numel() for _, p in params): "you counted every parameter; count only those with requires_grad=True.",
        sum(1 for _, p in params if p.requires_grad): "you counted tensors, not elements: sum p.numel().",
        sum(p.numel() for n, p in params if "lora_" in n): "you counted only the LoRA factors; the head is trainable too.",
        sum(p.numel() for _, p in params if not p.requires_grad): "you counted the frozen parameters instead of the trainable ones.",
    }
    raise AssertionError(f"count_trainable returned {got}, expected {expected}: " + mistakes.get(got, "check which tensors you include."))


# Checks of the path and curve exercises (notebooks 02 and 03) live in their own module.
from .checks_paths import (  # noqa: E402,F401
    check_barrier, check_bernstein, check_bezier_point, check_gauge, check_interpolate, check_locate,
)

# Checks of the rank-selection exercises (notebook 05).
from .checks_lrvd import check_kl_sparse_vd, check_local_reparameterisation, check_prune  # noqa: E402,F401

# Checks of the uncertainty exercises (notebook 04).
from .checks_bma import check_bma, check_ece, check_jsd_loss, check_mutual_information  # noqa: E402,F401
from .checks_bayes import (  # noqa: E402,F401
    check_blob_bottleneck,
    check_conditional_kl_per_example,
    check_inducing_kl,
    check_matheron,
)

# Checks of the ★★★ derivation exercises (notebooks 01–05).
from .checks_derive import (  # noqa: E402,F401
    check_best_middle_point,
    check_gauge_between,
    check_lora_grads,
    check_noise_fit_gain,
    check_two_point_jsd,
)

# Checks of the capstone exercises (notebook 07).
from .checks_capstone import check_laplace_logistic, check_pareto_front, check_temperature  # noqa: E402,F401
