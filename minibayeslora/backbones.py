"""Pretrained backbones as classifiers with one interface: tokenised batch -> logits (N, C).

- ``SentenceClassifier`` (MiniLM, any BERT-like encoder): mean pooling over the last hidden
  states, then a linear head: ``logits = W_h · (Σ_t m_t h_t / Σ_t m_t) + b_h`` with h_t ∈ R^H.
- ``DecoderClassifier`` (SmolLM2, any causal LM): a prompt ends in ``"Sentiment:"`` and the
  logits are the LM's next-token logits of the label tokens (" negative", " positive"), read
  off the last real token: ``logits_c = E[token_c] · h_last`` (tied or untied output matrix).

``load_backbone("minilm" | "smollm2" | <hub id>, quantization=None | "4bit" | "8bit")``.
The embedded backbones load offline from asset wheels; a hub id needs the internet (Colab) and
otherwise fails with one sentence naming the embedded alternatives.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import socket
import warnings
from pathlib import Path

import torch
from torch import nn

from . import assets, config
from .data import LABEL_NAMES
from .lora import _is_quantized, inject_lora, lora_layers

EMBEDDED = config.EMBEDDED_BACKBONES
DEFAULT_PROMPT = "Movie review: {text}\nThe sentiment of this review is"


class BackboneUnavailableError(RuntimeError):
    """A backbone cannot be loaded here (offline hub id, missing bitsandbytes, ...)."""


def quiet_transformers() -> None:
    """Silence transformers' progress bars and load reports (they clutter notebooks and logs)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # bitsandbytes logs "MatMul8bitLt: inputs will be cast ..." at every 8-bit matmul
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


class _PrefixEntry(nn.Module):
    """What both classifiers share for entering the network at a block from a cached prefix."""

    supports_prefix = True

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def _check_nothing_trainable_below(self, start_layer: int) -> None:
        """A cached prefix skips layers 0..start_layer-1: refuse if one of them holds an adapter or a trainable weight."""
        skipped = [i for i, layer in enumerate(self.layers[:start_layer])
                   if lora_layers(layer) or any(p.requires_grad for p in layer.parameters())]
        if skipped:
            raise ValueError(f"this batch enters the network at layer {start_layer} from a cached prefix, but layer(s) "
                             f"{skipped} below it hold an adapter or trainable weights that the prefix skips; build the "
                             f"data again with make_data(model, split) after injecting the adapter.")

    def _entry(self, input_ids, attention_mask, prefix_hidden, start_layer: int, dtype):
        """Checked ``(hidden (N, L, H), attention_mask (N, L), start_layer)`` on the model's device.

        Batches arrive on the CPU (tokenizer, prefix cache) and move to wherever the model lives.
        """
        device = config.model_device(self)
        input_ids, attention_mask = _to(input_ids, device), _to(attention_mask, device)
        prefix_hidden = _to(prefix_hidden, device, dtype)
        if prefix_hidden is None:
            if input_ids is None:
                raise ValueError("pass input_ids (a tokenised batch) or prefix_hidden (a cached prefix).")
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            return self.embed(input_ids), attention_mask, 0
        if attention_mask is None:
            raise ValueError("prefix_hidden needs its attention_mask.")
        self._check_nothing_trainable_below(start_layer)
        return prefix_hidden, attention_mask, start_layer


class SentenceClassifier(_PrefixEntry):
    """Encoder + mean pooling + linear head.

    ``forward(input_ids, attention_mask)`` with both (N, L) -> logits (N, C). The encoder can also
    be entered at layer ``start_layer`` with cached hidden states ``prefix_hidden`` (N, L, H):
    the layers below it are frozen, so their output is the same every epoch (see ``prefix_cache``).
    """

    def __init__(self, encoder: nn.Module, tokenizer, label_names=LABEL_NAMES, max_length: int = 64):
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.label_names = tuple(label_names)
        self.max_length = max_length
        self.head = nn.Linear(encoder.config.hidden_size, len(self.label_names))

    @property
    def layers(self) -> nn.ModuleList:
        return self.encoder.encoder.layer

    @property
    def embeddings(self) -> nn.Module:
        return self.encoder.embeddings

    def tokenize(self, texts: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Texts -> ``{"input_ids", "attention_mask"}`` padded to the longest text (≤ max_length)."""
        if isinstance(texts, str):
            texts = [texts]
        enc = self.tokenizer(list(texts), padding=True, truncation=True,
                             max_length=max_length or self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def text_lengths(self, texts: list[str]) -> tuple[list[int], int]:
        """Each text's length in tokens as ``tokenize`` counts it, and how many fit (``max_length``)."""
        return [len(ids) for ids in self.tokenizer(list(texts))["input_ids"]], self.max_length

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token + position embeddings: (N, L) -> (N, L, H)."""
        return self.encoder.embeddings(input_ids=input_ids)

    def run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int = 0,
                   stop: int | None = None) -> torch.Tensor:
        """Apply encoder layers ``start..stop-1`` to hidden states (N, L, H) with a (N, L) padding mask."""
        from transformers.masking_utils import create_bidirectional_mask

        mask = create_bidirectional_mask(config=self.encoder.config, inputs_embeds=hidden,
                                         attention_mask=attention_mask)
        for layer in self.layers[start:stop]:
            hidden = layer(hidden, mask)
        return hidden

    def classify(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean-pool the real tokens of (N, L, H) and apply the head -> (N, C)."""
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.head(pooled.to(self.head.weight.dtype))

    def forward(self, input_ids=None, attention_mask=None, prefix_hidden=None, start_layer: int = 0):
        hidden, attention_mask, start_layer = self._entry(input_ids, attention_mask, prefix_hidden, start_layer,
                                                          self.embeddings.word_embeddings.weight.dtype)
        return self.classify(self.run_layers(hidden, attention_mask, start_layer), attention_mask)


class DecoderClassifier(_PrefixEntry):
    """Causal LM as a classifier by label-token logits.

    ``forward(input_ids, attention_mask)`` -> (N, C): for each row, the hidden state h (H,) of its
    last real token, then ``logits_c = W_out[label_token_c] · h``. Only C rows of the output
    matrix are used, so the full vocabulary projection is never computed.

    Like the encoder, a Llama-style decoder (token embeddings, blocks with rotary position
    embeddings, a final norm: SmolLM2, Llama, Qwen2, Mistral) can be entered at block ``start_layer``
    with cached hidden states ``prefix_hidden`` (N, L, H). Padding is on the right, so every real
    token sits at the position it has alone (positions 0..L-1) and a cached prefix gives the same
    logits as the full pass; other decoders run the full pass (``supports_prefix`` is False).
    """

    def __init__(self, lm: nn.Module, tokenizer, label_names=LABEL_NAMES, prompt: str = DEFAULT_PROMPT,
                 max_length: int = 128):
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.label_names = tuple(label_names)
        self.prompt = prompt
        self.max_length = max_length
        ids = [tokenizer(" " + name, add_special_tokens=False)["input_ids"] for name in self.label_names]
        if any(len(i) != 1 for i in ids):
            warnings.warn(f"label words {self.label_names} are not single tokens {ids}; using the first token of each.")
        self.register_buffer("label_token_ids", torch.tensor([i[0] for i in ids]), persistent=False)
        if tokenizer.pad_token is None:  # pad with EOS (masked out) on a copy: the caller's tokenizer stays as it was
            self.tokenizer = tokenizer = copy.deepcopy(tokenizer)
            tokenizer.pad_token = tokenizer.eos_token

    @property
    def supports_prefix(self) -> bool:
        inner = self.lm.model
        return all(hasattr(inner, name) for name in ("embed_tokens", "layers", "rotary_emb", "norm")) \
            and self.tokenizer.padding_side == "right"

    @property
    def layers(self) -> nn.ModuleList:
        return self.lm.model.layers

    @property
    def embeddings(self) -> nn.Module:
        return self.lm.model.embed_tokens

    def tokenize(self, texts: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Texts -> prompts -> ``{"input_ids", "attention_mask"}``; long reviews are cut, never the prompt's end."""
        if isinstance(texts, str):
            texts = [texts]
        room = self._text_room(max_length or self.max_length)
        clipped = [self.tokenizer.decode(self.tokenizer(t, add_special_tokens=False)["input_ids"][:room]) for t in texts]
        enc = self.tokenizer([self.prompt.format(text=t) for t in clipped], padding=True, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def _text_room(self, max_length: int) -> int:
        """Tokens left for the review once the prompt around it is counted (at least 8)."""
        return max(8, max_length - len(self.tokenizer(self.prompt.format(text=""))["input_ids"]))

    def text_lengths(self, texts: list[str]) -> tuple[list[int], int]:
        """Each review's length in tokens (prompt excluded), and how many fit inside the prompt."""
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(i) for i in ids], self._text_room(self.max_length)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (N, L) -> (N, L, H); positions enter each block as rotary embeddings."""
        return self.lm.model.embed_tokens(input_ids)

    def run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int = 0,
                   stop: int | None = None) -> torch.Tensor:
        """Apply decoder blocks ``start..stop-1`` to (N, L, H): causal attention over the real tokens, positions 0..L-1."""
        from transformers.masking_utils import create_causal_mask

        inner = self.lm.model
        position_ids = torch.arange(hidden.shape[1], device=hidden.device)[None]
        mask = create_causal_mask(config=self.lm.config, inputs_embeds=hidden, attention_mask=attention_mask,
                                  cache=None, position_ids=position_ids)
        rotary = inner.rotary_emb(hidden, position_ids=position_ids)
        for layer in self.layers[start:stop]:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=rotary, position_ids=position_ids)
        return hidden

    def forward(self, input_ids=None, attention_mask=None, prefix_hidden=None, start_layer: int = 0):
        if prefix_hidden is not None and not self.supports_prefix:
            raise ValueError("this decoder cannot be entered at a block (it is not Llama-style or pads on the left); "
                             "pass input_ids.")
        if prefix_hidden is None and input_ids is not None and not self.supports_prefix:
            input_ids, attention_mask = _to(input_ids, self.label_token_ids.device), _to(attention_mask, self.label_token_ids.device)
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            hidden = self.lm.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        else:
            hidden, attention_mask, start_layer = self._entry(input_ids, attention_mask, prefix_hidden, start_layer,
                                                              self.embeddings.weight.dtype)
            hidden = self.lm.model.norm(self.run_layers(hidden, attention_mask, start_layer))
        # Last real token of each row, whichever side the padding is on.
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        last = (attention_mask * positions).argmax(1)
        h = hidden[torch.arange(len(hidden), device=hidden.device), last]          # (N, H)
        w = self.lm.get_output_embeddings().weight[self.label_token_ids]           # (C, H)
        return h.float() @ w.float().T  # float32 logits whatever the backbone's dtype


def _to(tensor: torch.Tensor | None, device, dtype=None) -> torch.Tensor | None:
    """``tensor`` on ``device`` (and in ``dtype`` if given); None stays None."""
    return None if tensor is None else tensor.to(device=device, dtype=dtype, non_blocking=True)


def _quantization_config(quantization: str | None, skip: list[str]):
    if quantization is None:
        return None
    if quantization not in ("4bit", "8bit"):
        raise ValueError(f"quantization must be None, '4bit' or '8bit', got {quantization!r}.")
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise BackboneUnavailableError("Quantization needs bitsandbytes: `pip install bitsandbytes`.") from None
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


def _prepare_quantized(model: nn.Module) -> None:
    """bitsandbytes on CPU: with AVX512-BF16 an eval pass repacks 4-bit weights into a layout the
    backward pass cannot use, so training after evaluation fails. Keep the portable layout."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _load_kwargs(quantization: str | None, skip: list[str], device: torch.device) -> dict:
    qconfig = _quantization_config(quantization, skip)
    if qconfig is None:
        return {}
    return {"quantization_config": qconfig, "device_map": str(device)}


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct dequantised from the wheel's GGUF once, cached as safetensors.

    The first call converts (≈20 s); later loads read the cache (≈0.5 s).
    """
    target = config.cache_dir("backbones", "smollm2-135m-instruct")
    if (target / "model.safetensors").exists() and (target / "config.json").exists():
        return target
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    gguf = assets.smollm2_gguf()
    print(f"Dequantising {gguf.name} once (about 20 s); cached in {target}")
    real_tqdm = gguf_utils.tqdm
    gguf_utils.tqdm = lambda iterable, **kw: iterable  # silence the per-tensor progress bar
    try:
        lm = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    finally:
        gguf_utils.tqdm = real_tqdm
    # A GGUF-loaded model refuses save_pretrained; its weights are plain float tensors, so save them.
    cfg = lm.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    tied = cfg.tie_word_embeddings
    state = {k: v.contiguous() for k, v in lm.state_dict().items() if not (tied and k == "lm_head.weight")}
    cfg.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    for f in tmp.iterdir():  # model.safetensors last: its presence marks a complete cache
        if f.name != "model.safetensors":
            os.replace(f, target / f.name)
    os.replace(tmp / "model.safetensors", target / "model.safetensors")
    tmp.rmdir()
    return target


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip() in {"1", "true", "True", "ON", "YES"}:
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("//")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _from_hub(loader, name: str, **kwargs):
    """Load from a local folder, the local hub cache, or (when reachable) the hub; one sentence if none works."""
    if Path(name).is_dir():
        return loader(name, **kwargs)
    with contextlib.suppress(Exception):
        return loader(name, local_files_only=True, **kwargs)
    if _hub_reachable():
        try:
            return loader(name, **kwargs)
        except Exception:
            reason = "it was not found on the Hugging Face Hub (or needs a login)"
    else:
        reason = "the Hugging Face Hub cannot be reached from here"
    raise BackboneUnavailableError(
        f"Cannot load backbone {name!r}: {reason}; use an embedded backbone instead, "
        f"load_backbone('minilm') or load_backbone('smollm2')."
    )


#: Attention projections that get LoRA, by architecture family (the first pair a model has is used).
ATTENTION_TARGETS = (("query", "value"), ("q_proj", "v_proj"), ("q_lin", "v_lin"))


def adapter_targets(model: nn.Module, top: int = 3) -> dict:
    """Where the course puts LoRA on any backbone: the query and value projections of the top ``top`` blocks.

    Returns ``inject_lora`` keyword arguments, e.g. ``{"target_modules": ["query", "value"], "layers": [3, 4, 5]}``
    for MiniLM (6 blocks) or ``{"target_modules": ["q_proj", "v_proj"], "layers": [27, 28, 29]}`` for SmolLM2.
    """
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear) or _is_quantized(m)}
    pair = next((list(p) for p in ATTENTION_TARGETS if set(p) <= names), None)
    if pair is None:
        raise ValueError(f"no known attention projections {ATTENTION_TARGETS} among this model's linear layers "
                         f"{sorted(names)}; call inject_lora with target_modules= and layers= yourself.")
    n = model.num_layers
    if not 1 <= top <= n:
        raise ValueError(f"top must be between 1 and the model's {n} blocks, got {top}.")
    return {"target_modules": pair, "layers": list(range(n - top, n))}


def lora_classifier(seed: int = 0, r: int = 8, alpha: float | None = None, dropout: float = 0.0, layer_cls=None,
                    layer_kwargs: dict | None = None, name: str | None = None, top: int = 3, device=None) -> nn.Module:
    """The course's seeded starting point: a backbone with rank-``r`` adapters where ``adapter_targets`` puts them.

    ``config.seed_everything(seed)``, then ``load_backbone(name or config.backbone_name())``, then ``inject_lora``
    on the query/value projections of the top ``top`` blocks with α = ``alpha`` (default 2r, i.e. scaling 2),
    ``dropout`` on the adapter's input, and ``layer_cls``/``layer_kwargs`` for a stochastic adapter (LRVD,
    Bayesian-LoRA, ...). The same seed gives the same head and factors.
    """
    config.seed_everything(seed)
    model = load_backbone(name or config.backbone_name(), device=device)
    inject_lora(model, r=r, alpha=2 * r if alpha is None else alpha, dropout=dropout, layer_cls=layer_cls,
                layer_kwargs=layer_kwargs, **adapter_targets(model, top))
    return model


def load_backbone(name: str = "minilm", quantization: str | None = None, label_names=LABEL_NAMES,
                  max_length: int | None = None, device=None, dtype: torch.dtype | None = None) -> nn.Module:
    """A classifier ready for LoRA: ``model(**model.tokenize(texts))`` -> logits (N, C).

    ``name``: ``"minilm"`` (SentenceClassifier), ``"smollm2"`` (DecoderClassifier), or a hub id /
    local folder (a causal LM becomes a DecoderClassifier, anything else a SentenceClassifier).
    ``quantization``: None, ``"4bit"`` (NF4) or ``"8bit"`` via bitsandbytes; the head and pooler stay
    in full precision. The backbone's own weights are frozen; the head is trainable.
    ``device``: where the model lives (default ``config.device()``: the GPU when there is one).
    ``dtype``: the frozen backbone's dtype (default float32, whatever dtype the checkpoint was saved
    in: transformers would otherwise keep a bf16 checkpoint in bf16). The trainable tensors (head,
    LoRA factors) are float32 in every case.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be 'minilm', 'smollm2' or a hub id, got {name!r}.")
    quiet_transformers()
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    key = name.lower()
    if key == "minilm":
        source, decoder = str(assets.minilm_dir()), False
    elif key == "smollm2":
        source, decoder = str(smollm2_dir()), True
    else:
        cfg = _from_hub(AutoConfig.from_pretrained, name)
        source, decoder = name, bool(getattr(cfg, "is_decoder", False)) or any(
            a.endswith("ForCausalLM") for a in (cfg.architectures or []))
    skip = ["lm_head"] if decoder else ["pooler", "classifier"]
    device = torch.device(device) if device is not None else config.device()
    dtype = dtype or torch.float32
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch dtype such as torch.float32 or torch.bfloat16, got {dtype!r}.")
    kwargs = {"dtype": dtype, **_load_kwargs(quantization, skip, device)}
    tokenizer = _from_hub(AutoTokenizer.from_pretrained, source)
    if decoder:
        backbone = _from_hub(AutoModelForCausalLM.from_pretrained, source, **kwargs)
        model = DecoderClassifier(backbone, tokenizer, label_names, max_length=max_length or 128)
    else:
        backbone = _from_hub(AutoModel.from_pretrained, source, **kwargs)
        model = SentenceClassifier(backbone, tokenizer, label_names, max_length=max_length or 64)
    if quantization is not None:
        _prepare_quantized(model)
        # bitsandbytes placed the backbone (device_map); the float32 head and the label ids join it
        if hasattr(model, "head"):
            model.head.to(device)
        for name, buffer in model.named_buffers(recurse=False):
            setattr(model, name, buffer.to(device))
    else:
        model.to(device)
    backbone.requires_grad_(False)
    model.name = key if key in EMBEDDED else name
    model.quantization = quantization
    return model.eval()
