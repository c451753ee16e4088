"""dpfedlora: differentially private federated fine-tuning with LoRA-family adapters.

The package is imported lazily: ``import dpfedlora`` does not import torch, so the accounting
verbs of the CLI start in well under a second. Training names load on first use.
"""

from __future__ import annotations

from .lazy import lazy_attributes

__version__ = "0.1.0"

# public name -> module that defines it (loaded on first attribute access, PEP 562)
_LAZY: dict[str, str] = {
    "run": "dpfedlora.federation.server",
    "Federation": "dpfedlora.federation.server",
    "build_setup": "dpfedlora.federation.setup",
    "load_config": "dpfedlora.config.load",
    "Experiment": "dpfedlora.config.schema",
    "Broadcast": "dpfedlora.wire",
    "Reply": "dpfedlora.wire",
    "METHODS": "dpfedlora.methods",
    "register_method": "dpfedlora.methods",
    "make_method": "dpfedlora.methods",
    "TASKS": "dpfedlora.tasks",
}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_attributes("dpfedlora", _LAZY)
