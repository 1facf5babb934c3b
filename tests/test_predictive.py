import copy

import pytest
import torch

from minibayeslora.lora import inject_lora
from minibayeslora.lrvd import VariationalLoRALinear, sampling
from minibayeslora.predictive import MAP, LRVDSampler, batch_rows, repeat_batch, sample_probabilities
from minibayeslora.train import make_data


def test_repeat_batch_stacks_tensors_only():
    batch = {"prefix_hidden": torch.arange(6.0).view(3, 2), "attention_mask": torch.ones(3, 2), "start_layer": 4}
    stacked = repeat_batch(batch, 2)
    assert stacked["prefix_hidden"].shape == (6, 2) and stacked["start_layer"] == 4
    torch.testing.assert_close(stacked["prefix_hidden"][3:], batch["prefix_hidden"])


def test_batch_rows_reads_the_example_axis_and_refuses_a_batch_without_one():
    assert batch_rows({"start_layer": 4, "scale": torch.tensor(2.0), "input_ids": torch.zeros(5, 7)}) == 5
    with pytest.raises(ValueError, match="first .example. axis"):
        batch_rows({"start_layer": 4, "scale": torch.tensor(2.0)})


def test_map_and_sample_probabilities_keep_data_order(lrvd_model, task, isolated_cache):
    data = make_data(lrvd_model, task.val.subset(20, seed=0))
    probs = sample_probabilities(MAP(lrvd_model), data, S=1, batch_size=6)
    assert probs.shape == (1, 20, 2)
    with torch.no_grad():  # brute force, one example at a time, in data order
        expected = torch.cat([lrvd_model(**data.inputs(torch.tensor([i]))).softmax(-1) for i in range(20)])
    torch.testing.assert_close(probs[0], expected, atol=1e-5, rtol=1e-5)


def test_lrvd_sampler_draws_noise_in_one_stacked_pass(lrvd_model, task, isolated_cache):
    data = make_data(lrvd_model, task.val.subset(8, seed=0))
    inputs = data.inputs(torch.arange(8))
    sampler = LRVDSampler(lrvd_model, seed=3)
    samples = sampler.predict_samples(inputs, S=5)
    assert samples.shape == (5, 8, 2)
    torch.testing.assert_close(samples.sum(-1), torch.ones(5, 8))
    assert samples.std(0).max() > 1e-3, "the draws differ"
    torch.testing.assert_close(sampler.predict_samples(inputs, S=5), samples)  # seeded: reproducible
    assert not any(m.sampling for m in lrvd_model.modules() if isinstance(m, VariationalLoRALinear)), "noise off again"
    # with the noise turned off (α → 0) every draw equals the mean path
    for module in lrvd_model.modules():
        if isinstance(module, VariationalLoRALinear):
            module.log_alpha.data.fill_(-40.0)
    torch.testing.assert_close(sampler.predict_samples(inputs, S=3), MAP(lrvd_model).predict_samples(inputs).expand(3, -1, -1),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="S must"):
        sampler.predict_samples(inputs, S=0)


def test_lrvd_sampler_needs_lrvd_layers(minilm_fresh):
    inject_lora(minilm_fresh, ["query"], r=2, alpha=4, layers=[5])
    with pytest.raises(ValueError, match="VariationalLoRALinear"):
        LRVDSampler(minilm_fresh)
    with pytest.raises(ValueError, match="no stochastic adapter layer"), sampling(minilm_fresh):
        pass


def test_predicting_leaves_the_train_flag_as_it_was(lrvd_model, task, isolated_cache):
    data = make_data(lrvd_model, task.val.subset(4, seed=0))
    lrvd_model.train()
    MAP(lrvd_model).predict_samples(data.inputs(torch.arange(4)))
    LRVDSampler(lrvd_model).predict_samples(data.inputs(torch.arange(4)), S=2)
    assert lrvd_model.training


def test_mc_dropout_samples_only_inside_its_call(minilm_fresh, task, isolated_cache):
    from minibayeslora.predictive import MCDropout

    inject_lora(minilm_fresh, ["query", "value"], r=2, alpha=4, layers=[5], dropout=0.3)
    for module in minilm_fresh.modules():
        if hasattr(module, "lora_B"):
            module.lora_B.data.normal_(std=0.5)
    data = make_data(minilm_fresh, task.val.subset(6, seed=0))
    inputs = data.inputs(torch.arange(6))
    mc = MCDropout(minilm_fresh, seed=1)
    samples = mc.predict_samples(inputs, S=4)
    assert samples.shape == (4, 6, 2) and samples.std(0).max() > 1e-4
    torch.testing.assert_close(mc.predict_samples(inputs, S=4), samples)
    # outside the call, dropout is off again: the deterministic prediction is back
    torch.testing.assert_close(MAP(minilm_fresh).predict_samples(inputs), MAP(minilm_fresh).predict_samples(inputs))
    assert not any(m.training for m in minilm_fresh.modules())
    without_dropout = _no_dropout(copy.deepcopy(minilm_fresh))
    with pytest.raises(ValueError, match="dropout"):
        MCDropout(without_dropout)


def _no_dropout(model):
    for module in model.modules():
        if hasattr(module, "lora_B"):
            module.dropout = torch.nn.Identity()
    return model


def _random_states(model, task, n_states, n_inputs):
    """The model's adapter state, ``n_states`` seeded random perturbations of it, and a batch of validation inputs."""
    from minibayeslora.lora import adapter_state

    base = adapter_state(model)
    g = torch.Generator().manual_seed(0)
    states = [{k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(n_states)]
    inputs = make_data(model, task.val.subset(n_inputs, seed=0)).inputs(torch.arange(n_inputs))
    return base, states, inputs


def test_state_average_equals_loading_each_state(minilm_fresh, task, isolated_cache):
    from minibayeslora.curves import BezierChain
    from minibayeslora.lora import load_adapter_state
    from minibayeslora.predictive import StateAverage, curve_states

    inject_lora(minilm_fresh, ["query"], r=2, alpha=4, layers=[5])
    _, states, inputs = _random_states(minilm_fresh, task, n_states=3, n_inputs=5)
    got = StateAverage(minilm_fresh, states).predict_samples(inputs)
    for i, state in enumerate(states):
        load_adapter_state(minilm_fresh, state)
        torch.testing.assert_close(got[i], MAP(minilm_fresh).predict_samples(inputs)[0], atol=1e-6, rtol=1e-5)
    chain = BezierChain(states[:2], degree=2)
    ends = curve_states(chain, [0.0, 1.0])
    torch.testing.assert_close(StateAverage(minilm_fresh, ends).predict_samples(inputs), got[:2], atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError):
        StateAverage(minilm_fresh, [])


def test_batched_state_average_equals_the_sequential_one(minilm_fresh, task, isolated_cache):
    from minibayeslora.predictive import StateAverage, stacked_states

    inject_lora(minilm_fresh, ["query", "value"], r=2, alpha=4, layers=[4, 5])
    base, states, inputs = _random_states(minilm_fresh, task, n_states=4, n_inputs=6)
    sequential = StateAverage(minilm_fresh, states).predict_samples(inputs)
    batched = StateAverage(minilm_fresh, states, batched=True).predict_samples(inputs)
    assert batched.shape == (4, 6, 2)
    torch.testing.assert_close(batched, sequential, atol=1e-5, rtol=1e-4)
    assert not any("forward" in vars(m) for m in minilm_fresh.modules()), "the patch is undone after the call"
    torch.testing.assert_close(MAP(minilm_fresh).predict_samples(inputs)[0],
                               StateAverage(minilm_fresh, [base]).predict_samples(inputs)[0], atol=1e-6, rtol=1e-5)
    with pytest.raises(KeyError, match="same tensor names"):
        with stacked_states(minilm_fresh, [states[0], {k: v for k, v in list(states[1].items())[1:]}]):
            pass
    odd = [dict(s, **{"encoder.embeddings.LayerNorm.weight": torch.ones(384)}) for s in states[:2]]
    with pytest.raises(ValueError, match="cannot stack"):
        with stacked_states(minilm_fresh, odd):
            pass
    assert not any("forward" in vars(m) for m in minilm_fresh.modules()), "undone after an error too"


def test_stacked_states_refuses_what_it_would_get_wrong(lrvd_model):
    from minibayeslora.backbones import load_backbone
    from minibayeslora.lora import adapter_state, lora_layers
    from minibayeslora.predictive import stacked_states

    lrvd_state = {k: v for k, v in adapter_state(lrvd_model).items() if not k.endswith("log_alpha")}
    with pytest.raises(ValueError, match="cannot stack"):  # the LRVD mean path masks ranks: not a plain LoRA
        with stacked_states(lrvd_model, [lrvd_state, lrvd_state]):
            pass
    plain = load_backbone("minilm")
    inject_lora(plain, ["query"], r=2, alpha=4, layers=[4, 5])
    state = adapter_state(plain)
    list(lora_layers(plain).values())[-1].merge()  # block 4's layer is patched before block 5's refuses
    with pytest.raises(ValueError, match="unmerge"):
        with stacked_states(plain, [state, state]):
            pass
    assert not any("forward" in vars(m) for m in plain.modules())
