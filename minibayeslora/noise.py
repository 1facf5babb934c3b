"""Per-example noise for Monte Carlo prediction: each example's draws depend on the example, never on its batch.

Seeding a whole batch once makes an example's draw depend on the batch: which examples come before it, how many
there are and how far the batch is padded. S draws over a dataset would then change with ``batch_size``. In a
prediction pass (``predictive.stacked_draws``) the batch holds S stacked copies of N examples, S·N rows
(row s·N + i is copy s of example i), and here every example gets its own generator, seeded by

    (the method's seed, the example's index in its dataset),

that draws, layer after layer in the order of the forward pass, what the example's S rows need, in one call per
noise site: shape (S, ...), copy s taking slice s. For noise along the token axis it draws one value per *real*
token (the attention mask says which; padding gets none, whether the batch is padded on the right or on the
left). Example i's S draws are therefore the same in a batch of one, of 64, or in any order. They depend on S:
the first 8 of 64 draws are not the 8 draws of S = 8 (compare sample sizes on prefixes of one run). Noise that a
method shares between all examples on purpose (the weight draws of flipout or of a Laplace posterior) comes from
one generator seeded by the seed alone.

Outside ``per_example`` every helper here is torch's own draw from the global RNG (``torch.randn``,
``torch.randint``, ``nn.Dropout``), so training draws exactly what it drew before this module existed.

Cost: one draw per example and noise site, N random-number calls per site instead of one per row (S·N): on a GPU
each call is a kernel launch, and at S = 64 a call per row would launch 64 times as many.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Callable, Sequence

import torch
from torch import nn


class _Examples:
    """The generators of one prediction pass: one per example, one shared, and each example's real token positions."""

    def __init__(self, seed: int, examples: Sequence[int], copies: int, attention_mask: torch.Tensor | None, device):
        device = torch.device(device)
        self.copies = copies
        self.generators = [torch.Generator(device=device).manual_seed(example_seed(seed, int(example)))
                           for example in examples]
        self.shared = torch.Generator(device=device).manual_seed(example_seed(seed, -1))
        self.mask, self._positions = attention_mask, None                                  # (N, L) or None

    def positions(self, device) -> list[torch.Tensor]:
        """Each example's real token positions, found at the first draw along the token axis."""
        if self._positions is None:
            self._positions = [row.nonzero().squeeze(1).to(device) for row in self.mask.cpu().bool()]
        return self._positions

    def draw(self, shape: tuple[int, ...], dtype, device, tokens: bool, sample: Callable) -> torch.Tensor:
        """(S·N, ...) from ``sample(size, generator)``, one call per example of size (S, ...); rows s·N + i = copy s of
        example i. With ``tokens``, axis 1 is the token axis and only real tokens get a value (padding 0)."""
        shape = tuple(shape)
        S, N = self.copies, len(self.generators)
        if shape[0] != S * N:
            raise RuntimeError(f"a per-example draw of shape {shape} in a pass of {S} copies of {N} examples: "
                               f"the first axis must be the {S * N} rows (S stacked copies of the batch).")
        if tokens and self.mask is not None and len(shape) >= 3 and shape[1] == self.mask.shape[1]:
            out = torch.zeros((S, N, *shape[1:]), dtype=dtype, device=device)
            for i, (g, positions) in enumerate(zip(self.generators, self.positions(device))):
                out[:, i][:, positions] = sample((S, len(positions), *shape[2:]), g).to(device=device, dtype=dtype)
            return out.view(shape)
        draws = torch.stack([sample((S, *shape[1:]), g) for g in self.generators], dim=1)   # (S, N, ...)
        return draws.to(device=device, dtype=dtype).reshape(shape)


_active: _Examples | None = None
_examples: Sequence[int] | None = None


def example_seed(seed: int, example: int) -> int:
    """A 63-bit seed for one example's generator, from (seed, example index); distinct pairs give unrelated seeds."""
    digest = hashlib.blake2b(f"{seed}/{example}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@contextmanager
def examples(indices):
    """Name the examples of the next batch by their index in the dataset (``sample_probabilities`` does this)."""
    global _examples
    saved, _examples = _examples, [int(i) for i in torch.as_tensor(indices).reshape(-1).tolist()]
    try:
        yield
    finally:
        _examples = saved


def current_examples(n: int) -> list[int]:
    """The indices set by ``examples`` for a batch of n, or 0..n-1 for a batch given directly."""
    if _examples is None:
        return list(range(n))
    if len(_examples) != n:
        raise ValueError(f"{len(_examples)} example indices for a batch of {n}.")
    return list(_examples)


@contextmanager
def per_example(seed: int, examples: Sequence[int], copies: int, attention_mask: torch.Tensor | None = None,
                device="cpu"):
    """Inside the block, the helpers below draw per example (see the module docstring); rows = copies · len(examples)."""
    global _active
    saved, _active = _active, _Examples(seed, examples, copies, attention_mask, device)
    try:
        yield
    finally:
        _active = saved


def normal(shape, dtype, device, tokens: bool = False) -> torch.Tensor:
    """N(0, 1) of ``shape`` (rows first); ``tokens``: axis 1 is the token axis (noise per token)."""
    if _active is None:
        return torch.randn(shape, dtype=dtype, device=device)
    return _active.draw(shape, dtype, device, tokens,
                        lambda size, g: torch.randn(size, generator=g, device=g.device))


def signs(shape, dtype, device, tokens: bool = False) -> torch.Tensor:
    """±1 with probability ½ each, of ``shape`` (rows first)."""
    if _active is None:
        return torch.randint(0, 2, shape, device=device).to(dtype) * 2 - 1
    return _active.draw(shape, dtype, device, tokens,
                        lambda size, g: torch.randint(0, 2, size, generator=g, device=g.device).float() * 2 - 1)


def shared_normal(shape, dtype, device) -> torch.Tensor:
    """N(0, 1) of ``shape`` shared by every example of the pass (one generator seeded by the seed alone)."""
    if _active is None:
        return torch.randn(shape, dtype=dtype, device=device)
    g = _active.shared
    return torch.randn(shape, generator=g, device=g.device).to(device=device, dtype=dtype)


def dropout(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for an ``nn.Dropout``; inside ``per_example`` and in training mode, its mask drawn per example."""
    if _active is None or not isinstance(module, nn.Dropout) or not module.training or module.p == 0:
        return module(x)
    p = module.p
    if p >= 1:
        return torch.zeros_like(x)
    keep = _active.draw(x.shape, x.dtype, x.device, x.dim() >= 3,
                        lambda size, g: (torch.rand(size, generator=g, device=g.device) >= p).float())
    return x * keep / (1 - p)
