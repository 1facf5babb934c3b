"""The package on a GPU: every consumer keeps the model's tensors and its batches on one device.

Each test builds the same seeded model twice, once on the CPU (the reference) and once on CUDA, and
asserts that the CUDA run gives the CPU run's numbers (float32 matmuls on a GPU differ in the last
bits, hence the tolerances). Skipped without CUDA (see conftest); run on a GPU with
``bash bench/gpu_check.sh``.
"""

import importlib.util

import pytest
import torch

from minibayeslora import config
from minibayeslora.backbones import load_backbone
from minibayeslora.lora import adapter_state, inject_lora, load_adapter_state
from minibayeslora.train import TrainConfig, evaluate, fit, make_data, predict_logits

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def _pair(r=4, layers=(4, 5), layer_cls=None, layer_kwargs=None, dropout=0.0):
    """The same seeded MiniLM + LoRA on the CPU and on CUDA (identical weights).

    The backbone's own dropout is switched off: CPU and CUDA draw different dropout masks, so training
    losses could not be compared. (An adapter's ``dropout`` stays as asked.)
    """
    models = []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = load_backbone("minilm", device=device)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        inject_lora(model, ["query", "value"], r=r, alpha=2 * r, layers=list(layers), layer_cls=layer_cls,
                    layer_kwargs=layer_kwargs, dropout=dropout)
        models.append(model)
    cpu, gpu = models
    load_adapter_state(gpu, adapter_state(cpu))
    return cpu, gpu


def _perturbed(model, seed, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    return {k: v.cpu() + scale * torch.randn(v.shape, generator=g) for k, v in adapter_state(model).items()}


def test_load_backbone_puts_every_tensor_on_the_device():
    model = load_backbone("minilm")
    assert config.device().type == "cuda"
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    assert {b.device.type for b in model.buffers()} <= {"cuda"}
    inject_lora(model, ["query"], r=2, layers=[5])
    assert {p.device.type for p in model.parameters() if p.requires_grad} == {"cuda"}


@pytest.mark.parametrize("prefix", [False, True])
def test_training_on_cuda_matches_the_cpu_and_loads_on_either_device(task, isolated_cache, prefix):
    cpu, gpu = _pair()
    split = task.train.subset(96, seed=0)
    cfg = TrainConfig(steps=6, batch_size=16, eval_every=3, lr=1e-3)
    val = task.val.subset(48, seed=0)
    histories = []
    for model in (cpu, gpu):
        histories.append(fit(model, make_data(model, split, use_prefix_cache=prefix),
                             make_data(model, val, use_prefix_cache=prefix), cfg, progress=False))
    assert histories[1].train_loss == pytest.approx(histories[0].train_loss, rel=1e-3, abs=1e-4)
    test = task.test.subset(64, seed=0)
    ref = predict_logits(cpu, make_data(cpu, test, use_prefix_cache=prefix))
    got = predict_logits(gpu, make_data(gpu, test, use_prefix_cache=prefix))
    assert got.device.type == "cpu", "predictions are gathered on the CPU"
    torch.testing.assert_close(got, ref, atol=2e-3, rtol=1e-3)
    assert evaluate(gpu, make_data(gpu, test))["acc"] == pytest.approx(evaluate(cpu, make_data(cpu, test))["acc"], abs=0.02)

    # an adapter trained on CUDA and cached is loaded into a CPU model (and the other way round)
    key = {"test": "cross-device"}
    fit(gpu, make_data(gpu, split), None, TrainConfig(steps=3, batch_size=16), cache_key=key, progress=False)
    fresh_cpu, _ = _pair()
    loaded = fit(fresh_cpu, make_data(fresh_cpu, split), None, TrainConfig(steps=3, batch_size=16), cache_key=key,
                 progress=False)
    assert loaded.from_cache
    for name, tensor in adapter_state(gpu).items():
        torch.testing.assert_close(adapter_state(fresh_cpu)[name], tensor.cpu())


def test_every_predictive_method_runs_on_cuda_and_matches_the_cpu(task):
    from minibayeslora import lrvd
    from minibayeslora.predictive import MAP, LRVDSampler, MCDropout, StateAverage, sample_probabilities

    test = task.test.subset(32, seed=0)
    cpu, gpu = _pair(dropout=0.1)
    trained = _perturbed(cpu, 9)  # B ≠ 0, so that the adapter (and its dropout) changes the predictions
    for model in (cpu, gpu):
        load_adapter_state(model, trained)
    states = [_perturbed(cpu, s) for s in range(4)]
    for make in (lambda m: MAP(m), lambda m: StateAverage(m, states), lambda m: StateAverage(m, states, batched=True)):
        ref = sample_probabilities(make(cpu), make_data(cpu, test), S=4)
        got = sample_probabilities(make(gpu), make_data(gpu, test), S=4)
        torch.testing.assert_close(got, ref, atol=1e-3, rtol=1e-3)
    # noise-based methods draw on the device's generator: same distribution, not the same draws
    rng_before = torch.cuda.get_rng_state()
    drop = sample_probabilities(MCDropout(gpu, seed=1), make_data(gpu, test), S=8)
    assert torch.equal(torch.cuda.get_rng_state(), rng_before), "a seeded prediction must not reseed the caller's CUDA RNG"
    again = sample_probabilities(MCDropout(gpu, seed=1), make_data(gpu, test), S=8)
    torch.testing.assert_close(drop, again, msg="seeded draws repeat on CUDA")
    assert drop.std(0).mean() > 0

    cpu_v, gpu_v = _pair(layer_cls=lrvd.VariationalLoRALinear, layer_kwargs={"init_log_alpha": -1.0})
    trained = _perturbed(cpu_v, 9, scale=0.2)
    for model in (cpu_v, gpu_v):
        load_adapter_state(model, trained)
    p = sample_probabilities(LRVDSampler(gpu_v, seed=0), make_data(gpu_v, test), S=16)
    q = sample_probabilities(LRVDSampler(cpu_v, seed=0), make_data(cpu_v, test), S=16)
    assert p.shape == q.shape == (16, len(test), 2)
    # different generators, so compare the two 16-draw means against their own Monte Carlo standard error
    standard_error = (p.var(0) / len(p) + q.var(0) / len(q)).sqrt()
    z = (p.mean(0) - q.mean(0)).abs() / (standard_error + 1e-6)
    assert (z < 6).all(), f"the MC means of 16 draws agree across devices within 6 standard errors (max z {z.max():.1f})"
    assert standard_error.max() > 0, "LRVD draws vary"


@pytest.mark.parametrize("name", ["lrvd", "balora", "blob", "inducing"])
def test_stochastic_layers_train_on_cuda(task, name):
    from minibayeslora import balora, blob, inducing, lrvd
    from minibayeslora.stochastic import ELBOLoss, total_kl

    layer_cls = {"lrvd": lrvd.VariationalLoRALinear, "balora": balora.BaLoRALinear, "blob": blob.BLoBLinear,
                 "inducing": inducing.InducingLoRALinear}[name]
    cpu, gpu = _pair(layer_cls=layer_cls)
    batch = cpu.tokenize(task.val.texts[:8])
    for model in (cpu, gpu):  # BaLoRA's KL depends on the last input: run the same batch through both
        with torch.no_grad():
            model(**batch)
    torch.testing.assert_close(total_kl(gpu).cpu(), total_kl(cpu), rtol=1e-4, atol=1e-3)
    split = task.train.subset(64, seed=0)
    history = fit(gpu, make_data(gpu, split), None, TrainConfig(steps=4, batch_size=16),
                  loss_fn=ELBOLoss(n_train=len(split)), progress=False)
    assert all(torch.isfinite(torch.tensor(history.train_loss)))
    if name == "lrvd":
        pruned = lrvd.prune(gpu, threshold=100.0)  # keeps every component
        assert {p.device.type for p in pruned.parameters()} == {"cuda"}


def test_curve_training_and_paths_on_cuda(task, isolated_cache):
    from minibayeslora import connectivity
    from minibayeslora.curve_training import CurveLoss, CurveModel, FactorPerturbation, MergedWeightPerturbation
    from minibayeslora.curves import BezierChain, sample_t
    from minibayeslora.lora import lora_layers

    cpu, gpu = _pair(r=2, layers=[5])
    a, b = _perturbed(cpu, 0), _perturbed(cpu, 1)
    val = task.val.subset(32, seed=0)
    for perturb in (None, FactorPerturbation(0.05), MergedWeightPerturbation(0.05, layers=lora_layers(gpu))):
        chain = BezierChain([{k: v.to(CUDA) for k, v in a.items()}, {k: v.to(CUDA) for k, v in b.items()}], degree=2)
        curve = CurveModel(gpu, chain)
        history = fit(curve, make_data(gpu, task.train.subset(48, seed=0)), make_data(gpu, val),
                      TrainConfig(steps=3, batch_size=16, eval_every=3), loss_fn=CurveLoss(n_t=2, perturb=perturb),
                      progress=False)
        assert all(torch.isfinite(torch.tensor(history.train_loss)))
    assert sample_t(5, torch.Generator().manual_seed(0), chain=chain).shape == (5,)

    ts = [0.0, 0.5, 1.0]
    paths = {}
    for model in (cpu, gpu):
        data = make_data(model, val)
        paths[model] = [connectivity.evaluate_path(model, lambda t: connectivity.lerp_states(a, b, t), data, ts)["nll"],
                        connectivity.evaluate_path(model, lambda t: connectivity.delta_space_state(model, a, b, t), data, ts)["nll"]]
        a2, b2 = connectivity.aligned_states({k: v.to(config.model_device(model)) for k, v in a.items()},
                                             {k: v.to(config.model_device(model)) for k, v in b.items()})
        paths[model].append(connectivity.evaluate_path(model, lambda t: connectivity.lerp_states(a2, b2, t), data, ts)["nll"])
    for ref, got in zip(paths[cpu], paths[gpu]):
        assert got == pytest.approx(ref, rel=1e-3, abs=1e-4)


def test_planted_rank_fit_on_cuda():
    from minibayeslora import planted
    from minibayeslora.lora import LoRALinear

    task = planted.planted_rank_task(d=16, singular_values=(2.0, 1.0), n=64)
    losses = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        layer = LoRALinear(task.base, r=4, alpha=4).to(device)
        planted.fit_linear(layer, task, planted.LinearFitConfig(steps=50, warmup_steps=0), progress=False)
        losses[device] = layer.delta_weight().detach().cpu()
    torch.testing.assert_close(losses["cuda"], losses["cpu"], atol=1e-3, rtol=1e-3)


def test_bf16_checkpoint_on_cuda(tmp_path):
    from test_backbones import save_tiny_bf16_checkpoint

    folder = save_tiny_bf16_checkpoint(tmp_path)
    model = load_backbone(str(folder))
    assert config.model_device(model).type == "cuda"
    assert {p.dtype for p in model.encoder.parameters()} == {torch.float32}
    model_bf16 = load_backbone(str(folder), dtype=torch.bfloat16)
    inject_lora(model_bf16, ["query"], r=2)
    logits = model_bf16(**model_bf16.tokenize(["a fine film", "dull"]))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
def test_quantized_backbone_keeps_its_head_with_it():
    model = load_backbone("minilm", quantization="4bit")
    inject_lora(model, ["query"], r=2, layers=[5])
    assert {p.device.type for p in model.parameters() if p.requires_grad} == {"cuda"}
    logits = model(**model.tokenize(["a fine film"]))
    assert torch.isfinite(logits).all()
