import pytest
import torch

from minibayeslora import quantization
from minibayeslora.backbones import load_backbone


@pytest.fixture(scope="module", params=["4bit", "8bit"])
def quantized(request):
    return request.param, load_backbone("minilm", quantization=request.param)


def test_dequantized_weights_match_a_plain_torch_reference(quantized, minilm):
    """bitsandbytes' stored weights equal our independent NF4 / int8 round trip of the fp32 weights."""
    kind, model = quantized
    reference = dict(minilm.named_modules())
    round_trip = quantization.nf4_round_trip if kind == "4bit" else quantization.int8_round_trip
    checked = 0
    for name, module in model.named_modules():
        if quantization.quantized_kind(module) is None:
            continue
        w = reference[name].weight
        # Linear8bitLt quantizes the fp16 copy of the weight, so the reference starts from it too
        ours = round_trip(w) if kind == "4bit" else round_trip(w.half().float())
        bnb = quantization.dequantized_weight(module)
        assert bnb.shape == w.shape
        # ties between levels and bf16/fp16 scale storage allow a few rare off-by-one codes
        close = torch.isclose(bnb, ours, atol=1e-4, rtol=1e-2).float().mean()
        assert close > 0.995, f"{name}: only {close:.3%} of values match the reference"
        checked += 1
    assert checked == 36


def test_weight_errors_are_small_and_ordered(quantized, minilm):
    kind, model = quantized
    errors = quantization.weight_errors(minilm, model)
    assert len(errors) == 36
    mean = sum(errors.values()) / len(errors)
    # NF4 keeps ~4 bits: about 10 % relative error; int8 about 1 %
    assert (0.03 < mean < 0.2) if kind == "4bit" else (1e-3 < mean < 0.03), mean


def test_errors_need_a_quantized_model(minilm):
    with pytest.raises(ValueError, match="no bitsandbytes layer"):
        quantization.weight_errors(minilm, minilm)
    assert torch.equal(quantization.dequantized_weight(minilm.layers[0].attention.self.query),
                       minilm.layers[0].attention.self.query.weight)
