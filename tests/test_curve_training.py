import torch

from minibayeslora.curve_training import CurveLoss, CurveModel
from minibayeslora.curves import BezierChain
from minibayeslora.lora import adapter_state, inject_lora
from minibayeslora.train import TrainConfig, evaluate, fit, make_data


def _anchors(model, seeds=(0, 1)):
    states = []
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        states.append({k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in adapter_state(model).items()})
    return states


def test_curve_points_equal_the_model_with_that_state_loaded(minilm_fresh, task):
    model = minilm_fresh
    inject_lora(model, ["query", "value"], r=2, alpha=4, layers=[5])
    a, b = _anchors(model)
    curve = CurveModel(model, BezierChain([a, b]))
    batch = model.tokenize(task.val.texts[:4])
    with torch.no_grad():
        at_end = curve.logits_at(1.0, **batch)
        for name, value in b.items():  # load θ(1) = b by hand (the model's own tensors are frozen now)
            model.get_parameter(name).copy_(value)
        torch.testing.assert_close(at_end, model(**batch))
        bma = curve(**batch)
    assert torch.allclose(bma.exp().sum(-1), torch.ones(4), atol=1e-5), "forward returns log-probabilities"
    assert {n for n, p in curve.named_parameters() if p.requires_grad} == {f"chain.interior_{i}" for i in range(len(a))}


def test_training_the_curve_moves_only_its_interior(minilm_fresh, task, isolated_cache):
    model = minilm_fresh
    inject_lora(model, ["query", "value"], r=2, alpha=4, layers=[5])
    a, b = _anchors(model)
    chain = BezierChain([a, b], degree=2)
    curve = CurveModel(model, chain)
    train_data = make_data(model, task.train.subset(64, seed=0))
    mid_before = {k: v.clone() for k, v in chain.point(0.5).items()}
    calls = []

    def extra(curve_model, logits, labels, ts):
        calls.append(len(logits))
        return 0.0 * logits[0].sum()

    before = evaluate(curve, train_data)["nll"]
    fit(curve, train_data, None, TrainConfig(steps=6, batch_size=16, lr=1e-2, seed=0),
        loss_fn=CurveLoss(n_t=2, extra=extra), progress=False)
    assert calls == [2] * 6, "the extra term sees the T = 2 logits of every step"
    assert evaluate(curve, train_data)["nll"] < before
    for k in a:  # anchored: the ends do not move, the middle does
        torch.testing.assert_close(chain.point(0.0)[k], a[k])
        torch.testing.assert_close(chain.point(1.0)[k], b[k])
    assert any((chain.point(0.5)[k] - mid_before[k]).abs().max() > 1e-4 for k in a)


def test_perturbation_hook_is_applied(minilm_fresh, task):
    model = minilm_fresh
    inject_lora(model, ["query", "value"], r=2, alpha=4, layers=[5])
    curve = CurveModel(model, BezierChain(_anchors(model)))
    batch = model.tokenize(task.val.texts[:4])
    labels = torch.tensor([0, 1, 0, 1])
    plain = CurveLoss(seed=3)(curve, batch, labels)
    zeroed = CurveLoss(seed=3, perturb=lambda state, t: {k: torch.zeros_like(v) for k, v in state.items()})(curve, batch, labels)
    assert abs(plain.item() - zeroed.item()) > 1e-4
    torch.testing.assert_close(zeroed, torch.log(torch.tensor(2.0)), atol=1e-5, rtol=0)  # zero head: uniform prediction


def test_jsd_regulariser_is_minus_lambda_times_the_metrics_jsd():
    import pytest

    from minibayeslora import metrics
    from minibayeslora.curve_training import jsd_regulariser

    g = torch.Generator().manual_seed(0)
    logits = [2 * torch.randn(7, 3, generator=g) for _ in range(3)]
    got = jsd_regulariser(0.4)(None, logits, torch.zeros(7, dtype=torch.long), None)
    reference = -0.4 * metrics.jsd(torch.stack(logits).softmax(-1)).mean()
    assert abs(got.item() - reference.item()) < 1e-6
    assert jsd_regulariser(0.4)(None, [logits[0]] * 2, None, None).abs() < 1e-6, "identical predictions: no reward"
    with pytest.raises(ValueError, match="two values of t"):
        jsd_regulariser(0.4)(None, logits[:1], None, None)
    with pytest.raises(ValueError):
        jsd_regulariser(-1.0)


def test_factor_perturbation_scales_each_row_and_ramps_in():
    import math

    import pytest

    from minibayeslora.curve_training import FactorPerturbation

    w = torch.cat([torch.full((1, 4000), 1.0), torch.full((1, 4000), 3.0)])  # rows of norm √4000 and 3√4000
    state = {"w": w.requires_grad_(), "b": torch.full((2000,), 2.0)}
    perturb = FactorPerturbation(rho=0.1, seed=0)
    out = perturb(state, 0.5)
    noise = (out["w"] - w).detach()
    for i, scale in enumerate((1.0, 3.0)):  # σ_i = ρ‖w_i‖/√n = ρ·scale
        assert noise[i].std().item() == pytest.approx(0.1 * scale, rel=0.05)
        assert abs(noise[i].mean().item()) < 0.02 * scale
    assert (out["b"] - 2.0).std().item() == pytest.approx(0.2, rel=0.07)
    out["w"].sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w)), "gradients reach θ(t) as if unperturbed"

    ramped = FactorPerturbation(rho=0.1, ramp_calls=4, seed=0)
    first = ramped({"w": w.detach()})
    assert torch.equal(first["w"], w.detach()), "the ramp starts at zero noise"
    assert [ramped.current_rho() for _ in range(1)] == [0.025]
    again = FactorPerturbation(rho=0.1, seed=0)({"w": w.detach()})
    assert torch.equal(again["w"], FactorPerturbation(rho=0.1, seed=0)({"w": w.detach()})["w"]), "seeded"
    with pytest.raises(ValueError):
        FactorPerturbation(rho=-0.1)
    assert math.isclose(FactorPerturbation(rho=0.3).current_rho(), 0.3)


def test_merged_weight_perturbation_is_flat_loras_noise_on_w0_plus_sba():
    """The forward pass sees W₀ + s·B A + ε with ε scaled per row of the *merged* weight; A and B get the
    unperturbed gradients; the head is untouched. Reference: the merged weight built by hand."""
    import math

    import pytest

    from minibayeslora.curve_training import MergedWeightPerturbation
    from minibayeslora.lora import LoRALinear, lora_layers

    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("proj", LoRALinear(torch.nn.Linear(4000, 3), r=2, alpha=4))
    model.add_module("head", torch.nn.Linear(3, 2))
    layer = model.proj
    with torch.no_grad():
        layer.base.weight.copy_(torch.stack([torch.full((4000,), 1.0), torch.full((4000,), 2.0), torch.zeros(4000)]))
        layer.lora_B.copy_(torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]]))
        layer.lora_A.copy_(torch.stack([torch.full((4000,), 1.5), torch.zeros(4000)]))
    state = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters() if "lora" in k or "head" in k}
    out = MergedWeightPerturbation(rho=0.1, seed=0, layers=lora_layers(model))(state)
    noise = out["proj.base.weight"] - layer.base.weight
    merged = layer.base.weight + layer.scaling * layer.lora_B @ layer.lora_A   # rows of size 1, 2 and 3 per entry
    for i in range(3):  # σ_i = ρ‖W_i‖/√d_in, with W the merged weight (row 2 is pure adapter: W₀'s row is zero)
        expected = 0.1 * merged[i].norm().item() / math.sqrt(4000)
        assert noise[i].std().item() == pytest.approx(expected, rel=0.05)
    assert out["head.weight"] is state["head.weight"] and out["proj.lora_A"] is state["proj.lora_A"]
    x = torch.randn(5, 4000)
    y = torch.func.functional_call(model, out, (x,), strict=False)
    torch.testing.assert_close(y, model.head(x @ (merged + noise).T + layer.base.bias), atol=1e-4, rtol=1e-4)
    y.sum().backward()
    ref = {k: v.detach().clone().requires_grad_() for k, v in state.items()}
    with torch.no_grad():
        w_noisy = layer.base.weight + noise
    y_ref = torch.func.functional_call(model, {**ref, "proj.base.weight": w_noisy}, (x,), strict=False)
    y_ref.sum().backward()
    torch.testing.assert_close(state["proj.lora_A"].grad, ref["proj.lora_A"].grad)
    with pytest.raises(ValueError, match="LoRA layers"):
        MergedWeightPerturbation(rho=0.1)


def test_fixed_ts_train_the_two_ends_of_a_free_line_as_two_adapters(minilm_fresh, task):
    model = minilm_fresh
    inject_lora(model, ["query", "value"], r=2, alpha=4, layers=[5])
    a, b = _anchors(model)
    curve = CurveModel(model, BezierChain([a, b], degree=1, mode="free"))
    batch = model.tokenize(task.val.texts[:4])
    labels = torch.tensor([0, 1, 0, 1])
    seen = []
    loss = CurveLoss(n_t=2, fixed_ts=(0.0, 1.0), extra=lambda c, logits, y, ts: seen.append(ts.tolist()) or 0.0)(curve, batch, labels)
    with torch.no_grad():
        expected = sum(torch.nn.functional.cross_entropy(curve.logits_at(t, **batch), labels) for t in (0.0, 1.0)) / 2
    torch.testing.assert_close(loss, expected)
    assert seen == [[0.0, 1.0]]
    import pytest
    with pytest.raises(ValueError, match="fixed_ts"):
        CurveLoss(fixed_ts=(0.5, 1.5))
