import copy
import math

import numpy as np
import pytest
import torch

from minibayeslora.lora import LoRALinear
from minibayeslora.lrvd import VariationalLoRALinear
from minibayeslora.planted import (LinearFitConfig, component_angles, fit_linear, planted_rank_task, principal_angles,
                                   rank_components)


def test_principal_angles_match_scipy():
    from scipy.linalg import subspace_angles

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(10, 3, generator=g), torch.randn(10, 2, generator=g)
    np.testing.assert_allclose(principal_angles(a, b).numpy(), np.degrees(subspace_angles(a.double().numpy(), b.double().numpy()))[::-1], rtol=1e-9)
    assert principal_angles(a, a @ torch.randn(3, 3, generator=g)).max() < 1e-4, "same span, any basis: zero angles"


def test_planted_task_has_the_planted_rank_and_noise():
    task = planted_rank_task(d=16, singular_values=(2.0, 1.0), n=4000, noise=0.2, seed=1)
    assert task.rank == 2
    torch.testing.assert_close(torch.linalg.svdvals(task.delta)[:2], torch.tensor([2.0, 1.0]))
    residual = task.y - task.base(task.x) - task.x @ task.delta.T
    assert residual.std().item() == pytest.approx(0.2, rel=0.05)


def test_lrvd_finds_the_planted_rank_where_lora_spreads_it():
    """The notebook's claim at a small size: LRVD keeps exactly k components, aligned with the SVD of its ΔW."""
    task = planted_rank_task(d=32, singular_values=(3.0, 2.0, 1.0), n=512, noise=0.1, seed=0)
    torch.manual_seed(0)
    lrvd = VariationalLoRALinear(task.base, r=8, alpha=8)
    fit_linear(lrvd, task, LinearFitConfig(steps=3000, kl_weight=1000.0), progress=False)
    keep = lrvd.keep_mask()
    assert int(keep.sum()) == 3, lrvd.log_alpha
    B, A, _ = rank_components(lrvd, keep)
    U, _, Vh = torch.linalg.svd(lrvd.delta_weight().detach())
    assert principal_angles(B, U[:, :3]).max() < 10 and principal_angles(A, Vh[:3].T).max() < 10
    # stronger than the spans (automatic once exactly 3 are kept): each component is one singular direction
    assert component_angles(B, U[:, :3]).max() < 10 and component_angles(A, Vh[:3].T).max() < 10

    torch.manual_seed(0)
    lora = LoRALinear(task.base, r=8, alpha=8)
    fit_linear(lora, task, LinearFitConfig(steps=3000), progress=False)
    B, A, strength = rank_components(lora)
    top = strength.argsort(descending=True)[:3]
    U, _, Vh = torch.linalg.svd(lora.delta_weight().detach())
    assert principal_angles(A[:, top], Vh[:3].T).max() > 10, "plain LoRA's coordinates are not the SVD's"
    assert component_angles(A[:, top], Vh[:3].T).max() > 10


def test_component_angles_ask_for_each_vector_to_be_a_basis_direction():
    from minibayeslora.planted import component_angles

    basis, _ = torch.linalg.qr(torch.randn(12, 3, generator=torch.Generator().manual_seed(0)))
    flipped = basis[:, [2, 0, 1]] * torch.tensor([-2.0, 1.0, 0.5])  # reordered, rescaled, sign-flipped
    assert component_angles(flipped, basis).max() < 1e-3
    mixed = basis @ torch.tensor([[1.0, 1.0, 0.0], [1.0, -1.0, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(component_angles(mixed, basis), torch.tensor([45.0, 45.0, 0.0], dtype=torch.float64), atol=1e-4, rtol=0)
    # brute force: the smallest angle over ±b_j for each vector
    v = torch.randn(12, 4, generator=torch.Generator().manual_seed(1))
    for i in range(4):
        angles = [math.degrees(math.acos(min(1.0, abs(float(v[:, i] @ basis[:, j]) / float(v[:, i].norm())))))
                  for j in range(3)]
        assert component_angles(v, basis)[i].item() == pytest.approx(min(angles), abs=1e-4)
    assert principal_angles(mixed, basis).max() < 1e-4, "yet the spans agree"


def test_fit_linear_is_seeded_and_leaves_the_callers_random_stream_alone():
    task = planted_rank_task(d=8, singular_values=(1.0,), n=32)
    cfg = LinearFitConfig(steps=5, warmup_steps=0, seed=3)
    results = []
    for _ in range(2):
        torch.manual_seed(123)
        layer = VariationalLoRALinear(task.base, 2, 2.0)
        fit_linear(layer, task, cfg, progress=False)
        results.append((layer.lora_A.detach().clone(), torch.rand(3)))   # what the caller draws next
    torch.manual_seed(123)
    VariationalLoRALinear(task.base, 2, 2.0)
    untouched = torch.rand(3)
    assert torch.equal(results[0][0], results[1][0]), "same seed, same fit"
    assert torch.equal(results[0][1], untouched), "fit_linear must not reseed the global RNG"


def test_decoder_classifier_leaves_the_callers_tokenizer_alone(smollm2):
    from minibayeslora.backbones import DecoderClassifier

    tokenizer = copy.deepcopy(smollm2.tokenizer)
    tokenizer.pad_token = None
    DecoderClassifier(smollm2.lm, tokenizer)
    assert tokenizer.pad_token is None
