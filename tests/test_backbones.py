import pytest
import torch

from minibayeslora import assets
from minibayeslora.backbones import BackboneUnavailableError, DecoderClassifier, load_backbone

TEXTS = ["A warm, funny and wise film.", "Two hours I will never get back.",
         "The plot wanders, but the lead performance is extraordinary and carries every scene."]


def test_minilm_loads_offline_and_matches_transformers_forward(minilm):
    batch = minilm.tokenize(TEXTS)
    with torch.no_grad():
        logits = minilm(**batch)
        reference = minilm.encoder(**batch).last_hidden_state  # transformers' own forward
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()
    m = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (reference * m).sum(1) / m.sum(1)
    expected = pooled @ minilm.head.weight.T + minilm.head.bias
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_a_review(minilm):
    with torch.no_grad():
        alone = minilm(**minilm.tokenize(TEXTS[:1]))
        padded = minilm(**minilm.tokenize(TEXTS))[:1]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)


def test_backbone_is_frozen_and_head_trainable(minilm):
    trainable = {n for n, p in minilm.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}
    assert sum(p.numel() for p in minilm.encoder.parameters()) == pytest.approx(22.7e6, rel=0.01)


def test_smollm2_label_logits_equal_full_lm_logits(smollm2):
    """The C label logits must equal the LM's vocabulary logits at the last real token."""
    for side in ("right", "left"):
        smollm2.tokenizer.padding_side = side
        batch = smollm2.tokenize(TEXTS)
        with torch.no_grad():
            ours = smollm2(**batch)
            full = smollm2.lm(**batch).logits
        rows = torch.arange(len(TEXTS))
        last = batch["attention_mask"].shape[1] - 1 if side == "left" else batch["attention_mask"].sum(1) - 1
        ref = full[rows, last][:, smollm2.label_token_ids]
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    smollm2.tokenizer.padding_side = "right"
    assert len(smollm2.tokenizer(" negative", add_special_tokens=False)["input_ids"]) == 1


def test_smollm2_safetensors_cache_round_trip(smollm2):
    """The cached safetensors model gives the same logits as a fresh load of the GGUF file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = assets.smollm2_gguf()
    fresh = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    direct = DecoderClassifier(fresh, tok)
    batch = smollm2.tokenize(TEXTS)
    assert torch.equal(batch["input_ids"], direct.tokenize(TEXTS)["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(smollm2(**batch), direct(**batch), atol=1e-5, rtol=1e-5)
    def no_conversion():
        raise AssertionError("a reload must read the cached safetensors, not convert the GGUF again")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(assets, "smollm2_gguf", no_conversion)
        load_backbone("smollm2")


def test_long_reviews_keep_the_end_of_the_prompt(smollm2):
    batch = smollm2.tokenize(["word " * 500])
    assert batch["input_ids"].shape[1] <= smollm2.max_length + 8
    text = smollm2.tokenizer.decode(batch["input_ids"][0])
    assert text.endswith("The sentiment of this review is")


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantized_minilm_forward_and_train_after_eval(quantization, minilm, caplog):
    import bitsandbytes as bnb

    model = load_backbone("minilm", quantization=quantization)
    linear = bnb.nn.Linear4bit if quantization == "4bit" else bnb.nn.Linear8bitLt
    quantized = [m for m in model.modules() if isinstance(m, linear)]
    assert len(quantized) == 6 * 6, "every attention/FFN linear of the 6 layers is quantized"
    assert not any(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in model.head.modules())
    if quantization == "4bit":
        assert all(m.support_avx512bf16_for_cpu is False for m in quantized)
    model.head.load_state_dict(minilm.head.state_dict())
    batch = model.tokenize(TEXTS)
    with torch.no_grad():
        logits = model(**batch)  # the eval pass that used to break training on AVX512-BF16 CPUs
        exact = minilm(**batch)
    assert torch.isfinite(logits).all()
    assert (logits - exact).abs().max() < 0.5, "quantized logits far from full precision"
    model.train()
    hidden = model.embed(batch["input_ids"]).detach().requires_grad_(True)  # stands in for a LoRA below
    out = model.classify(model.run_layers(hidden, batch["attention_mask"]), batch["attention_mask"])
    torch.nn.functional.cross_entropy(out, torch.tensor([1, 0, 1])).backward()
    assert torch.isfinite(hidden.grad).all() and hidden.grad.abs().sum() > 0
    assert torch.isfinite(model.head.weight.grad).all()
    assert not [r for r in caplog.records if "MatMul8bitLt" in r.getMessage()], "bitsandbytes' per-matmul log is not silenced"


def test_offline_hub_id_fails_with_one_sentence():
    with pytest.raises(BackboneUnavailableError) as info:
        load_backbone("Qwen/Qwen2.5-0.5B")
    err = info.value
    message = str(err)
    assert "\n" not in message and message.count(". ") == 0 and message.endswith(".")
    assert "'minilm'" in message and "'smollm2'" in message and "Qwen/Qwen2.5-0.5B" in message
    assert err.__cause__ is None and err.__context__ is None


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="quantization must be"):
        load_backbone("minilm", quantization="3bit")
    with pytest.raises(ValueError, match="name must be"):
        load_backbone("")


def test_hub_id_that_fails_online_is_one_sentence_too(monkeypatch):
    from minibayeslora import backbones

    def loader(name, **kwargs):
        raise OSError(f"{name} is not a repository\nwith a long traceback")

    monkeypatch.setattr(backbones, "_hub_reachable", lambda timeout=3.0: True)
    with pytest.raises(BackboneUnavailableError, match="not found on the Hugging Face Hub") as info:
        backbones._from_hub(loader, "nobody/nothing")
    assert "\n" not in str(info.value) and info.value.__context__ is None


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantized_smollm2_forward(quantization, smollm2):
    import bitsandbytes as bnb

    model = load_backbone("smollm2", quantization=quantization)
    quantized = [m for m in model.modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))]
    assert len(quantized) == 30 * 7, "q/k/v/o and the 3 MLP projections of all 30 layers"
    assert isinstance(model.lm.lm_head, torch.nn.Linear) and not isinstance(model.lm.lm_head, type(quantized[0]))
    batch = model.tokenize(TEXTS)
    with torch.no_grad():
        logits, exact = model(**batch), smollm2(**batch)
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()
    assert (logits - exact).abs().max() < 3.0, "quantized label logits far from full precision"


def save_tiny_bf16_checkpoint(folder):
    """A random 2-layer BERT saved in bfloat16 with MiniLM's tokenizer: a stand-in for a hub checkpoint stored in bf16."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).to(torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(assets.minilm_dir())).save_pretrained(folder)
    return folder


def test_bf16_checkpoint_loads_in_float32_and_trains(tmp_path, task, isolated_cache):
    """transformers keeps a checkpoint's stored dtype by default; load_backbone asks for float32 unless told otherwise."""
    from safetensors import safe_open

    from minibayeslora.lora import inject_lora
    from minibayeslora.train import TrainConfig, fit, make_data

    folder = save_tiny_bf16_checkpoint(tmp_path)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}, "the checkpoint really is bf16"
    model = load_backbone(str(folder), device="cpu")  # a local folder goes through the hub-id path
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    inject_lora(model, ["query", "value"], r=2, layers=[1])
    split = task.train.subset(32, seed=0)
    history = fit(model, make_data(model, split), None, TrainConfig(steps=2, batch_size=8), progress=False)
    assert all(torch.isfinite(torch.tensor(history.train_loss)))

    frozen_bf16 = load_backbone(str(folder), device="cpu", dtype=torch.bfloat16)
    assert frozen_bf16.encoder.embeddings.word_embeddings.weight.dtype == torch.bfloat16
    inject_lora(frozen_bf16, ["query", "value"], r=2, layers=[1])
    assert {p.dtype for p in frozen_bf16.parameters() if p.requires_grad} == {torch.float32}, "trainable tensors stay float32"
    data = make_data(frozen_bf16, split)  # a cached prefix (layer 0) enters a bf16 layer 1
    logits = frozen_bf16(**data.inputs(torch.arange(4)))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    history = fit(frozen_bf16, data, None, TrainConfig(steps=2, batch_size=8), progress=False)
    assert all(torch.isfinite(torch.tensor(history.train_loss)))


def test_device_and_dtype_arguments(minilm):
    from minibayeslora import config

    model = load_backbone("minilm", device="cpu")
    assert config.model_device(model) == torch.device("cpu")
    assert config.model_device(minilm) == config.device(), "the default device is config.device()"
    with pytest.raises(ValueError, match="dtype must be a floating"):
        load_backbone("minilm", dtype=torch.int8)
    batch = config.to_device({"input_ids": torch.ones(2, 3, dtype=torch.long), "start_layer": 3}, "cpu")
    assert batch["start_layer"] == 3 and batch["input_ids"].device.type == "cpu"


def test_adapter_targets_per_architecture(minilm, smollm2):
    from minibayeslora.backbones import adapter_targets
    from minibayeslora.lora import inject_lora, layer_index, lora_layers

    assert adapter_targets(minilm) == {"target_modules": ["query", "value"], "layers": [3, 4, 5]}
    targets = adapter_targets(smollm2)
    assert targets["target_modules"] == ["q_proj", "v_proj"]
    assert targets["layers"] == list(range(smollm2.lm.config.num_hidden_layers - 3, smollm2.lm.config.num_hidden_layers))
    model = load_backbone("smollm2", device="cpu")
    injected = inject_lora(model, r=2, **targets)
    assert len(injected) == 6 and {layer_index(n) for n in lora_layers(model)} == set(targets["layers"])
    with pytest.raises(ValueError, match="top must be"):
        adapter_targets(minilm, top=7)


def test_lora_classifier_is_the_seeded_recipe_spelled_out(monkeypatch):
    """``lora_classifier`` = seed, load, inject at ``adapter_targets``: compare with the three steps done by hand."""
    from minibayeslora import config
    from minibayeslora.backbones import adapter_targets, lora_classifier
    from minibayeslora.lora import adapter_state, inject_lora, lora_layers

    monkeypatch.delenv("MINIBAYESLORA_BACKBONE", raising=False)
    model = lora_classifier(3, r=4, dropout=0.1)
    config.seed_everything(3)
    by_hand = load_backbone("minilm")
    inject_lora(by_hand, r=4, alpha=8, dropout=0.1, **adapter_targets(by_hand))
    ours, theirs = adapter_state(model), adapter_state(by_hand)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    layer = next(iter(lora_layers(model).values()))
    assert (layer.r, layer.alpha, layer.dropout.p) == (4, 8, 0.1)
