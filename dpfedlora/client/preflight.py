"""Checks before (and right after the first step of) DP training, with errors that say the fix.

The traps (dp_stack.md): eval mode (Opacus rejects it), non-reentrant gradient checkpointing
(per-sample gradients never initialised), trainable tensors in modules Opacus has no sampler
for (ParameterDict adapters such as VeRA, AdaLoRA, LoHa, IA3, DoRA) or with buffers, and the
silent no-update bug (opacus#820: LoRA weights never move when the model was not on its device
before get_peft_model).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError

__all__ = ["PreflightError", "check_model", "check_moved"]


class PreflightError(UserError, RuntimeError):
    """The model cannot be trained with DP-SGD as configured."""


def _owner(model: nn.Module, param_name: str) -> tuple[str, nn.Module]:
    module_name = param_name.rsplit(".", 1)[0] if "." in param_name else ""
    return module_name, model.get_submodule(module_name)


def check_model(model: nn.Module, trainable: list[str]) -> None:
    from opacus.grad_sample import GradSampleModule

    if not model.training:
        raise PreflightError("the model is in eval mode; call model.train() before DP training.")
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    if checkpointing is None:  # transformers < 5 naming
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    if checkpointing:
        # transformers stores the checkpoint function as functools.partial(checkpoint, **kwargs)
        # on each checkpointed module; a missing use_reentrant counts as non-reentrant.
        reentrant = [
            getattr(m._gradient_checkpointing_func, "keywords", {}).get("use_reentrant", False)
            for m in model.modules()
            if hasattr(m, "_gradient_checkpointing_func")
        ]
        if not reentrant or not all(reentrant):
            raise PreflightError(
                "gradient checkpointing with use_reentrant=False breaks Opacus's per-sample "
                "gradients. Use gradient_checkpointing_enable(gradient_checkpointing_kwargs="
                "{'use_reentrant': True}) or turn checkpointing off."
            )
    devices = {p.device for p in model.parameters()}
    if len(devices) > 1:
        raise PreflightError(
            f"model parameters are on several devices {sorted(map(str, devices))}; move the "
            "model to one device before adding adapters (opacus#820)."
        )
    supported = GradSampleModule.GRAD_SAMPLERS
    params = dict(model.named_parameters())
    for name in trainable:
        module_name, module = _owner(model, name)
        if name in params and params[name].dtype != torch.float32:
            raise PreflightError(
                f"trainable tensor {name!r} is {params[name].dtype}: per-sample gradients, "
                "clipping and noise must be float32 (a low-precision norm can exceed the clip "
                "norm). Keep trained modules float32 (models.precision.float32_trainables)."
            )
        if type(module) not in supported:
            raise PreflightError(
                f"trainable tensor {name!r} belongs to {type(module).__name__} ({module_name!r}), "
                "which has no Opacus per-sample gradient sampler. Adapters must be built from "
                "nn.Linear / nn.Embedding (PEFT's VeRA, AdaLoRA, LoHa, IA3 and DoRA are not "
                "supported under DP)."
            )
        if list(module.buffers(recurse=False)):
            raise PreflightError(
                f"module {module_name!r} ({type(module).__name__}) holds buffers and a trainable "
                "tensor; Opacus rejects that. Keep fixed matrices as frozen parameters."
            )


def check_moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> None:
    """After the first DP step some trainable weight must have changed."""
    moved = any(not torch.equal(before[n], after[n]) for n in before)
    if not moved:
        raise PreflightError(
            "no trainable weight changed after the first DP step (the silent no-update bug, "
            "opacus#820): move the model to its device before adding adapters, and check that "
            "the optimizer holds the adapter parameters."
        )
