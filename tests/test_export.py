"""Export: the global model as a peft adapter (or merged model) reproduces the run's final
held-out logits; ``dpfedlora evaluate`` reproduces the summary's final metrics."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from dpfedlora.evaluate import predict_logits
from dpfedlora.export import export_run, load_exported
from dpfedlora.federation import Federation
from dpfedlora.methods import METHODS
from tests.helpers import tiny_cfg


def _quiet(_line: str) -> None:
    pass


def _finished(tmp_path, name):
    cfg = tiny_cfg(f"method.name={name}", "privacy.accountant=rdp", "train.local_steps=4")
    fed = Federation(cfg, tmp_path / "run", log=_quiet)
    summary = fed.run(progress=False)
    # the run's own final evaluation model: its global state in the run's (cached) model
    state = torch.load(tmp_path / "run" / "checkpoint" / "final_state.pt")
    fed.setup.trainer.load(fed.method.eval_view(state))
    fed.setup.trainer.set_scaling(fed.method.scaling(None))
    logits = predict_logits(fed.setup.model, fed.setup.eval_data)
    return cfg, fed, summary, logits


@pytest.mark.parametrize("name", sorted(METHODS))
def test_an_exported_run_reproduces_the_final_logits(tmp_path, name):
    cfg, fed, summary, want = _finished(tmp_path, name)
    info = export_run(tmp_path / "run", tmp_path / "export")
    model = load_exported(tmp_path / "export", cfg)
    if name == "full":
        assert info["kind"] == "merged_model"
        assert (tmp_path / "export" / "config.json").is_file()
    else:
        from peft import PeftModel

        assert info["kind"] == "peft_adapter" and isinstance(model, PeftModel)
        assert (tmp_path / "export" / "adapter_config.json").is_file()
    got = predict_logits(model, fed.setup.eval_data)
    # the adapter changed the model: the check is not passing on an untouched base
    from dpfedlora.models.builders import build_model

    plain = predict_logits(build_model(cfg.model, seed=cfg.seed).model, fed.setup.eval_data)
    assert float((want - plain).abs().max()) > 1e-4, name
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_exported_fedsb_is_a_plain_rank_r_lora_with_r_folded_in(tmp_path):
    _finished(tmp_path, "fedsb")
    export_run(tmp_path / "run", tmp_path / "export")
    conf = json.loads((tmp_path / "export" / "adapter_config.json").read_text())
    assert set(conf["rank_pattern"].values()) == {4} and conf["peft_type"] == "LORA"


def test_evaluate_verb_reproduces_the_summary(tmp_path):
    cfg, fed, summary, _ = _finished(tmp_path, "ffa")
    out = subprocess.run(
        [sys.executable, "-m", "dpfedlora", "evaluate", str(tmp_path / "run"), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    metrics = json.loads(out.stdout)
    for key, value in summary["final"].items():
        assert metrics[key] == pytest.approx(value, abs=1e-5), key


def test_export_refuses_an_unfinished_run(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "dpfedlora", "export", str(tmp_path), "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "holds no config.yaml" in out.stderr
