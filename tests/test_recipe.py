"""The training cache's key must change with everything that changes the trained weights."""

import inspect

import pytest
import torch
from torch import nn

from minibayeslora import recipe
from minibayeslora.balora import BaLoRALinear
from minibayeslora.blob import BLoBLinear
from minibayeslora.curve_training import CurveLoss, FactorPerturbation, jsd_regulariser
from minibayeslora.inducing import InducingLoRALinear
from minibayeslora.lora import LoRALinear, inject_lora
from minibayeslora.lrvd import LRVDLoss, VariationalLoRALinear
from minibayeslora.stochastic import ELBOLoss
from minibayeslora.train import TrainConfig, _cache_path, _recipe, cross_entropy, fit, make_data

LAYER_CLASSES = [LoRALinear, VariationalLoRALinear, BaLoRALinear, BLoBLinear, InducingLoRALinear]
OTHER_VALUE = {"r": 3, "alpha": 5.0, "dropout": 0.1, "noise": "token", "init_log_alpha": -3.0, "threshold": 2.0,
               "prior_sd": 0.5, "rho_init": 0.01, "m": 10}


@pytest.mark.parametrize("cls", LAYER_CLASSES, ids=lambda c: c.__name__)
def test_every_constructor_setting_of_every_adapter_layer_is_in_its_settings(cls):
    """A setting left out of ``settings()`` would let a layer built differently load another's cached weights."""
    arguments = [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "base")]
    layer = cls(nn.Linear(12, 12), r=2, alpha=4.0)
    assert set(layer.settings()) - {"class"} == set(arguments)
    for name in arguments:
        if name == "noise" and len(cls.NOISE) == 1:
            continue
        kwargs = {"r": 2, "alpha": 4.0, name: OTHER_VALUE[name]}
        assert cls(nn.Linear(12, 12), **kwargs).settings() != layer.settings(), name


@pytest.fixture(scope="module")
def small(task):
    return task.train.subset(32, seed=0), task.val.subset(16, seed=0)


def _model(r=4, alpha=8.0, dropout=0.0, targets=("query", "value"), layers=(4, 5), layer_cls=None, layer_kwargs=None):
    from minibayeslora.backbones import load_backbone

    torch.manual_seed(0)
    model = load_backbone("minilm", device="cpu")
    inject_lora(model, list(targets), r=r, alpha=alpha, dropout=dropout, layers=list(layers), layer_cls=layer_cls,
                layer_kwargs=layer_kwargs)
    return model


def test_changing_any_model_setting_retrains(small, isolated_cache):
    """α, dropout, r, target modules, layers, layer class and its kwargs, the frozen weights, the backbone: each retrains."""
    cfg, key = TrainConfig(steps=2, batch_size=8, eval_every=2), {"test": "recipe"}

    def run(model):
        return fit(model, make_data(model, small[0]), make_data(model, small[1]), cfg, cache_key=key, progress=False)

    assert not run(_model()).from_cache
    assert run(_model()).from_cache, "the same recipe must load"
    variants = {"alpha": lambda: _model(alpha=32.0), "dropout": lambda: _model(dropout=0.1), "r": lambda: _model(r=2),
                "targets": lambda: _model(targets=("query", "key")), "layers": lambda: _model(layers=(3, 5)),
                "layer class": lambda: _model(layer_cls=VariationalLoRALinear),
                "layer kwargs": lambda: _model(layer_cls=VariationalLoRALinear, layer_kwargs={"init_log_alpha": -3.0})}
    for name, make in variants.items():
        assert not run(make()).from_cache, name
    frozen = _model()
    with torch.no_grad():
        frozen.encoder.encoder.layer[5].output.dense.weight[0, 0] += 1e-3
    assert not run(frozen).from_cache, "a changed frozen weight"
    renamed = _model()
    renamed.name, renamed.quantization = "someone/minilm-variant", None
    assert not run(renamed).from_cache, "another backbone"
    quantized = _model()
    quantized.quantization = "8bit"
    assert _recipe(quantized, cross_entropy) != _recipe(_model(), cross_entropy), "quantization"


def test_changing_any_loss_setting_changes_the_key(small, isolated_cache):
    model = _model(layer_cls=VariationalLoRALinear)
    data, cfg, key = make_data(model, small[0]), TrainConfig(steps=2), {"test": "loss"}

    def path(loss):
        return _cache_path(_recipe(model, loss), data, None, cfg, key)

    elbo = ELBOLoss(32, kl_weight=1.0, warmup_steps=10)
    assert path(elbo) == path(ELBOLoss(32, kl_weight=1.0, warmup_steps=10))
    for other in [ELBOLoss(32, kl_weight=100.0, warmup_steps=10), ELBOLoss(32, kl_weight=1.0, warmup_steps=0),
                  ELBOLoss(64, kl_weight=1.0, warmup_steps=10), ELBOLoss(32, 1.0, 10, label_smoothing=0.05),
                  ELBOLoss(32, 1.0, 10, entropy_bonus=0.05), LRVDLoss(32, kl_weight=1.0, warmup_steps=10), cross_entropy]:
        assert path(other) != path(elbo), other
    curve = CurveLoss(n_t=2, seed=0, extra=jsd_regulariser(2.0), perturb=FactorPerturbation(0.1, ramp_calls=10, seed=0))
    same = CurveLoss(n_t=2, seed=0, extra=jsd_regulariser(2.0), perturb=FactorPerturbation(0.1, ramp_calls=10, seed=0))
    assert path(curve) == path(same)
    for other in [CurveLoss(n_t=3, seed=0, extra=jsd_regulariser(2.0), perturb=FactorPerturbation(0.1, ramp_calls=10, seed=0)),
                  CurveLoss(n_t=2, seed=0, extra=jsd_regulariser(1.0), perturb=FactorPerturbation(0.1, ramp_calls=10, seed=0)),
                  CurveLoss(n_t=2, seed=0, extra=jsd_regulariser(2.0), perturb=FactorPerturbation(0.3, ramp_calls=10, seed=0)),
                  CurveLoss(n_t=2, seed=0, extra=jsd_regulariser(2.0), perturb=FactorPerturbation(0.1, ramp_calls=10, seed=1)),
                  CurveLoss(n_t=2, seed=1, extra=jsd_regulariser(2.0), perturb=FactorPerturbation(0.1, ramp_calls=10, seed=0)),
                  CurveLoss(n_t=2, seed=0, extra=None, perturb=FactorPerturbation(0.1, ramp_calls=10, seed=0))]:
        assert path(other) != path(curve), other


def test_describe_names_closed_over_settings_and_refuses_what_it_cannot_describe():
    assert recipe.describe(jsd_regulariser(2.0))["lam"] == 2.0

    class Opaque:
        def __call__(self, model, inputs, labels):
            return model(**inputs).sum()

    with pytest.raises(TypeError, match="settings"):
        recipe.describe(Opaque())


def test_frozen_weights_are_hashed_once_until_one_changes(monkeypatch):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[1].requires_grad_(False)
    model[0].weight.requires_grad_(False)
    first = recipe.frozen_digest(model)
    calls = []
    real = recipe.hashlib.sha256
    monkeypatch.setattr(recipe.hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    assert recipe.frozen_digest(model) == first and not calls, "an unchanged model is not hashed again"
    with torch.no_grad():
        model[1].weight[0, 0] += 1.0
    changed = recipe.frozen_digest(model)
    assert changed != first and calls
    with torch.no_grad():
        model[0].bias[0] += 1.0            # trainable: not part of the frozen digest
    assert recipe.frozen_digest(model) == changed
