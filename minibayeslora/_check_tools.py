"""Helpers shared by the check modules: run a learner's code, compare, name the mistake."""

from __future__ import annotations

import torch


def _ok(name: str) -> bool:
    print(f"✔ {name} passed")
    return True


LORA_SHAPES = "Check the order of the products: A is (r, d_in), B is (d_out, r), x is (N, d_in)."


def _call(fn, *args, what: str, shape_hint: str = LORA_SHAPES):
    try:
        return fn(*args)
    except NotImplementedError:
        raise AssertionError(f"{what} is not implemented yet: replace `raise NotImplementedError()`.") from None
    except RuntimeError as err:
        if "shape" in str(err) or "size" in str(err) or "mat" in str(err):
            raise AssertionError(f"{what} failed on a shape mismatch ({err}). {shape_hint}") from None
        raise


def _diagnose(got, expected: torch.Tensor, mistakes: dict[str, torch.Tensor], what: str, atol: float = 1e-5) -> None:
    """Raise with the hint of the first mistake whose output ``got`` reproduces; else a generic message."""
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"{what} must return a torch.Tensor, got {type(got).__name__}.")
    if got.shape == expected.shape and torch.allclose(got, expected, atol=atol, rtol=1e-4):
        return
    for hint, wrong in mistakes.items():
        if got.shape == wrong.shape and torch.allclose(got, wrong, atol=atol, rtol=1e-4):
            raise AssertionError(f"{what}: {hint}")
    if got.shape != expected.shape:
        raise AssertionError(f"{what} returned shape {tuple(got.shape)}, expected {tuple(expected.shape)}.")
    raise AssertionError(f"{what} differs from the reference by up to {(got - expected).abs().max():.3g}.")
