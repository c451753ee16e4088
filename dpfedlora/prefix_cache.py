"""Cache the frozen bottom of an encoder when adapters sit only on its top layers.

If no layer below index k has a tensor that can train, the hidden states entering layer k are a
fixed function of each example's tokens. We compute them once per distinct input, keep them
(without padding), and replace the embeddings by a lookup and layers 0..k-1 by pass-throughs.
Layer k and above, the adapters and the head run as before, so per-sample gradients, clipping
and noise are unchanged (a test checks that logits and gradients match the uncached model);
only repeated frozen computation disappears. The cache holds no trainable state and is never
released, so it has no privacy cost.

Supported: BERT-family encoders (``.embeddings`` + ``.encoder.layer``) with right padding.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["install_prefix_cache", "CachedPrefix"]


class _PassThrough(nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class CachedPrefix(nn.Module):
    """Stands in for ``embeddings``: returns cached outputs of embeddings + layers[:k]."""

    def __init__(self, config, embeddings: nn.Module, prefix: nn.ModuleList, pad_id: int) -> None:
        super().__init__()
        self.config = config
        self.embeddings = embeddings
        self.prefix = prefix
        self.pad_id = pad_id
        self.cache: dict[bytes, torch.Tensor] = {}
        self.hits = self.misses = 0

    @torch.no_grad()
    def _compute(self, rows: list[torch.Tensor]) -> list[torch.Tensor]:
        from transformers.masking_utils import create_bidirectional_mask

        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = r, 1
        hidden = self.embeddings(input_ids=ids)
        attn = create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden, attention_mask=mask
        )
        for layer in self.prefix:
            hidden = layer(hidden, attn)
        return [hidden[i, : len(r)].clone() for i, r in enumerate(rows)]

    def forward(self, input_ids=None, **kwargs) -> torch.Tensor:
        lengths = (input_ids != self.pad_id).sum(1)
        rows = [input_ids[i, : int(n)] for i, n in enumerate(lengths)]
        keys = [r.numpy().tobytes() for r in rows]
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        if missing:
            for i, h in zip(missing, self._compute([rows[i] for i in missing])):
                self.cache[keys[i]] = h
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        out = torch.zeros(
            (*input_ids.shape, self.config.hidden_size), dtype=self.cache[keys[0]].dtype
        )
        for i, k in enumerate(keys):
            h = self.cache[k]
            out[i, : h.shape[0]] = h
        return out


def install_prefix_cache(model: nn.Module, trainable: set[str], pad_id: int) -> int:
    """Install the cache below the lowest layer that can train. Returns k (0: not installed)."""
    for name, module in model.named_modules():
        encoder = getattr(module, "encoder", None)
        if not (hasattr(module, "embeddings") and hasattr(encoder, "layer")):
            continue
        layers = encoder.layer
        prefix_names = {f"{name}.embeddings." if name else "embeddings."}
        k = 0
        for i in range(len(layers)):
            tag = f"{name}.encoder.layer.{i}." if name else f"encoder.layer.{i}."
            if any(t.startswith(tag) for t in trainable):
                break
            prefix_names.add(tag)
            k = i + 1
        if k == 0 or any(t.startswith(p) for t in trainable for p in prefix_names):
            return 0
        prefix = nn.ModuleList([layers[i] for i in range(k)])
        module.embeddings = CachedPrefix(module.config, module.embeddings, prefix, pad_id)
        for i in range(k):
            layers[i] = _PassThrough()
        return k
    return 0
