"""Shared fixtures. Every test runs offline: nothing may reach a model hub."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.gpu`` tests need CUDA: skipped, with the reason, where there is none."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run bench/gpu_check.sh on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def task():
    from minibayeslora import data

    return data.load_task("rotten_tomatoes")


@pytest.fixture(scope="session")
def minilm():
    from minibayeslora.backbones import load_backbone

    return load_backbone("minilm")


@pytest.fixture(scope="session")
def smollm2():
    from minibayeslora.backbones import load_backbone

    return load_backbone("smollm2")


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A fresh MINIBAYESLORA_CACHE, no shipped checkpoints and an empty in-memory prefix cache."""
    from minibayeslora import prefix_cache

    monkeypatch.setenv("MINIBAYESLORA_CACHE", str(tmp_path))
    monkeypatch.setenv("MINIBAYESLORA_CHECKPOINTS", str(tmp_path / "no-shipped-checkpoints"))
    for flag in ("MINIBAYESLORA_RETRAIN", "MINIBAYESLORA_REQUIRE_CHECKPOINTS", "MINIBAYESLORA_RECORD_CHECKPOINTS"):
        monkeypatch.delenv(flag, raising=False)
    prefix_cache.clear_memory_cache()
    yield tmp_path
    prefix_cache.clear_memory_cache()


@pytest.fixture
def minilm_fresh():
    """A MiniLM classifier of its own, for tests that inject adapters (seeded head)."""
    import torch

    from minibayeslora.backbones import load_backbone

    torch.manual_seed(0)
    return load_backbone("minilm")


@pytest.fixture
def lrvd_model(minilm_fresh):
    """MiniLM with LRVD adapters (r = 4) on block 5's query and value, made to matter: B ~ N(0, 0.5²), log α = 0."""
    import torch

    from minibayeslora.lora import inject_lora
    from minibayeslora.lrvd import VariationalLoRALinear

    layers = inject_lora(minilm_fresh, ["query", "value"], r=4, alpha=8, layers=[5], layer_cls=VariationalLoRALinear)
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B.normal_(std=0.5)
            layer.log_alpha.fill_(0.0)
    return minilm_fresh
