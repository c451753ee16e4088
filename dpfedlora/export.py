"""Exporting a finished run's global model, and scoring it.

``export_run(RUN_DIR, OUT)`` writes the global adapter as a peft adapter folder
(``adapter_config.json`` + ``adapter_model.safetensors``) that
``PeftModel.from_pretrained(base, OUT)`` loads onto the run's base model, giving the logits of
the run's final evaluation:

* FedIT, FFA-LoRA, RoLoRA: the global A and B as they are;
* Fed-SB: R folded into B (s · B R A = s · (B R) A), a plain rank-r LoRA;
* FlexLoRA, FedEx-LoRA: the full-size global update (FedEx: the residual folded into W0 plus the
  adapter product) as exact factors at its numerical rank, per layer (peft's ``rank_pattern``);
* direct weight averaging: the merged model (``save_pretrained``), loaded with
  ``AutoModel*.from_pretrained(OUT)``.

The trained head (``model.train_head``) travels as peft's ``modules_to_save``. Built-in tiny
models have random weights from the run's seed: rebuild their base with
``dpfedlora.models.builders.build_model(cfg.model, seed=cfg.seed)`` (``export.json`` says so).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Experiment, load_config
from .errors import UserError
from .methods import Method, make_method
from .methods.base import ExportedLoRA
from .models.adapters import quiet_peft
from .models.builders import BuiltModel, build_model
from .models.label_head import with_label_head

__all__ = ["ExportError", "load_run", "export_run", "load_exported"]

PEFT_PREFIX = "base_model.model."


class ExportError(UserError, RuntimeError):
    """The run cannot be exported as asked."""


@dataclass
class FinishedRun:
    cfg: Experiment
    method: Method
    model: nn.Module  # the method's model (adapters injected) holding the global state
    built: BuiltModel
    view: dict[str, torch.Tensor]  # the global model's tensors (the method's eval view)


def load_run(run_dir: str | Path) -> FinishedRun:
    """The run's config and final global state, loaded into a freshly built model."""
    run_dir = Path(run_dir)
    final = run_dir / "checkpoint" / "final_state.pt"
    if not (run_dir / "config.yaml").is_file() or not final.is_file():
        raise ExportError(
            f"{run_dir} holds no finished run (config.yaml and checkpoint/final_state.pt). "
            "Run `dpfedlora run` to the end first, or pass the run's directory."
        )
    cfg = load_config(run_dir / "config.yaml")
    method = make_method(cfg.method, seed=cfg.seed)
    built = with_label_head(cfg, build_model(cfg.model, seed=cfg.seed))
    with quiet_peft():
        model = method.setup(built, train_head=cfg.model.train_head)
    method.init_state()  # methods keep W0 from here (FedEx, FlexLoRA, full)
    view = method.eval_view(torch.load(final, weights_only=True))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in view.items():
            if name in params:
                params[name].copy_(value)
    for layer in method.layers:
        module = model.get_submodule(layer.name)
        if hasattr(module, "scaling"):
            module.scaling["default"] = method.scaling(None)
    return FinishedRun(cfg, method, model, built, view)


def _lora_config(run: FinishedRun, lora: dict[str, ExportedLoRA]):
    from peft import LoraConfig

    names = {n: n.removeprefix(PEFT_PREFIX) for n in lora}
    ranks = {names[n]: int(f.a.shape[0]) for n, f in lora.items()}
    head = run.built.head if (run.cfg.model.train_head and run.built.head) else None
    return LoraConfig(
        r=max(ranks.values()),
        lora_alpha=1.0,
        # exact module names: alpha / r = the layer's scaling, whatever its rank
        target_modules=sorted(ranks),
        rank_pattern=ranks,
        alpha_pattern={names[n]: f.scaling * int(f.a.shape[0]) for n, f in lora.items()},
        fan_in_fan_out=run.built.fan_in_fan_out,
        lora_dropout=0.0,
        bias="none",
        modules_to_save=[head] if head else None,
    )


def _write_adapter(run: FinishedRun, lora: dict[str, ExportedLoRA], out: Path) -> None:
    from peft import get_peft_model

    # a label-word head is a module of the base's LM head: the adapter names it
    base = with_label_head(run.cfg, build_model(run.cfg.model, seed=run.cfg.seed))
    with quiet_peft():
        peft_model = get_peft_model(base.model, _lora_config(run, lora))
    params = dict(peft_model.named_parameters())
    with torch.no_grad():
        for name, f in lora.items():
            params[f"{name}.lora_A.default.weight"].copy_(f.a)
            params[f"{name}.lora_B.default.weight"].copy_(f.b)
        for name in run.method.head:  # the trained head, as modules_to_save
            params[name].copy_(run.view[name])
    peft_model.save_pretrained(out)


def export_run(run_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """Write the run's global model to ``out``; returns what ``export.json`` records."""
    run, out = load_run(run_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lora = run.method.export(run.view)
    if lora is not None:
        _write_adapter(run, lora, out)
        kind = "peft_adapter"
    else:
        if not hasattr(run.model, "save_pretrained"):
            raise ExportError(
                f"`model.pooling` = {run.cfg.model.pooling!r}: this model is not a transformers "
                "model, so a full-weight run cannot be saved as one. Export a LoRA-family run."
            )
        run.model.save_pretrained(out)
        kind = "merged_model"
    if run.built.tokenizer is not None:
        run.built.tokenizer.save_pretrained(out)
    info = {
        "kind": kind,
        "method": run.cfg.method.name,
        "base_model": run.cfg.model.name,
        "task": run.cfg.model.task,
        "seed": run.cfg.seed,
        "rebuild_base": "dpfedlora.models.builders.build_model(load_config("
        f"'{Path(run_dir) / 'config.yaml'}').model, seed={run.cfg.seed})",
    }
    if run.cfg.model.label_head:
        info["label_head"] = (
            "wrap the base's LM head first: dpfedlora.models.label_head.with_label_head(cfg, built)"
        )
    (out / "export.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def load_exported(out: str | Path, cfg: Experiment) -> nn.Module:
    """The exported model, loaded as a user would: ``PeftModel.from_pretrained`` on the base,
    or the merged model's own ``from_pretrained``."""
    out = Path(out)
    info = json.loads((out / "export.json").read_text())
    base = with_label_head(cfg, build_model(cfg.model, seed=cfg.seed)).model
    if info["kind"] == "peft_adapter":
        from peft import PeftModel

        with quiet_peft():
            return PeftModel.from_pretrained(base, str(out))
    return type(base).from_pretrained(str(out))
