"""The stochastic-adapter base: LRVD moved onto it unchanged, the sampling switch, the ELBO loss."""

import pytest
import torch
from torch import nn

from minibayeslora import lrvd, stochastic
from minibayeslora.lora import LoRALinear, inject_lora
from minibayeslora.lrvd import LOG_ALPHA_MAX, VariationalLoRALinear, kl_sparse_vd
from minibayeslora.stochastic import ELBOLoss, sampling, total_kl


class _LegacyLRVD(LoRALinear):
    """LRVD's forward and KL as they were before the stochastic base existed (copied verbatim from
    ``lrvd.py`` at f12bcf6): the reference the refactored layer must reproduce bit for bit."""

    def __init__(self, base, r, alpha, noise="sequence"):
        super().__init__(base, r, alpha)
        self.noise, self.sampling, self.threshold = noise, False, lrvd.THRESHOLD
        self.log_alpha = nn.Parameter(torch.full((r,), -4.0))

    def keep_mask(self):
        return self.log_alpha.detach() <= self.threshold

    def forward(self, x):
        y = self.base(x)
        u = self.dropout(x).to(self.lora_A.dtype) @ self.lora_A.T
        if self.sampling:
            std = (0.5 * self.log_alpha.clamp(max=LOG_ALPHA_MAX)).exp()
            if self.noise == "token":
                u = u + u.abs() * std * torch.randn_like(u)
            else:
                shape = (u.shape[0],) + (1,) * (u.dim() - 2) + (u.shape[-1],) if u.dim() > 1 else u.shape
                u = u * (1 + std * torch.randn(shape, dtype=u.dtype, device=u.device))
        else:
            u = u * self.keep_mask().to(u.dtype)
        return y + ((u @ self.lora_B.T) * self.scaling).to(y.dtype)

    def kl(self):
        return kl_sparse_vd(self.log_alpha).sum()


def _pair(noise):
    torch.manual_seed(0)
    new = VariationalLoRALinear(nn.Linear(6, 5), r=4, alpha=8, noise=noise)
    old = _LegacyLRVD(new.base, r=4, alpha=8, noise=noise)
    with torch.no_grad():
        new.lora_B.normal_()
        new.log_alpha.copy_(torch.tensor([-2.0, 0.5, 3.5, 1.0]))
    old.load_state_dict(new.state_dict())
    return new, old


@pytest.mark.parametrize("noise", ["sequence", "token"])
def test_lrvd_on_the_stochastic_base_gives_identical_numbers(noise):
    new, old = _pair(noise)
    x = torch.randn(3, 7, 6)
    torch.testing.assert_close(new(x), old(x), rtol=0, atol=0)            # mean path, pruned rank dropped
    torch.testing.assert_close(new.kl(), old.kl(), rtol=0, atol=0)
    for seed in (0, 1):
        new.sampling = old.sampling = True
        torch.manual_seed(seed)
        noisy_new = new(x)
        torch.manual_seed(seed)
        noisy_old = old(x)
        torch.testing.assert_close(noisy_new, noisy_old, rtol=0, atol=0)
        new.sampling = old.sampling = False
    # the loss too: same seed, same CE + β·KL/N, and the same gradients
    head = nn.Linear(5, 2)
    labels = torch.tensor([0, 1, 1])
    grads = []
    for layer in (new, old):
        model = _Wrap(layer, head)
        layer.zero_grad()
        torch.manual_seed(7)
        if layer is new:
            loss = lrvd.LRVDLoss(n_train=50, kl_weight=3.0)(model, {"x": x}, labels)
        else:
            layer.sampling = True
            loss = nn.functional.cross_entropy(model(x=x), labels) + 3.0 * layer.kl() / 50
            layer.sampling = False
        loss.backward()
        grads.append((loss.detach(), layer.lora_A.grad.clone(), layer.log_alpha.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class _Wrap(nn.Module):
    """layer (N, L, d_in) -> mean over L -> head: a tiny 'model' with keyword input."""

    def __init__(self, layer, head):
        super().__init__()
        self.layer, self.head = layer, head

    def forward(self, x):
        return self.head(self.layer(x).mean(1))


def test_sampling_switch_scale_and_restore():
    new, _ = _pair("sequence")
    x = torch.randn(4, 6)
    mean = new(x)
    with torch.no_grad(), sampling(new, scale=0.0):   # scale 0: LoRA with every rank (LRVD's mean path prunes)
        torch.testing.assert_close(new(x), new.base(x) + new.scaling * (x @ new.lora_A.T) @ new.lora_B.T)
    torch.testing.assert_close(new.to_lora()(x), mean)
    with sampling(new, scale=2.0, copies=2):
        assert new.sampling and new.noise_scale == 2.0 and new.copies == 2
    assert not new.sampling and new.noise_scale == 1.0 and new.copies == 1
    new.train()  # train() alone does not switch the noise on
    torch.testing.assert_close(new(x), mean)
    with pytest.raises(ValueError, match="scale"), sampling(new, scale=-1.0):
        pass
    with pytest.raises(ValueError, match="copies"), sampling(new, copies=0):
        pass


def test_sampling_or_kl_without_stochastic_layers_is_one_clear_error():
    plain = nn.Sequential(LoRALinear(nn.Linear(4, 3), r=2, alpha=4))
    with pytest.raises(ValueError, match="no stochastic adapter layer"), sampling(plain):
        pass
    with pytest.raises(ValueError, match="no stochastic adapter layer"):
        total_kl(plain)
    with pytest.raises(ValueError, match="no stochastic adapter layer"):
        ELBOLoss(n_train=10, kl_weight=1.0)(_Wrap(plain[0], nn.Linear(3, 2)), {"x": torch.randn(2, 3, 4)}, torch.tensor([0, 1]))


def test_elbo_loss_terms_against_a_hand_computation():
    new, _ = _pair("token")
    head = nn.Linear(5, 2)
    model = _Wrap(new, head)
    x, labels = torch.randn(3, 4, 6), torch.tensor([1, 0, 1])
    loss_fn = ELBOLoss(n_train=40, kl_weight=2.0, warmup_steps=4, label_smoothing=0.1, entropy_bonus=0.3)
    for step in range(6):
        torch.manual_seed(step)
        loss = loss_fn(model, {"x": x}, labels).item()
        torch.manual_seed(step)
        with torch.no_grad(), sampling(model):
            logits = model(x=x)
        p = logits.softmax(-1)
        smoothed = 0.9 * nn.functional.one_hot(labels, 2) + 0.1 / 2
        ce = -(smoothed * logits.log_softmax(-1)).sum(-1).mean()
        entropy = -(p * p.log()).sum(-1).mean()
        expected = ce - 0.3 * entropy + 2.0 * min(1.0, step / 4) * new.kl() / 40
        assert loss == pytest.approx(expected.item(), rel=1e-5)
    # a plain model may use the tricks with β = 0 (LoRA + label smoothing + entropy bonus)
    plain = _Wrap(LoRALinear(nn.Linear(6, 5), r=2, alpha=4), head)
    tricks = ELBOLoss(n_train=40, kl_weight=0.0, label_smoothing=0.05, entropy_bonus=0.05)(plain, {"x": x}, labels)
    logits = plain(x=x)
    reference = nn.functional.cross_entropy(logits, labels, label_smoothing=0.05) - 0.05 * stochastic.prediction_entropy(logits).mean()
    torch.testing.assert_close(tricks, reference)


@pytest.mark.parametrize("kwargs, match", [({"kl_weight": -1.0}, "β"), ({"n_train": 0}, "n_train"),
                                           ({"label_smoothing": 1.0}, "label_smoothing"), ({"entropy_bonus": -0.1}, "entropy")])
def test_elbo_loss_refuses_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ELBOLoss(**{"n_train": 10, **kwargs})


def test_lrvd_names_and_layers_are_stochastic(minilm_fresh):
    layers = inject_lora(minilm_fresh, ["value"], r=2, alpha=4, layers=[5], layer_cls=VariationalLoRALinear)
    assert set(stochastic.stochastic_layers(minilm_fresh)) == set(layers) == set(lrvd.variational_layers(minilm_fresh))
    assert lrvd.sampling is stochastic.sampling and lrvd.total_kl is stochastic.total_kl


class _TensorData:
    """The part of ClassificationData that ``fit`` reads: len, labels, inputs(idx)."""

    def __init__(self, x, labels):
        self.x, self.labels = x, labels

    def __len__(self):
        return len(self.labels)

    def inputs(self, idx):
        return {"x": self.x[idx]}


def test_a_loss_reused_in_a_second_fit_starts_its_warm_up_again():
    from minibayeslora.train import TrainConfig, fit

    torch.manual_seed(0)
    data = _TensorData(torch.randn(64, 4, 6), torch.randint(0, 2, (64,)))
    layer = VariationalLoRALinear(nn.Linear(6, 5), r=4, alpha=8)
    model = _Wrap(layer, nn.Linear(5, 2))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    loss_fn = ELBOLoss(n_train=64, kl_weight=50.0, warmup_steps=8)
    cfg = TrainConfig(steps=8, batch_size=16, lr=1e-2, seed=3)
    runs = []
    for _ in range(2):
        model.load_state_dict(start)
        torch.manual_seed(1)     # the layer's noise comes from the global stream
        runs.append(fit(model, data, None, cfg, loss_fn=loss_fn, progress=False).train_loss)
    assert loss_fn.calls == 8, "the second run counted its own steps from zero"
    assert runs[0] == runs[1], "the same run twice: a reused loss must not carry its warm-up over"


def test_curve_loss_reset_restarts_its_t_draws_and_its_perturbation():
    from minibayeslora.curve_training import CurveLoss, FactorPerturbation
    from minibayeslora.curves import sample_t

    perturb = FactorPerturbation(rho=0.1, ramp_calls=4, seed=5)
    loss = CurveLoss(n_t=3, seed=2, perturb=perturb)
    first = sample_t(3, loss.generator)
    state = {"w": torch.ones(2, 3)}
    noisy = [perturb(state)["w"] for _ in range(3)]
    loss.reset()
    torch.testing.assert_close(sample_t(3, loss.generator), first)
    assert perturb.calls == 0
    torch.testing.assert_close(perturb(state)["w"], noisy[0])
