import copy

import pytest
import torch
from torch import nn

from minibayeslora import lora
from minibayeslora.lora import LoRALinear, adapter_state, inject_lora, load_adapter_state


def _randomise_B(model_or_layers, seed=0):
    g = torch.Generator().manual_seed(seed)
    layers = model_or_layers.values() if isinstance(model_or_layers, dict) else [model_or_layers]
    with torch.no_grad():
        for layer in layers:
            layer.lora_B.copy_(0.05 * torch.randn(layer.lora_B.shape, generator=g))


def test_lora_linear_closed_form_and_init():
    torch.manual_seed(0)
    base = nn.Linear(7, 5)
    layer = LoRALinear(base, r=3, alpha=6.0)
    assert layer.lora_A.shape == (3, 7) and layer.lora_B.shape == (5, 3) and layer.scaling == 2.0
    assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.lora_A) == 21
    x = torch.randn(4, 2, 7)
    torch.testing.assert_close(layer(x), base(x))  # B = 0: the pretrained layer
    _randomise_B(layer)
    A, B = layer.lora_A.detach(), layer.lora_B.detach()
    torch.testing.assert_close(layer.delta_weight(), 2.0 * B @ A)
    expected = x @ (base.weight + 2.0 * B @ A).T + base.bias
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-5)
    assert not any(p.requires_grad for p in base.parameters())


def test_lora_linear_equals_peft_layer():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    ours = LoRALinear(nn.Linear(16, 12), r=4, alpha=8)
    _randomise_B(ours)
    wrapper = nn.Sequential()
    wrapper.add_module("proj", copy.deepcopy(ours.base))
    peft_model = get_peft_model(wrapper, LoraConfig(r=4, lora_alpha=8, target_modules=["proj"]))
    peft_layer = peft_model.base_model.model.proj
    with torch.no_grad():
        peft_layer.lora_A["default"].weight.copy_(ours.lora_A)
        peft_layer.lora_B["default"].weight.copy_(ours.lora_B)
    x = torch.randn(10, 16)
    assert (ours(x) - peft_model(x)).abs().max() <= 1e-6
    assert (ours(x) - ours.base(x)).abs().max() > 1e-3, "the adapter must actually change the output"


def test_merge_unmerge_round_trip_and_idempotence():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 8), r=2, alpha=4)
    _randomise_B(layer)
    w0 = layer.base.weight.detach().clone()
    x = torch.randn(5, 8)
    y = layer(x)
    layer.merge()
    layer.merge()  # a second merge does nothing
    assert layer.merged
    torch.testing.assert_close(layer(x), y, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(layer.base.weight.detach(), w0 + layer.delta_weight().detach())
    layer.unmerge()
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight.detach(), w0, atol=1e-7, rtol=0)
    torch.testing.assert_close(layer(x), y, atol=1e-6, rtol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="rank r"):
        LoRALinear(nn.Linear(4, 4), r=0, alpha=1)
    with pytest.raises(ValueError, match="alpha"):
        LoRALinear(nn.Linear(4, 4), r=2, alpha=0)
    with pytest.raises(TypeError, match="wraps nn.Linear"):
        LoRALinear(nn.Conv1d(4, 4, 1), r=2, alpha=1)


def test_inject_selects_layers_and_freezes_the_rest(minilm_fresh):
    model = minilm_fresh
    injected = inject_lora(model, ["query", "value"], r=4, alpha=8, layers=[3, 4, 5])
    assert sorted(injected) == sorted(f"encoder.encoder.layer.{i}.attention.self.{t}" for i in (3, 4, 5) for t in ("query", "value"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{f}" for n in injected for f in "AB"} | {"head.weight", "head.bias"}
    assert set(adapter_state(model)) == trainable
    assert isinstance(model.layers[2].attention.self.query, nn.Linear)
    with pytest.raises(ValueError, match="already holds a LoRA adapter"):
        inject_lora(model, ["query"], r=4, alpha=8)


def test_inject_without_match_names_the_linears(minilm_fresh):
    with pytest.raises(ValueError, match=r"linear layer names in this model: .*'query'"):
        inject_lora(minilm_fresh, ["q_proj"], r=4, alpha=8)


def test_adapter_state_round_trip_and_clear_errors(minilm_fresh):
    model = minilm_fresh
    injected = inject_lora(model, ["query", "value"], r=4, alpha=8, layers=[5])
    _randomise_B(injected)
    state = adapter_state(model)
    batch = model.tokenize(["a fine film", "a dull one"])
    with torch.no_grad():
        before = model(**batch)
        for p in model.parameters():
            if p.requires_grad:
                p.zero_()
        load_adapter_state(model, state)
        torch.testing.assert_close(model(**batch), before)
    with pytest.raises(KeyError, match="missing .*head.bias"):
        load_adapter_state(model, {k: v for k, v in state.items() if k != "head.bias"})
    bad = dict(state)
    key = next(k for k in state if k.endswith("lora_A"))
    bad[key] = torch.zeros(8, state[key].shape[1])
    with pytest.raises(ValueError, match="a different rank r"):
        load_adapter_state(model, bad)


def test_minilm_lora_equals_peft_both_ways(minilm_fresh, tmp_path):
    """Our LoRA on MiniLM = PEFT's LoRA with the same factors, through PEFT's own save/load."""
    from peft import PeftModel, get_peft_model, get_peft_model_state_dict

    from minibayeslora.backbones import load_backbone

    model = minilm_fresh
    pristine = copy.deepcopy(model)
    injected = inject_lora(model, ["query", "value"], r=4, alpha=8, layers=[3, 4, 5])
    _randomise_B(injected, seed=3)
    batch = model.tokenize(["A warm, wise film.", "Two hours I will never get back.", "Fine."])
    with torch.no_grad():
        ours = model(**batch)
        assert (ours - pristine(**batch)).abs().max() > 1e-3

    # ours -> PEFT folder -> PeftModel.from_pretrained
    folder = lora.save_peft_adapter(model, tmp_path / "adapter")
    peft_model = PeftModel.from_pretrained(copy.deepcopy(pristine), str(folder))
    with torch.no_grad():
        assert (peft_model(**batch) - ours).abs().max() <= 1e-5

    # PEFT-trained state -> ours
    peft_model = get_peft_model(copy.deepcopy(pristine), lora.peft_config_for(model))
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
        reference = peft_model(**batch)
    target = load_backbone("minilm")
    inject_lora(target, ["query", "value"], r=4, alpha=8, layers=[3, 4, 5])
    lora.load_peft_adapter(target, get_peft_model_state_dict(peft_model))
    with torch.no_grad():
        assert (target(**batch) - reference).abs().max() <= 1e-5

    wrong_rank = load_backbone("minilm")
    inject_lora(wrong_rank, ["query", "value"], r=2, alpha=8, layers=[3, 4, 5])
    with pytest.raises(ValueError, match="r=2"):
        lora.load_peft_adapter(wrong_rank, folder)


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_qlora_trains_after_an_eval_pass(quantization):
    from minibayeslora.backbones import load_backbone

    torch.manual_seed(0)
    model = load_backbone("minilm", quantization=quantization)
    injected = inject_lora(model, ["query", "value"], r=4, alpha=8)
    assert type(next(iter(injected.values())).base).__name__ in ("Linear4bit", "Linear8bitLt")
    batch = model.tokenize(["A warm, wise film.", "Two hours I will never get back."])
    with torch.no_grad():
        assert torch.isfinite(model.eval()(**batch)).all()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = torch.nn.functional.cross_entropy(model(**batch), torch.tensor([1, 0]))
    loss.backward()
    grads = [layer.lora_A.grad for layer in injected.values()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(layer.lora_B.grad.abs().sum() > 0 for layer in injected.values())
    optimizer.step()
    with pytest.raises(NotImplementedError, match="quantized base"):
        next(iter(injected.values())).merge()
