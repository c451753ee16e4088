"""Data: tensors and batching (:mod:`.tensors`), sources (:mod:`.sources`), the held-out split
(:mod:`.split`), partitions across clients (:mod:`.partition`) and the loader (:mod:`.load`).

Names load on first use (PEP 562), so importing one submodule never imports the others.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "TensorData": "dpfedlora.data.tensors",
    "load_data": "dpfedlora.data.load",
    "stratified_split": "dpfedlora.data.split",
    "partition": "dpfedlora.data.partition",
    "label_histogram": "dpfedlora.data.partition",
    "DATA_SOURCES": "dpfedlora.data.sources",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'dpfedlora.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
