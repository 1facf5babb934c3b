import math

import pytest
import torch

from minibayeslora.curves import BezierChain, bernstein, sample_t


def _state(seed):
    g = torch.Generator().manual_seed(seed)
    return {"layer.lora_A": torch.randn(3, 5, generator=g), "head.weight": torch.randn(2, 4, generator=g)}


@pytest.mark.parametrize("degree", [1, 2, 3, 5])
def test_bernstein_against_the_definition(degree):
    t = torch.linspace(0, 1, 11)
    w = bernstein(t, degree)
    for k in range(degree + 1):
        brute = torch.tensor([math.comb(degree, k) * x ** k * (1 - x) ** (degree - k) for x in t.tolist()])
        torch.testing.assert_close(w[:, k], brute.float())
    torch.testing.assert_close(w.sum(-1), torch.ones(11))
    assert (w >= 0).all() and torch.equal(w[0], torch.eye(degree + 1)[0]) and torch.equal(w[-1], torch.eye(degree + 1)[-1])


def test_bernstein_quadratic_closed_form_and_errors():
    torch.testing.assert_close(bernstein(0.3, 2), torch.tensor([0.49, 0.42, 0.09]))
    with pytest.raises(ValueError):
        bernstein(1.2, 2)
    with pytest.raises(ValueError):
        bernstein(0.5, 0)


def test_chain_interpolates_anchors_and_starts_as_the_polyline():
    anchors = [_state(0), _state(1), _state(2)]
    chain = BezierChain(anchors, degree=3)
    for t, anchor in [(0.0, anchors[0]), (0.5, anchors[1]), (1.0, anchors[2])]:
        point = chain.point(t)
        for name in anchor:
            torch.testing.assert_close(point[name], anchor[name])
    for t in (0.1, 0.37, 0.8):  # segment k covers [k/2, (k+1)/2]; untrained = straight lines
        k = min(int(t * 2), 1)
        tau = t * 2 - k
        for name in anchors[0]:
            line = (1 - tau) * anchors[k][name] + tau * anchors[k + 1][name]
            torch.testing.assert_close(chain.point(t)[name], line, atol=1e-6, rtol=1e-5)


def test_quadratic_point_closed_form_after_moving_the_middle():
    a, b = _state(0), _state(1)
    chain = BezierChain([a, b], degree=2)
    with torch.no_grad():
        chain.interior_0[0, 0] += 1.0
    p = chain.control_points("layer.lora_A", 0)[1]
    torch.testing.assert_close(chain.point(0.5)["layer.lora_A"], 0.25 * a["layer.lora_A"] + 0.5 * p + 0.25 * b["layer.lora_A"])


def test_modes_decide_what_trains():
    anchors = [_state(0), _state(1), _state(2)]
    anchored, free = BezierChain(anchors, mode="anchored"), BezierChain(anchors, mode="free")
    assert {n for n, _ in anchored.named_parameters()} == {"interior_0", "interior_1"}
    assert {n for n, _ in free.named_parameters()} == {"interior_0", "interior_1", "junction_0", "junction_1"}
    loss = sum(v.square().sum() for v in anchored.point(0.3).values())
    loss.backward()
    assert anchored.interior_0.grad.abs().sum() > 0 and anchored.interior_0.grad[1].abs().sum() == 0  # segment 1 untouched
    with pytest.raises(ValueError, match="mode"):
        BezierChain(anchors, mode="loose")
    with pytest.raises(ValueError, match="at least 2 anchors"):
        BezierChain(anchors[:1])
    bad = dict(anchors[1], **{"head.weight": torch.zeros(3, 4)})
    with pytest.raises(ValueError, match="shapes"):
        BezierChain([anchors[0], bad])


def test_arc_length_sampling():
    anchors = [_state(0), _state(1)]
    chain = BezierChain(anchors, degree=2)
    g = torch.Generator().manual_seed(0)
    u = sample_t(500, torch.Generator().manual_seed(0))
    assert ((u >= 0) & (u <= 1)).all()
    # on a straight, uniformly parameterised line, arc length and t coincide
    torch.testing.assert_close(sample_t(200, torch.Generator().manual_seed(1), chain=chain),
                               sample_t(200, torch.Generator().manual_seed(1)), atol=2e-3, rtol=0)
    with torch.no_grad():  # move the middle point onto the start: θ(τ) = a + τ²(b − a)
        for i in range(len(chain.names)):
            getattr(chain, f"interior_{i}")[0, 0] = getattr(chain, f"junction_{i}")[0]
    # arc-length fraction s(τ) = τ², so t uniform in arc length is t = √u, whose mean is 2/3
    ts = sample_t(4000, g, chain=chain)
    assert abs(ts.mean().item() - 2 / 3) < 0.01
    torch.testing.assert_close(chain.arc_length_table(101)[1], torch.linspace(0, 1, 101) ** 2, atol=1e-5, rtol=0)


def test_nested_grid_picks_the_points_of_the_coarse_grid():
    from minibayeslora.curves import nested_grid

    fine = torch.linspace(0, 1, 17)
    for k in (2, 3, 5, 9, 17):
        picked = fine[nested_grid(17, k)]
        torch.testing.assert_close(picked, torch.linspace(0, 1, k))     # brute force: the k-point grid itself
    assert nested_grid(17, 1) == [8]
    for bad in (0, 4, 18):
        with pytest.raises(ValueError):
            nested_grid(17, bad)
    with pytest.raises(ValueError, match="middle"):
        nested_grid(16, 1)
