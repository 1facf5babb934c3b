import pytest
import torch

from minibayeslora.connectivity import align_to, balanced_factors, barrier, gauge_transform, lerp_states


def test_lerp_states_ends_and_middle():
    a, b = {"x": torch.zeros(2), "y": torch.ones(3)}, {"x": torch.full((2,), 4.0), "y": torch.zeros(3)}
    assert torch.equal(lerp_states(a, b, 0)["x"], a["x"]) and torch.equal(lerp_states(a, b, 1)["y"], b["y"])
    torch.testing.assert_close(lerp_states(a, b, 0.25)["x"], torch.full((2,), 1.0))
    with pytest.raises(KeyError):
        lerp_states(a, {"x": torch.zeros(2)}, 0.5)


def test_barrier_closed_form():
    ts = torch.linspace(0, 1, 21)
    # L(t) = 1 + 2t + 4 t(1 − t): the chord is 1 + 2t, the excess 4t(1 − t) peaks at 1 when t = 1/2
    assert barrier(ts, 1 + 2 * ts + 4 * ts * (1 - ts)) == [pytest.approx(1.0)]
    assert barrier(ts, 1 + 2 * ts) == [pytest.approx(0.0, abs=1e-6)]
    # two segments, each with its own bump: heights 0.25 (at t = 1/4) and 0.125 (at t = 3/4)
    bump = torch.where(ts <= 0.5, 2 * ts * (1 - 2 * ts), 0.5 * (2 * ts - 1) * (2 - 2 * ts))
    first, second = barrier(ts, bump, segments=2)
    assert first == pytest.approx(0.25) and second == pytest.approx(0.125)
    with pytest.raises(ValueError):
        barrier(torch.linspace(0, 1, 4), torch.zeros(4), segments=2)


def test_gauge_transform_keeps_the_product():
    g = torch.Generator().manual_seed(0)
    A, B, G = torch.randn(4, 9, generator=g), torch.randn(7, 4, generator=g), torch.randn(4, 4, generator=g)
    A2, B2 = gauge_transform(A, B, G)
    torch.testing.assert_close(B2 @ A2, B @ A, atol=1e-4, rtol=1e-4)
    assert (A2 - A).abs().max() > 0.1, "the factors themselves change"


def test_balanced_factors():
    g = torch.Generator().manual_seed(1)
    A, B = torch.randn(3, 8, generator=g), torch.randn(6, 3, generator=g)
    Ab, Bb = balanced_factors(B @ A, 3)
    torch.testing.assert_close(Bb @ Ab, B @ A, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(Ab @ Ab.T, Bb.T @ Bb, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(Ab @ Ab.T, torch.diag(torch.diag(Ab @ Ab.T)), atol=1e-4, rtol=1e-4)


def test_alignment_undoes_a_random_gauge():
    g = torch.Generator().manual_seed(2)
    A, B = torch.randn(4, 10, generator=g), torch.randn(6, 4, generator=g)
    G = torch.randn(4, 4, generator=g)
    A2, B2 = gauge_transform(A, B, G)
    assert (A2 - A).norm() / A.norm() > 0.3
    ref_A, ref_B = balanced_factors(B @ A, 4)
    al_A, al_B = align_to(A, B, A2, B2)
    torch.testing.assert_close(al_A, ref_A, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(al_B @ al_A, B @ A, atol=1e-3, rtol=1e-3)



def test_aligned_states_undo_a_random_gauge_per_layer_and_keep_the_rest():
    from minibayeslora.connectivity import aligned_states

    g = torch.Generator().manual_seed(3)
    a, b = {"head.weight": torch.randn(2, 5, generator=g)}, {"head.weight": torch.randn(2, 5, generator=g)}
    for name in ("l0", "l1"):
        A, B = torch.randn(4, 10, generator=g), torch.randn(6, 4, generator=g)
        a[f"{name}.lora_A"], a[f"{name}.lora_B"] = A, B
        b[f"{name}.lora_A"], b[f"{name}.lora_B"] = gauge_transform(A, B, torch.randn(4, 4, generator=g))  # same ΔW, other gauge
    a2, b2 = aligned_states(a, b)
    for name in ("l0", "l1"):
        torch.testing.assert_close(b2[f"{name}.lora_B"] @ b2[f"{name}.lora_A"], a[f"{name}.lora_B"] @ a[f"{name}.lora_A"], atol=1e-3, rtol=1e-3)
        # the same function in another gauge comes out as the same factors: the aligned line is constant
        torch.testing.assert_close(b2[f"{name}.lora_A"], a2[f"{name}.lora_A"], atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(b2[f"{name}.lora_B"], a2[f"{name}.lora_B"], atol=1e-3, rtol=1e-3)
    assert a2["head.weight"] is a["head.weight"] and b2["head.weight"] is b["head.weight"]
    assert a["l0.lora_A"] is not a2["l0.lora_A"], "the inputs are not modified in place"

def test_delta_space_path_and_path_evaluation(minilm_fresh, task):
    from minibayeslora.connectivity import delta_space_state, evaluate_path
    from minibayeslora.lora import adapter_state, inject_lora, load_adapter_state
    from minibayeslora.train import evaluate, make_data

    model = minilm_fresh
    inject_lora(model, ["query", "value"], r=2, alpha=4, layers=[4, 5])
    states = []
    for seed in (0, 1):
        g = torch.Generator().manual_seed(seed)
        states.append({k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in adapter_state(model).items()})
    val = make_data(model, task.val.subset(40, seed=0))

    # at the ends, both paths are the adapters themselves (checked against loading them for real)
    factor = evaluate_path(model, lambda t: lerp_states(states[0], states[1], t), val, [0.0, 0.5, 1.0])
    delta = evaluate_path(model, lambda t: delta_space_state(model, states[0], states[1], t), val, [0.0, 0.5, 1.0])
    for end, i in ((0, 0), (1, -1)):
        load_adapter_state(model, states[end])
        reference = evaluate(model, val)
        assert factor["nll"][i] == pytest.approx(reference["nll"], abs=1e-5)
        assert delta["nll"][i] == pytest.approx(reference["nll"], abs=1e-5)
    assert abs(factor["nll"][1] - delta["nll"][1]) > 1e-6, "the two paths differ in the middle"

    # probabilities along the path: softmax of the model with each state loaded, one batch
    from minibayeslora.connectivity import probabilities_along

    batch = val.inputs(torch.arange(5))
    probs = probabilities_along(model, lambda t: lerp_states(states[0], states[1], t), batch, [0.0, 0.5])
    assert probs.shape == (2, 5, 2)
    for i, t in enumerate((0.0, 0.5)):
        load_adapter_state(model, lerp_states(states[0], states[1], t))
        with torch.no_grad():
            torch.testing.assert_close(probs[i], model(**batch).softmax(-1), atol=1e-6, rtol=1e-5)

    # the middle of the ΔW path has ΔW(½) = (ΔW_a + ΔW_b)/2: check one layer by brute force
    name = "encoder.encoder.layer.5.attention.self.query"
    mid = delta_space_state(model, states[0], states[1], 0.5)
    layer = model.get_submodule(name)
    expected = layer.base.weight + 0.5 * layer.scaling * sum(s[f"{name}.lora_B"] @ s[f"{name}.lora_A"] for s in states)
    torch.testing.assert_close(mid[f"{name}.base.weight"], expected)


def test_plane_through_three_states():
    from minibayeslora.connectivity import plane_through

    g = torch.Generator().manual_seed(3)
    states = [{"a": torch.randn(3, 2, generator=g), "b": torch.randn(4, generator=g)} for _ in range(3)]
    plane = plane_through(states)
    assert abs(plane.u @ plane.v) < 1e-6 and abs(plane.u.norm() - 1) < 1e-6 and abs(plane.v.norm() - 1) < 1e-6
    for state, (x, y) in zip(states, plane.coords):  # each state sits at its own coordinates
        point = plane.point(x, y)
        for name in state:
            torch.testing.assert_close(point[name], state[name], atol=1e-5, rtol=1e-5)
    assert plane.coords[0] == (0.0, 0.0) and plane.coords[1][1] == pytest.approx(0.0, abs=1e-6)
    for state, xy in zip(states, plane.coords):  # projection of a state in the plane is itself
        assert plane.project(state) == pytest.approx(xy, abs=1e-5)
    # off the plane: the projection drops the orthogonal part (brute force least squares)
    off = {k: states[0][k] + torch.randn(states[0][k].shape, generator=g) for k in states[0]}
    flat = lambda st: torch.cat([st[k].flatten() for k in sorted(st)])  # noqa: E731
    basis = torch.stack([plane.u, plane.v], 1)
    expected = torch.linalg.lstsq(basis, flat(off) - plane.origin[:, None].squeeze(1)).solution
    assert plane.project(off) == pytest.approx(expected.tolist(), abs=1e-5)
    with pytest.raises(ValueError, match="one line"):
        plane_through([states[0], states[1], {k: 2 * states[1][k] - states[0][k] for k in states[0]}])
