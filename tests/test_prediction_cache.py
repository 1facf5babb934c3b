"""Cached predictive samples: reused only when nothing they depend on has changed."""

import pytest
import torch

from minibayeslora import prediction_cache
from minibayeslora.predictive import MAP, LRVDSampler, StateAverage, sample_probabilities
from minibayeslora.temperature import TemperatureScaled
from minibayeslora.train import make_data


def _refuse_to_predict(monkeypatch, cls):
    monkeypatch.setattr(cls, "predict_samples", lambda *a, **k: pytest.fail("predicted although the result is cached"))


def test_a_repeated_call_loads_the_same_samples(lrvd_model, task, isolated_cache, monkeypatch):
    data = make_data(lrvd_model, task.val.subset(12, seed=0))
    first = sample_probabilities(LRVDSampler(lrvd_model, seed=3), data, S=4, batch_size=5)
    assert len(list((isolated_cache / "predictions").glob("*.safetensors"))) == 1
    uncached = sample_probabilities(LRVDSampler(lrvd_model, seed=3), data, S=4, batch_size=5, cache=False)
    torch.testing.assert_close(first, uncached, atol=0, rtol=0)    # seeded: the cache holds exactly the samples
    with monkeypatch.context() as patch:
        _refuse_to_predict(patch, LRVDSampler)
        torch.testing.assert_close(sample_probabilities(LRVDSampler(lrvd_model, seed=3), data, S=4, batch_size=5), first,
                                   atol=0, rtol=0)


def test_anything_the_samples_depend_on_changes_the_key(lrvd_model, task, isolated_cache):
    data = make_data(lrvd_model, task.val.subset(12, seed=0))
    other_data = make_data(lrvd_model, task.val.subset(12, seed=1))

    def key(method, data=data, S=4):
        return prediction_cache.method_key(method, data, S)

    base = key(LRVDSampler(lrvd_model, seed=3))
    assert base == key(LRVDSampler(lrvd_model, seed=3))
    different = {"seed": key(LRVDSampler(lrvd_model, seed=4)), "scale": key(LRVDSampler(lrvd_model, seed=3, scale=0.5)),
                 "S": key(LRVDSampler(lrvd_model, seed=3), S=8),
                 "data": key(LRVDSampler(lrvd_model, seed=3), data=other_data), "method": key(MAP(lrvd_model))}
    layer = lrvd_model.encoder.encoder.layer[5].attention.self.query
    with torch.no_grad():
        layer.log_alpha[0] += 0.1                                                   # a trainable tensor, in place
    different["trainable tensor"] = key(LRVDSampler(lrvd_model, seed=3))
    with torch.no_grad():
        lrvd_model.encoder.encoder.layer[5].output.dense.weight[0, 0] += 0.1       # a frozen one
    different["frozen tensor"] = key(LRVDSampler(lrvd_model, seed=3))
    layer.threshold = 1.0                                                           # a layer setting
    different["layer setting"] = key(LRVDSampler(lrvd_model, seed=3))
    assert len(set(different.values()) | {base}) == len(different) + 1, different


def test_states_and_temperatures_are_part_of_the_key(lrvd_model, task, isolated_cache):
    from minibayeslora.lora import adapter_state

    data = make_data(lrvd_model, task.val.subset(12, seed=0))
    state = adapter_state(lrvd_model)
    shifted = {k: v + 0.01 for k, v in state.items()}
    keys = {prediction_cache.method_key(StateAverage(lrvd_model, states), data, 1) for states in ([state], [shifted], [state, shifted])}
    keys |= {prediction_cache.method_key(TemperatureScaled(lrvd_model, t), data, 1) for t in (1.0, 2.0)}
    assert len(keys) == 5


def test_a_method_written_outside_the_package_is_never_cached(lrvd_model, task, isolated_cache):
    class MyMAP:                       # e.g. a student's method: its code may change between runs
        def __init__(self, model):
            self.model = model

        def predict_samples(self, inputs, S=1):
            with torch.no_grad():
                return self.model(**inputs).softmax(-1).unsqueeze(0)

    data = make_data(lrvd_model, task.val.subset(6, seed=0))
    assert prediction_cache.method_key(MyMAP(lrvd_model), data, 1) is None
    sample_probabilities(MyMAP(lrvd_model), data, S=1)
    assert not list((isolated_cache / "predictions").glob("*"))


def test_a_path_evaluation_is_cached_until_anything_it_depends_on_changes(lrvd_model, task, isolated_cache, monkeypatch):
    from minibayeslora import connectivity, train
    from minibayeslora.lora import adapter_state

    data = make_data(lrvd_model, task.val.subset(10, seed=0))
    a = adapter_state(lrvd_model)
    b = {k: v + 0.05 * torch.randn_like(v) for k, v in a.items()}
    line = lambda t: connectivity.lerp_states(a, b, t)   # noqa: E731
    ts = [0.0, 0.5, 1.0]
    first = connectivity.evaluate_path(lrvd_model, line, data, ts, batch_size=4)
    assert len(list((isolated_cache / "paths").glob("*.json"))) == 1
    assert connectivity.evaluate_path(lrvd_model, line, data, ts, batch_size=4, cache=False) == first   # exactly
    with monkeypatch.context() as patch:
        patch.setattr(train, "batched_logits", lambda *a, **k: pytest.fail("evaluated although the result is cached"))
        assert connectivity.evaluate_path(lrvd_model, line, data, ts, batch_size=4) == first

    def key(model=lrvd_model, ts=ts, states=None, data=data):
        return prediction_cache.path_key(model, ts, states or [line(t) for t in ts], data, 4)

    base = key()
    different = {"ts": key(ts=[0.0, 0.25, 1.0]), "a state": key(states=[line(t) for t in ts[:-1]] + [a]),
                 "data": key(data=make_data(lrvd_model, task.val.subset(10, seed=1)))}
    with torch.no_grad():
        lrvd_model.encoder.encoder.layer[5].output.dense.weight[0, 0] += 0.1       # a frozen tensor
    different["frozen tensor"] = key()
    assert len(set(different.values()) | {base}) == len(different) + 1, different


def test_a_model_running_a_layer_written_outside_the_package_is_not_cached(lrvd_model, task, isolated_cache):
    class Custom(torch.nn.Identity):   # a layer a student writes in a notebook: its code may change between runs
        pass

    data = make_data(lrvd_model, task.val.subset(4, seed=0))
    lrvd_model.add_module("student_layer", Custom())
    assert prediction_cache.path_key(lrvd_model, [0.0], [{}], data, 4) is None
