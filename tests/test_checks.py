"""Every check passes the reference and names each typical mistake with its own hint."""

import copy

import pytest
import torch
from torch import nn

from minibayeslora import checks
from minibayeslora.lora import LoRALinear


def _fails_with(check, impl, hint):
    with pytest.raises(AssertionError, match=hint):
        check(impl)


# ---- delta_weight ----

DELTA_MISTAKES = {
    "forgot_scaling": (lambda A, B, alpha, r: B @ A, "forgot the scaling"),
    "inverted_scaling": (lambda A, B, alpha, r: (r / alpha) * B @ A, "not r/α"),
    "transposed": (lambda A, B, alpha, r: (alpha / r) * A.T @ B.T, "transposed"),
    "wrong_order": (lambda A, B, alpha, r: (alpha / r) * A @ B, "shape mismatch"),
    "not_implemented": (lambda A, B, alpha, r: (_ for _ in ()).throw(NotImplementedError()), "not implemented yet"),
}


def test_delta_weight_reference_passes(capsys):
    assert checks.check_delta_weight(lambda A, B, alpha, r: (alpha / r) * B @ A)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("mistake", DELTA_MISTAKES)
def test_delta_weight_mistakes(mistake):
    impl, hint = DELTA_MISTAKES[mistake]
    _fails_with(checks.check_delta_weight, impl, hint)


# ---- lora_forward ----

def _forward(x, W0, b0, A, B, alpha, r):
    return x @ W0.T + b0 + (alpha / r) * (x @ A.T) @ B.T


FORWARD_MISTAKES = {
    "forgot_scaling": (lambda x, W0, b0, A, B, alpha, r: x @ W0.T + b0 + x @ A.T @ B.T, "forgot the scaling"),
    "no_base": (lambda x, W0, b0, A, B, alpha, r: (alpha / r) * x @ A.T @ B.T, "forgot the frozen path"),
    "no_bias": (lambda x, W0, b0, A, B, alpha, r: x @ W0.T + (alpha / r) * x @ A.T @ B.T, "forgot the bias"),
    "untransposed_W0": (lambda x, W0, b0, A, B, alpha, r: x @ W0 + b0 + (alpha / r) * x @ A.T @ B.T, "untransposed"),
    "factors_transposed": (lambda x, W0, b0, A, B, alpha, r: x @ W0.T + b0 + (alpha / r) * x @ A @ B, "shape mismatch"),
}


def test_lora_forward_reference_passes():
    assert checks.check_lora_forward(_forward)


@pytest.mark.parametrize("mistake", FORWARD_MISTAKES)
def test_lora_forward_mistakes(mistake):
    impl, hint = FORWARD_MISTAKES[mistake]
    _fails_with(checks.check_lora_forward, impl, hint)


# ---- the LoRA layer ----

class _Layer(nn.Module):
    """Reference, with switches that reproduce the classic mistakes."""

    def __init__(self, base, r, alpha, *, b_random=False, a_zero=False, base_trainable=False,
                 transposed_A=False, scaling=None):
        super().__init__()
        self.base = base if base_trainable else base.requires_grad_(False)
        a_shape = (base.in_features, r) if transposed_A else (r, base.in_features)
        self.lora_A = nn.Parameter(torch.zeros(a_shape) if a_zero else torch.randn(a_shape) * 0.1)
        self.lora_B = nn.Parameter(torch.randn(base.out_features, r) if b_random else torch.zeros(base.out_features, r))
        self.scaling = alpha / r if scaling is None else scaling(alpha, r)

    def forward(self, x):
        return self.base(x) + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T


LAYER_MISTAKES = {
    "b_random": (dict(b_random=True), "lora_B must start at zero"),
    "a_zero": (dict(a_zero=True), "must start random, not zero"),
    "base_trainable": (dict(base_trainable=True), "must be frozen"),
    "transposed_A": (dict(transposed_A=True), "a factor is transposed"),
    "scaling_alpha": (dict(scaling=lambda alpha, r: alpha), "not α"),
    "no_scaling": (dict(scaling=lambda alpha, r: 1.0), "forgot the scaling"),
}


def test_lora_layer_reference_and_package_class_pass():
    assert checks.check_lora_layer(_Layer)
    assert checks.check_lora_layer(LoRALinear)


@pytest.mark.parametrize("mistake", LAYER_MISTAKES)
def test_lora_layer_mistakes(mistake):
    kwargs, hint = LAYER_MISTAKES[mistake]
    _fails_with(checks.check_lora_layer, lambda base, r, alpha: _Layer(base, r, alpha, **kwargs), hint)


# ---- merge ----

def _merge(layer):
    merged = nn.Linear(layer.in_features, layer.out_features)
    with torch.no_grad():
        merged.weight.copy_(layer.base.weight + layer.delta_weight())
        merged.bias.copy_(layer.base.bias)
    return merged


def _in_place(layer):
    layer.merge()
    return layer.base


def _merge_variant(weight_fn, keep_bias=True):
    def merge(layer):
        merged = nn.Linear(layer.in_features, layer.out_features, bias=keep_bias)
        with torch.no_grad():
            merged.weight.copy_(weight_fn(layer))
            if keep_bias:
                merged.bias.copy_(layer.base.bias)
        return merged
    return merge


MERGE_MISTAKES = {
    "in_place": (_in_place, "changed the adapted layer"),
    "forgot_scaling": (_merge_variant(lambda l: l.base.weight + l.lora_B @ l.lora_A), "forgot the scaling"),
    "transposed": (_merge_variant(lambda l: l.base.weight + l.delta_weight().T), "transposed"),
    "only_delta": (_merge_variant(lambda l: l.delta_weight()), "only ΔW"),
    "lost_bias": (_merge_variant(lambda l: l.base.weight + l.delta_weight(), keep_bias=False), "lost the bias"),
    "returns_lora_layer": (lambda l: copy.deepcopy(l), "must return an nn.Linear"),
}


def test_merge_reference_passes():
    assert checks.check_merge(_merge)


@pytest.mark.parametrize("mistake", MERGE_MISTAKES)
def test_merge_mistakes(mistake):
    impl, hint = MERGE_MISTAKES[mistake]
    _fails_with(checks.check_merge, impl, hint)


# ---- trainable parameter count ----

COUNT_MISTAKES = {
    "all_params": (lambda m: sum(p.numel() for p in m.parameters()), "counted every parameter"),
    "tensors": (lambda m: sum(1 for p in m.parameters() if p.requires_grad), "tensors, not elements"),
    "lora_only": (lambda m: sum(p.numel() for n, p in m.named_parameters() if "lora_" in n), "head is trainable too"),
    "frozen": (lambda m: sum(p.numel() for p in m.parameters() if not p.requires_grad), "frozen parameters instead"),
}


def test_trainable_count_reference_passes():
    assert checks.check_trainable_count(lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad))


@pytest.mark.parametrize("mistake", COUNT_MISTAKES)
def test_trainable_count_mistakes(mistake):
    impl, hint = COUNT_MISTAKES[mistake]
    _fails_with(checks.check_trainable_count, impl, hint)


def test_checks_leave_the_callers_random_stream_alone():
    """A check seeds its own draws; the caller's next random numbers are the ones it would have drawn anyway."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    assert checks.check_lora_layer(LoRALinear)
    assert checks.check_merge(_merge)
    assert checks.check_trainable_count(lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad))
    assert torch.equal(torch.rand(3), expected)


def test_checks_are_deterministic_whatever_the_callers_seed():
    """The same (wrong) layer fails with the same message after any global seed: the check owns its randomness."""
    messages = set()
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        with pytest.raises(AssertionError) as failure:
            checks.check_lora_layer(lambda base, r, alpha: _Layer(base, r, alpha, b_random=True))
        messages.add(str(failure.value))
    assert len(messages) == 1


def test_assert_own_work_notices_a_call_to_the_package_reference():
    from minibayeslora import checks

    def honest(probs, labels):
        return (probs.argmax(1) != labels).float().mean()

    namespace = {}
    exec("from minibayeslora import metrics\nfrom minibayeslora.metrics import ece as e\n"
         "def by_module(p, y):\n    return metrics.ece(p, y)\n"
         "def by_name(p, y):\n    return e(p, y)\n"
         "def nested(p, y):\n    return (lambda: metrics.ece(p, y))()\n"
         "class Wrapper:\n    def score(self, p, y):\n        return e(p, y)\n", namespace)
    checks.assert_own_work(honest, "minibayeslora.metrics.ece")
    for name in ("by_module", "by_name", "nested", "Wrapper"):
        with pytest.raises(AssertionError, match="calls minibayeslora.metrics.ece"):
            checks.assert_own_work(namespace[name], "minibayeslora.metrics.ece")


# ---- LoRA on an embedding table ----

class _Embedding(nn.Module):
    """Reference LoRA embedding (PEFT's convention: A zero, B random), with switches for the classic mistakes."""

    def __init__(self, base, r, alpha, *, both_zero=False, none_zero=False, transposed=False, scaling=None,
                 no_base=False, table_trainable=False):
        super().__init__()
        self.base = base if table_trainable else base.requires_grad_(False)
        V, H = base.num_embeddings, base.embedding_dim
        a_shape = (V, r) if transposed else (r, V)
        self.lora_embedding_A = nn.Parameter(torch.randn(a_shape) if none_zero else torch.zeros(a_shape))
        self.lora_embedding_B = nn.Parameter(torch.zeros(H, r) if both_zero else torch.randn(H, r))
        self.scaling = alpha / r if scaling is None else scaling(alpha, r)
        self.no_base = no_base

    def forward(self, ids):
        update = self.scaling * (nn.functional.embedding(ids, self.lora_embedding_A.T) @ self.lora_embedding_B.T)
        return update if self.no_base else self.base(ids) + update


EMBEDDING_MISTAKES = {
    "both_zero": (dict(both_zero=True), "both factors start at zero"),
    "none_zero": (dict(none_zero=True), "one factor must start at zero"),
    "transposed": (dict(transposed=True), "a factor is transposed"),
    "scaling_alpha": (dict(scaling=lambda alpha, r: alpha), "not α"),
    "no_scaling": (dict(scaling=lambda alpha, r: 1.0), "forgot the scaling"),
    "no_base": (dict(no_base=True), "at initialisation"),
    "table_trainable": (dict(table_trainable=True), "freeze the table"),
}


def test_lora_embedding_reference_passes():
    assert checks.check_lora_embedding(_Embedding)


@pytest.mark.parametrize("mistake", EMBEDDING_MISTAKES)
def test_lora_embedding_mistakes(mistake):
    kwargs, hint = EMBEDDING_MISTAKES[mistake]
    _fails_with(checks.check_lora_embedding, lambda base, r, alpha: _Embedding(base, r, alpha, **kwargs), hint)
