"""Target-module detection per architecture (tiny configs) and B·A orientation vs peft."""

from __future__ import annotations

import pytest
import torch

from dpfedlora.config import ConfigError
from dpfedlora.methods.aggregation import delta_weight
from dpfedlora.models.adapters import inject_lora
from dpfedlora.models.builders import BuiltModel, detect_targets

SMALL = dict(vocab_size=64, hidden_size=16, num_attention_heads=2, intermediate_size=32)


def _tiny(kind):
    import transformers as t

    if kind == "bert":
        return t.BertForSequenceClassification(t.BertConfig(num_hidden_layers=2, **SMALL))
    if kind == "roberta":
        return t.RobertaForSequenceClassification(t.RobertaConfig(num_hidden_layers=2, **SMALL))
    if kind == "llama":
        return t.LlamaForCausalLM(
            t.LlamaConfig(num_hidden_layers=2, num_key_value_heads=2, **SMALL)
        )
    if kind == "mistral":
        return t.MistralForCausalLM(
            t.MistralConfig(num_hidden_layers=2, num_key_value_heads=1, **SMALL)
        )
    if kind == "gpt2":
        return t.GPT2LMHeadModel(t.GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2))
    raise ValueError(kind)


@pytest.mark.parametrize(
    "kind, targets, fifo",
    [
        ("bert", ("query", "value"), False),
        ("roberta", ("query", "value"), False),
        ("llama", ("q_proj", "v_proj"), False),
        ("mistral", ("q_proj", "v_proj"), False),
        ("gpt2", ("c_attn",), True),
    ],
)
def test_detection_and_orientation(kind, targets, fifo):
    model = _tiny(kind)
    assert model.config.model_type == kind
    got, got_fifo = detect_targets(kind, ())
    assert got == targets and got_fifo is fifo
    built = BuiltModel(model, kind, got, got_fifo, None, 0)
    peft_model, layers, _ = inject_lora(
        built, rank=2, alpha=4.0, rslora=False, seed=0, train_head=False
    )
    assert len(layers) == 2 * len(targets)
    params = dict(peft_model.named_parameters())
    for layer in layers:
        module = peft_model.get_submodule(layer.name)
        with torch.no_grad():
            params[layer.b].normal_(generator=torch.Generator().manual_seed(1))
        ours = delta_weight(
            params[layer.b], params[layer.a], 2.0, fan_in_fan_out=layer.fan_in_fan_out
        )
        theirs = module.get_delta_weight("default")
        assert ours.shape == params[layer.base].shape  # in the base weight's own layout
        torch.testing.assert_close(ours, theirs)


def test_unknown_architecture_needs_explicit_targets():
    with pytest.raises(ConfigError, match="Set `model.target_modules`"):
        detect_targets("t5", ())
    assert detect_targets("t5", ("q", "v")) == (("q", "v"), False)


def test_rslora_scaling():
    from dpfedlora.methods.aggregation import lora_scaling

    assert lora_scaling(16, 4, False) == 4.0
    assert lora_scaling(16, 4, True) == 8.0


def test_dropout_override_reaches_every_dropout():
    import pytest
    from torch import nn

    from dpfedlora.config import ConfigError, ModelConfig
    from dpfedlora.models.builders import build_model, set_dropout

    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1), nn.Sequential(nn.Dropout(0.3)))
    assert set_dropout(model, 0.0) == 2
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, nn.Dropout))
    built = build_model(ModelConfig(name="builtin:tiny-bert", dropout=0.25), seed=0)
    ps = [m.p for m in built.model.modules() if isinstance(m, nn.Dropout)]
    assert ps and all(p == 0.25 for p in ps)
    with pytest.raises(ConfigError, match="model.dropout"):
        ModelConfig(dropout=1.0)
