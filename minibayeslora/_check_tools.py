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


def references_used(fn, references: list[str]) -> list[str]:
    """The dotted names in ``references`` (e.g. ``"minibayeslora.metrics.ece"``) that ``fn`` reaches.

    Reads the names ``fn``'s code uses (nested functions, lambdas and, for a class, its methods included)
    and resolves them in ``fn``'s globals: ``ece(...)`` after ``from minibayeslora.metrics import ece``
    and ``metrics.ece(...)`` after ``from minibayeslora import metrics`` are both found.
    """
    import importlib
    import inspect
    import types

    targets = {}
    for dotted in references:
        module, _, attr = dotted.rpartition(".")
        targets[id(getattr(importlib.import_module(module), attr))] = dotted
    functions = [f for _, f in inspect.getmembers(fn, inspect.isfunction)] if inspect.isclass(fn) else [fn]
    found = set()
    for function in functions:
        codes, scope = [function.__code__], function.__globals__
        while codes:
            code = codes.pop()
            codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
            for name in code.co_names:
                value = scope.get(name)
                if id(value) in targets:
                    found.add(targets[id(value)])
                if isinstance(value, types.ModuleType):
                    for attr in code.co_names:
                        if id(getattr(value, attr, None)) in targets:
                            found.add(targets[id(getattr(value, attr))])
    return sorted(found)


def assert_own_work(fn, *references: str) -> None:
    """Fail if ``fn`` calls one of the package's reference implementations instead of computing it."""
    used = references_used(fn, list(references))
    if used:
        raise AssertionError(f"{getattr(fn, '__name__', fn)} calls {', '.join(used)}: the exercise is to compute it "
                             f"yourself (the package's version is there to compare with afterwards).")
