"""The LoRA layer built step by step in notebook 01 must behave exactly like the package's."""

from pathlib import Path

import nbformat
import torch
from torch import nn

from minibayeslora.lora import LoRALinear

ROOT = Path(__file__).resolve().parents[1]


def _notebook_class():
    nb = nbformat.read(ROOT / "notebooks" / "01_lora_from_scratch.ipynb", as_version=4)
    (cell,) = [c for c in nb.cells if "from-scratch" in c.metadata.get("tags", [])]
    namespace = {}
    exec("import math\nimport torch\nfrom torch import nn\n" + cell.source, namespace)
    return namespace["LoRALinear"]


def test_notebook_lora_matches_the_package():
    Notebook = _notebook_class()
    torch.manual_seed(0)
    base = nn.Linear(10, 6)
    ours = Notebook(base, r=3, alpha=5.0)
    torch.manual_seed(0)
    package = LoRALinear(nn.Linear(10, 6), r=3, alpha=5.0)
    # same seeds -> same initialisation of A (same init scheme), B zeros in both
    assert torch.equal(ours.lora_A, package.lora_A) and torch.equal(ours.lora_B, package.lora_B)
    assert sorted(n for n, _ in ours.named_parameters()) == sorted(n for n, _ in package.named_parameters())
    assert {n for n, p in ours.named_parameters() if p.requires_grad} == {"lora_A", "lora_B"}
    assert ours.scaling == package.scaling == 5.0 / 3
    with torch.no_grad():
        ours.lora_B.normal_()
    package.load_state_dict(ours.state_dict())
    x = torch.randn(4, 10)
    torch.testing.assert_close(ours(x), package(x), rtol=0, atol=0)
    torch.testing.assert_close(ours.delta_weight(), package.delta_weight(), rtol=0, atol=0)
    ours.merge(), package.merge()
    torch.testing.assert_close(ours.base.weight, package.base.weight, rtol=0, atol=0)
    ours.merge(), package.merge()  # idempotent in both
    torch.testing.assert_close(ours(x), package(x), rtol=0, atol=0)
    ours.unmerge(), package.unmerge()
    torch.testing.assert_close(ours.base.weight, package.base.weight, rtol=0, atol=0)
    assert ours.merged is package.merged is False
