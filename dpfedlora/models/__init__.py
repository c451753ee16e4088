"""Models: builders (:mod:`.builders`), adapters (:mod:`.adapters`, peft), the frozen-prefix
cache (:mod:`.prefix_cache`) and built-in pretrained weights (:mod:`.smollm2`).

Names load on first use (PEP 562), so importing one submodule never imports the others.
"""

from __future__ import annotations

from ..lazy import lazy_attributes

_LAZY = {
    "BuiltModel": "dpfedlora.models.builders",
    "build_model": "dpfedlora.models.builders",
    "register_model": "dpfedlora.models.builders",
    "MODEL_BUILDERS": "dpfedlora.models.builders",
    "Layer": "dpfedlora.models.adapters",
    "inject_lora": "dpfedlora.models.adapters",
}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_attributes("dpfedlora.models", _LAZY)
