"""Quantised bases: a clear error without bitsandbytes; with it (CPU works for 4-bit, per the
reference), per-sample gradients of the LoRA factors equal a per-example loop exactly."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from dpfedlora.config import ConfigError
from dpfedlora.tasks import TASKS
from tests.helpers import tiny_cfg, tiny_setup

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
QLORA = ("model.name=builtin:tiny-llama", "model.task=causal_lm", "model.train_head=false",
         "model.dtype=bfloat16", "model.quantization=4bit", "method.name=fedit")  # fmt: skip


def test_quantization_needs_a_low_precision_dtype():
    with pytest.raises(ConfigError, match="model.dtype"):
        tiny_cfg("model.quantization=4bit")


@pytest.mark.skipif(HAS_BNB, reason="bitsandbytes is installed")
def test_quantization_without_bitsandbytes_names_the_fix():
    with pytest.raises(ConfigError, match=r"bitsandbytes.*dpfedlora\[gpu\]"):
        tiny_setup(*QLORA)


@pytest.mark.skipif(not HAS_BNB, reason="needs bitsandbytes (pip install 'dpfedlora[gpu]')")
def test_qlora_per_sample_grads_equal_a_per_example_loop():
    from opacus import GradSampleModule

    setup = tiny_setup(*QLORA)
    names = [n for n in setup.method.trainable_names(1) if "lora_" in n]
    params = dict(setup.model.named_parameters())
    with torch.no_grad():
        for n in names:
            if "lora_B" in n:
                params[n].normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    for n, p in params.items():
        p.requires_grad_(n in names)
    batch = setup.clients[0].data.subset(torch.arange(4))
    loss = TASKS["causal_lm"].loss
    gsm = GradSampleModule(setup.model, batch_first=True, loss_reduction="sum")
    loss(gsm, batch).sum().backward()
    gs = {n: params[n].grad_sample.clone() for n in names}
    gsm.remove_hooks()
    for i in range(len(batch)):
        for n in names:
            params[n].grad = None
        loss(setup.model, batch.subset([i])).sum().backward()
        for n in names:
            torch.testing.assert_close(gs[n][i], params[n].grad, atol=1e-6, rtol=1e-5)
