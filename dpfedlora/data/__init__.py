"""Data: tensors and batching (:mod:`.tensors`), sources (:mod:`.sources`), the held-out split
(:mod:`.split`), partitions across clients (:mod:`.partition`) and the loader (:mod:`.load`).

Names load on first use (PEP 562), so importing one submodule never imports the others.
"""

from __future__ import annotations

from ..lazy import lazy_attributes

_LAZY = {
    "TensorData": "dpfedlora.data.tensors",
    "load_data": "dpfedlora.data.load",
    "stratified_split": "dpfedlora.data.split",
    "partition": "dpfedlora.data.partition",
    "label_histogram": "dpfedlora.data.partition",
    "DATA_SOURCES": "dpfedlora.data.sources",
}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_attributes("dpfedlora.data", _LAZY)
