"""Tokenised examples as tensors, with the batching the trainer needs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["TensorData"]


@dataclass
class TensorData:
    """Tokenised examples. ``labels``: class ids (classification) or token ids with -100 where no
    loss is taken (causal LM). ``groups``: a per-example key for natural-user partitions."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    groups: np.ndarray | None = None
    classes: np.ndarray | None = field(default=None)  # class id per example, for partitions

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def subset(self, idx: np.ndarray | torch.Tensor | list[int]) -> TensorData:
        idx_t = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        idx_n = idx_t.numpy()
        return TensorData(
            self.input_ids[idx_t],
            self.attention_mask[idx_t],
            self.labels[idx_t],
            None if self.groups is None else self.groups[idx_n],
            None if self.classes is None else self.classes[idx_n],
        )

    def to(self, device: torch.device | str) -> TensorData:
        """The tensors on ``device`` (the data stays on the host; a batch moves per step)."""
        if self.input_ids.device == torch.device(device):
            return self
        return TensorData(
            self.input_ids.to(device, non_blocking=True),
            self.attention_mask.to(device, non_blocking=True),
            self.labels.to(device, non_blocking=True),
            self.groups,
            self.classes,
        )

    def trimmed(self) -> TensorData:
        """Drop padding columns beyond the longest sequence of this batch (right padding)."""
        if len(self) == 0:
            return self
        length = int(self.attention_mask.sum(1).max())
        labels = self.labels[:, :length] if self.labels.dim() == 2 else self.labels
        return TensorData(
            self.input_ids[:, :length], self.attention_mask[:, :length], labels, self.groups,
            self.classes,
        )  # fmt: skip

    def physical_batches(self, max_tokens: int) -> list[TensorData]:
        """Split into length-sorted chunks of at most ``max_tokens`` padded tokens (each chunk
        at least one example), each trimmed to its own longest sequence. 0: one chunk."""
        if max_tokens <= 0 or len(self) == 0:
            return [self.trimmed()]
        lengths = self.attention_mask.sum(1)
        order = torch.argsort(lengths, stable=True)
        chunks, start = [], 0
        for end in range(1, len(self) + 1):
            # ascending lengths: a chunk's padded size is its count times its last length
            if end == len(self) or (end - start + 1) * int(lengths[order[end]]) > max_tokens:
                chunks.append(self.subset(order[start:end]).trimmed())
                start = end
        return chunks

    @property
    def class_labels(self) -> np.ndarray:
        if self.classes is not None:
            return self.classes
        if self.labels.dim() == 1:
            return self.labels.numpy()
        return np.zeros(len(self), dtype=np.int64)
