"""``dpfedlora plan``: runs on the quickstart and a 1B-shaped config without building either
(the 1B numbers are the public checkpoint's parameter counts, gpu_path.md §3)."""

from __future__ import annotations

import json

import pytest

from dpfedlora.cli import main
from tests.helpers import ROOT


def _plan(capsys, *args) -> dict:
    assert main(["plan", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_1b_shape_counts_and_formula(capsys):
    plan = _plan(capsys, ROOT / "configs" / "llama_1b_shape.yaml", "--free-memory", "141",
                 "--set", "method.name=fedit")  # fmt: skip
    # 1,235,814,400 base parameters + LoRA r16 on 7 targets 11,272,192 (both from the shapes)
    assert plan["parameters"] == 1_235_814_400 + 11_272_192
    assert plan["trainable"] == 11_272_192
    assert plan["weights_bytes"] == pytest.approx(1_235_814_400 * 2, rel=1e-9)  # bfloat16
    assert plan["logit_bytes_per_token"] == 14 * 128256
    assert plan["hooks_grad_sample_bytes"] == plan["physical_batch"] * 11_272_192 * 4
    assert plan["grad_sample_mode"] == "hooks" and plan["peak_hooks_bytes"] < 141e9


def test_plan_quickstart_and_text_output(capsys):
    plan = _plan(capsys, ROOT / "configs" / "quickstart.yaml")
    assert plan["trainable"] > 0 and plan["grad_sample_mode"] in ("hooks", "ghost")
    assert main(["plan", str(ROOT / "configs" / "quickstart.yaml")]) == 0
    text = capsys.readouterr().out
    assert "predicted peak" in text and "grad-sample mode" in text


def test_plan_ghost_when_hooks_do_not_fit(capsys):
    """With free memory between the two predicted peaks (hooks' per-sample gradients are the
    larger here), auto picks ghost; with more, hooks."""
    args = [ROOT / "configs" / "llama_1b_shape.yaml", "--set", "method.name=fedit",
            "--set", "train.physical_batch_tokens=4096"]  # fmt: skip
    roomy = _plan(capsys, *args, "--free-memory", "141")
    hooks, ghost = roomy["peak_hooks_bytes"], roomy["peak_ghost_bytes"]
    assert roomy["grad_sample_mode"] == "hooks" and hooks > ghost
    between = (hooks + ghost) / 2 / 0.8 / 1e9  # 80 % of it lies between the two peaks
    tight = _plan(capsys, *args, "--free-memory", f"{between:.4f}")
    assert tight["grad_sample_mode"] == "ghost"


def test_plan_counts_only_the_layers_a_step_runs_and_the_label_words_logits(capsys):
    """Below a frozen-prefix cache no layer keeps activations; the label-word loss with a label
    head computes only the label words' logits. (SmolLM2's config was planned at 34.7 GB and
    peaked at 3.3 GB of RSS.)"""
    args = [ROOT / "configs" / "tiny.yaml", "--set", "model.name=builtin:tiny-llama",
            "--set", "model.task=causal_lm", "--set", "model.train_head=false",
            "--set", "model.layers=[1]", "--set", "method.name=fedit"]  # fmt: skip
    whole = _plan(capsys, *args, "--set", "model.cache_frozen_prefix=false")
    cached = _plan(capsys, *args)
    assert cached["activation_bytes_per_token"] < whole["activation_bytes_per_token"]
    # tiny-llama has 2 layers and the adapters sit on layer 1: one layer's activations remain
    lora = 4 * 4 * 2  # 4 r bytes per adapted Linear (q and v), float32 base: no input copies
    per_layer = (whole["activation_bytes_per_token"] - lora) / 2
    assert cached["activation_bytes_per_token"] == pytest.approx(per_layer + lora, abs=1)
    assert whole["logit_bytes_per_token"] == 14 * 128  # the tiny vocabulary
    head = _plan(capsys, *args, "--set", "model.label_head=true", "--set", "model.train_head=true",
                 "--set", "data.label_names=[ham, spam]",
                 "--set", "train.causal_lm_loss=label_words")  # fmt: skip
    assert head["logit_bytes_per_token"] == 14 * 2
