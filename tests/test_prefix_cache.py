import pytest
import torch

from minibayeslora import prefix_cache
from minibayeslora.prefix_cache import compute_prefix, prefix_features


@pytest.fixture(scope="module")
def texts(task):
    return task.val.subset(48, seed=1).texts


@pytest.mark.parametrize("start_layer", [0, 3, 6])
def test_cached_logits_equal_uncached(minilm, texts, start_layer, isolated_cache):
    features = prefix_features(minilm, texts, start_layer)
    idx = torch.tensor([5, 0, 17, 33, 2, 47])
    with torch.no_grad():
        cached = minilm(**features.batch(idx))
        uncached = minilm(**minilm.tokenize([texts[i] for i in idx]))
    torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=1e-5)


def test_cached_gradients_equal_uncached(minilm, texts, isolated_cache):
    features = prefix_features(minilm, texts, 3)
    labels = torch.randint(0, 2, (len(texts),), generator=torch.Generator().manual_seed(0))
    grads = []
    for batch in (features.batch(), minilm.tokenize(texts)):
        minilm.head.zero_grad()
        torch.nn.functional.cross_entropy(minilm(**batch), labels).backward()
        grads.append(minilm.head.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_storage_is_ragged_and_batches_are_masked(minilm, texts):
    features = compute_prefix(minilm, texts, 2, progress=False)
    lengths = minilm.tokenize(texts)["attention_mask"].sum(1)
    assert torch.equal(features.lengths, lengths) and features.hidden.shape == (int(lengths.sum()), 384)
    batch = features.batch([3, 4])
    assert torch.equal(batch["attention_mask"].sum(1), lengths[[3, 4]])
    assert batch["prefix_hidden"].shape[1] == int(lengths[[3, 4]].max())


def test_disk_round_trip_and_keys(minilm, texts, isolated_cache):
    first = prefix_features(minilm, texts, 3)
    files = list((isolated_cache / "prefix").glob("*.safetensors"))
    assert len(files) == 1
    prefix_cache.clear_memory_cache()
    again = prefix_features(minilm, texts, 3)
    assert again is not first and torch.equal(again.hidden, first.hidden) and torch.equal(again.offsets, first.offsets)
    assert prefix_features(minilm, texts, 3) is again  # memory hit
    prefix_features(minilm, texts[:-1], 3)
    prefix_features(minilm, texts, 2)
    prefix_features(minilm, texts, 3, max_length=16)
    assert len(list((isolated_cache / "prefix").glob("*.safetensors"))) == 4
    assert not list((isolated_cache / "prefix").glob("*.tmp*")), "a temporary file was left behind"


def test_corrupt_cache_file_is_recomputed(minilm, texts, isolated_cache, capsys):
    reference = prefix_features(minilm, texts, 3)
    (path,) = (isolated_cache / "prefix").glob("*.safetensors")
    path.write_bytes(b"not a safetensors file")
    prefix_cache.clear_memory_cache()
    recovered = prefix_features(minilm, texts, 3)
    assert "recomputing" in capsys.readouterr().out
    assert torch.equal(recovered.hidden, reference.hidden)


def test_changed_frozen_weights_change_the_key(minilm, texts, isolated_cache):
    a = prefix_cache._fingerprint(minilm, 3, texts, 64)
    layer0 = minilm.layers[0].attention.self.query.weight
    original = layer0[0, 0].item()
    with torch.no_grad():
        layer0[0, 0] += 1.0
    try:
        assert prefix_cache._fingerprint(minilm, 3, texts, 64) != a
        assert prefix_cache._fingerprint(minilm, 0, texts, 64) == prefix_cache._fingerprint(minilm, 0, texts, 64)
    finally:
        with torch.no_grad():
            layer0[0, 0] = original
    assert prefix_cache._fingerprint(minilm, 3, texts, 64) == a


def test_bad_start_layer(minilm, texts):
    with pytest.raises(ValueError, match="start_layer must be in 0..6"):
        compute_prefix(minilm, texts, 7)


def test_prefix_data_refuses_a_model_adapted_below_its_start_layer(minilm_fresh, task, isolated_cache):
    """Data cached from layer 3 would silently skip an adapter in layer 1: the forward refuses it instead."""
    from minibayeslora.backbones import load_backbone
    from minibayeslora.lora import inject_lora
    from minibayeslora.train import evaluate, make_data

    split = task.val.subset(16, seed=0)
    inject_lora(minilm_fresh, ["query", "value"], r=2, alpha=4, layers=[3, 4, 5])
    data = make_data(minilm_fresh, split)
    assert data.start_layer == 3
    evaluate(minilm_fresh, data)  # adapters at or above the start layer: fine
    lower = load_backbone("minilm")
    inject_lora(lower, ["query", "value"], r=2, alpha=4, layers=[1, 3, 4, 5])
    with pytest.raises(ValueError, match=r"layer\(s\) \[1\] below it hold an adapter"):
        evaluate(lower, data)
    assert make_data(lower, split).start_layer == 1  # data built for this model start below its lowest adapter


def test_batch_gather_equals_a_row_by_row_copy():
    """``PrefixFeatures.batch`` gathers all rows at once; a plain loop over rows is the reference."""
    from minibayeslora.prefix_cache import PrefixFeatures

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 9, (12,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    features = PrefixFeatures(torch.randn(int(offsets[-1]), 5, generator=g), offsets, start_layer=2)
    idx = torch.tensor([7, 0, 11, 3, 3])
    got = features.batch(idx)
    width = int(lengths[idx].max())
    for row, i in enumerate(idx.tolist()):
        n, start = int(lengths[i]), int(offsets[i])
        expected = torch.zeros(width, 5)
        expected[:n] = features.hidden[start:start + n]
        assert torch.equal(got["prefix_hidden"][row], expected)
        assert got["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
    assert got["attention_mask"].dtype == torch.long and got["start_layer"] == 2


def _reference_fingerprint(model, start_layer, texts, max_length):
    """The key computed from scratch, every frozen tensor read: the weights' sha256, then the texts."""
    import hashlib
    import json
    weights = hashlib.sha256()
    for module in [model.encoder.embeddings] + list(model.layers[:start_layer]):
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            weights.update(name.encode())
            weights.update(f"{t.dtype}{tuple(t.shape)}".encode() + t.reshape(-1).view(torch.uint8).numpy().tobytes())
    h = hashlib.sha256()
    h.update(json.dumps({"layer": start_layer, "max_length": max_length,
                         "model": getattr(model, "name", type(model).__name__)}).encode())
    h.update(weights.hexdigest()[:24].encode())
    for text in texts:
        h.update(text.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def test_frozen_weights_are_hashed_once_and_again_only_after_a_change(minilm, texts, monkeypatch):
    from minibayeslora import recipe

    reads = []
    real_bytes = recipe.tensor_bytes
    monkeypatch.setattr(recipe, "tensor_bytes", lambda t: reads.append(1) or real_bytes(t))
    keys = [prefix_cache._fingerprint(minilm, 3, texts, 64) for _ in range(3)]
    n_tensors = sum(len(m.state_dict()) for m in [minilm.encoder.embeddings] + list(minilm.layers[:3]))
    assert len(reads) in (0, n_tensors), "the weights were read on more than one call"
    assert keys[0] == keys[1] == keys[2] == _reference_fingerprint(minilm, 3, texts, 64)
    assert prefix_cache._fingerprint(minilm, 3, texts[:-1], 64) != keys[0]
    weight = next(minilm.layers[1].parameters())
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.add_(1e-3)                  # an in-place change to a frozen layer below the start
        reads.clear()
        changed = prefix_cache._fingerprint(minilm, 3, texts, 64)
        assert reads, "a changed weight is read again"
        assert changed != keys[0] and changed == _reference_fingerprint(minilm, 3, texts, 64)
        assert prefix_cache._fingerprint(minilm, 1, texts, 64) == _reference_fingerprint(minilm, 1, texts, 64)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert prefix_cache._fingerprint(minilm, 3, texts, 64) == keys[0]


def test_memory_cache_keeps_the_most_recent_features_within_its_limit(minilm, texts, isolated_cache, monkeypatch):
    prefix_cache.clear_memory_cache()
    first = prefix_features(minilm, texts[:24], 3, progress=False)
    monkeypatch.setattr(prefix_cache, "MEMORY_LIMIT_BYTES", first.nbytes + 1)
    second = prefix_features(minilm, texts[24:], 3, progress=False)
    assert list(prefix_cache._MEMORY.values()) == [second], "the older features were dropped to stay in the limit"
    again = prefix_features(minilm, texts[:24], 3, progress=False)   # back from disk, and now the most recent
    assert again is not first and torch.equal(again.hidden, first.hidden)
    assert list(prefix_cache._MEMORY.values()) == [again]


@pytest.mark.parametrize("start_layer", [0, 27, 30])
def test_decoder_cached_logits_equal_uncached(smollm2, texts, start_layer, isolated_cache):
    """SmolLM2 entered at a block from cached states (right padding, rotary positions 0..L-1) = the full pass."""
    features = prefix_features(smollm2, texts[:12], start_layer)
    idx = torch.tensor([5, 0, 11, 2])
    with torch.no_grad():
        cached = smollm2(**features.batch(idx))
        batch = smollm2.tokenize([texts[i] for i in idx])
        uncached = smollm2(**batch)
        reference = smollm2.lm(**batch).logits           # transformers' own forward, all 30 blocks
    last = batch["attention_mask"].sum(1) - 1
    torch.testing.assert_close(uncached, reference[torch.arange(4), last][:, smollm2.label_token_ids], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cached, uncached, atol=1e-4, rtol=1e-4)


def test_make_data_uses_the_prefix_for_a_decoder_with_adapters_on_top(task, isolated_cache):
    from minibayeslora.backbones import lora_classifier
    from minibayeslora.train import PrefixData, TextData, make_data

    model = lora_classifier(0, name="smollm2", device="cpu")
    split = task.val.subset(6, seed=2)
    data = make_data(model, split)
    assert isinstance(data, PrefixData) and data.features.start_layer == 27
    for layer in model.lm.model.layers[27:]:   # make the adapters matter: B = 0 at injection
        torch.nn.init.normal_(layer.self_attn.q_proj.lora_B, std=0.02)
    grads = []
    for batch in (data.inputs(torch.arange(6)), TextData(model, split.texts, split.labels).inputs(torch.arange(6))):
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(**batch), split.labels)
        loss.backward()
        grads.append((loss.detach(), model.lm.model.layers[28].self_attn.v_proj.lora_A.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-5, rtol=1e-3)


def test_a_decoder_that_pads_on_the_left_is_not_entered_at_a_block(smollm2, texts):
    smollm2.tokenizer.padding_side = "left"
    try:
        assert not smollm2.supports_prefix
        with pytest.raises(ValueError, match="cannot be entered at a block"):
            smollm2(prefix_hidden=torch.zeros(1, 3, 576), attention_mask=torch.ones(1, 3), start_layer=27)
    finally:
        smollm2.tokenizer.padding_side = "right"
