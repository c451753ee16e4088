"""Cache the frozen bottom of an encoder when adapters sit only on its top layers.

If no layer below index k has a tensor that can train, the hidden states entering layer k are a
fixed function of each example's tokens. We compute them once per distinct input, keep them
(without padding), and replace the embeddings by a lookup and layers 0..k-1 by pass-throughs.
Layer k and above, the adapters and the head run as before, so per-sample gradients, clipping
and noise are unchanged (a test checks that logits and gradients match the uncached model);
only repeated frozen computation disappears. The cache holds no trainable state and is never
released, so it has no privacy cost.

The prefix always runs as in eval mode (its dropout off): cached features must be a fixed
function of the tokens. With ``model.dropout: 0`` this is exactly the uncached model.

:meth:`CachedPrefix.precompute` fills the cache up front, batching rows of equal length (no
padding at all). In a decoder, the leading tokens every row shares (a chat template and an
instruction) run once; each row's own tokens then attend to their keys and values. If
``DPFEDLORA_PREFIX_CACHE_DIR`` is set, the features are also kept there in one file per
(prefix weights, set of inputs), so the cells of a sweep compute them once. The file holds
features of private records: keep that directory with the runs (the sweep puts it inside its
output directory), not in a shared place.

Supported, with right padding: BERT-family encoders (``.embeddings`` + ``.encoder.layer``) and
Llama-family decoders (``.embed_tokens`` + ``.layers`` + ``.rotary_emb``). In a decoder a real
token attends only to earlier tokens, so its features below layer k do not depend on the padding
after it; padded positions get zeros, which no real position attends to and no loss reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = ["install_prefix_cache", "CachedPrefix", "STORE_ENV", "cached_layers"]

STORE_ENV = "DPFEDLORA_PREFIX_CACHE_DIR"


# fewer shared leading tokens than this are not worth a second code path
MIN_SHARED = 8


@dataclass(frozen=True)
class _Shared:
    length: int  # the leading tokens every row has
    ids: torch.Tensor  # [length]: those tokens
    hidden: torch.Tensor  # [1, length, hidden]: their features
    keys_values: list[tuple[torch.Tensor, torch.Tensor]]  # per prefix layer, [1, heads, length, d]


class _PassThrough(nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class CachedPrefix(nn.Module):
    """Stands in for ``embeddings``: returns cached outputs of embeddings + layers[:k]."""

    def __init__(
        self,
        config,
        embeddings: nn.Module,
        prefix: nn.ModuleList,
        pad_id: int,
        rotary: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.embeddings = embeddings
        self.prefix = prefix
        self.pad_id = pad_id
        # decoders: the rotary embedding stays its model's module (held, not registered, so
        # it appears once in the module tree)
        self._rotary = (rotary,) if rotary is not None else ()
        self.cache: dict[bytes, torch.Tensor] = {}
        self.hits = self.misses = 0

    def _run(self, ids: torch.Tensor, mask: torch.Tensor, cache=None) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

        if not self._rotary:  # encoder
            hidden = self.embeddings(input_ids=ids)
            attn = create_bidirectional_mask(
                config=self.config, inputs_embeds=hidden, attention_mask=mask
            )
            for layer in self.prefix:
                hidden = layer(hidden, attn)
            return hidden
        hidden = self.embeddings(ids)  # decoder: as its model's forward runs the bottom layers
        pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        attn = create_causal_mask(
            config=self.config, inputs_embeds=hidden, attention_mask=mask, cache=cache,
            position_ids=pos,
        )  # fmt: skip
        rope = self._rotary[0](hidden, position_ids=pos)
        for layer in self.prefix:
            hidden = layer(
                hidden, attention_mask=attn, position_embeddings=rope, position_ids=pos,
                cache=cache, use_cache=cache is not None,
            )  # fmt: skip
        return hidden

    def _shared_run(self, shared: _Shared, ids: torch.Tensor) -> torch.Tensor:
        """Decoder rows that all start with ``shared``'s tokens, without padding: only their
        own tokens run, attending to the shared tokens' keys and values."""
        from transformers.cache_utils import DynamicCache
        from transformers.masking_utils import create_causal_mask

        n, p = ids.shape[0], shared.length
        suffix = ids[:, p:]
        cache = DynamicCache(config=self.config)
        for layer, (k, v) in zip(self.prefix, shared.keys_values):
            expand = (n, *k.shape[1:])
            cache.update(
                k.expand(expand), v.expand(*expand[:-1], v.shape[-1]), layer.self_attn.layer_idx
            )
        hidden = self.embeddings(suffix)
        pos = torch.arange(p, ids.shape[1], device=ids.device).unsqueeze(0)
        attn = create_causal_mask(
            config=self.config, inputs_embeds=hidden, attention_mask=torch.ones_like(ids),
            cache=cache, position_ids=pos,
        )  # fmt: skip
        rope = self._rotary[0](hidden, position_ids=pos)
        for layer in self.prefix:
            hidden = layer(
                hidden, attention_mask=attn, position_embeddings=rope, position_ids=pos,
                cache=cache, use_cache=True,
            )  # fmt: skip
        return torch.cat([shared.hidden.expand(n, -1, -1), hidden], dim=1)

    @torch.no_grad()
    def _shared_prefix(self, rows: list[torch.Tensor]) -> _Shared | None:
        """The tokens every row starts with (a chat template and an instruction), run once:
        their features and each layer's keys and values. None for encoders (every token sees
        the whole row) or when the rows share fewer than ``MIN_SHARED`` tokens."""
        if not self._rotary or not rows:
            return None
        if not all(isinstance(getattr(getattr(m, "self_attn", None), "layer_idx", None), int)
                   for m in self.prefix):  # fmt: skip
            return None  # not a layout whose attention reads a key/value cache by layer index
        first = rows[0]
        length = min(len(r) for r in rows) - 1  # every row keeps a token of its own
        for r in rows[1:]:
            differ = (r[:length] != first[:length]).nonzero()
            length = int(differ[0]) if len(differ) else length
            if length < MIN_SHARED:
                return None
        from transformers.cache_utils import DynamicCache

        device = next(self.embeddings.parameters()).device
        ids = first[:length].unsqueeze(0).to(device)
        cache = DynamicCache(config=self.config)
        with self._eval_mode():
            hidden = self._run(ids, torch.ones_like(ids), cache=cache)
        kv = [
            (cache.layers[m.self_attn.layer_idx].keys, cache.layers[m.self_attn.layer_idx].values)
            for m in self.prefix
        ]
        return _Shared(length, first[:length].clone(), hidden, kv)

    @contextlib.contextmanager
    def _eval_mode(self):
        modules = (self.embeddings, *self.prefix)
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
        try:
            yield
        finally:
            for m, mode in zip(modules, modes):
                m.train(mode)

    @torch.no_grad()
    def _compute(
        self, rows: list[torch.Tensor], shared: _Shared | None = None
    ) -> list[torch.Tensor]:
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = r, 1
        device = next(self.embeddings.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        shares = shared is not None and all(
            len(r) == length and torch.equal(r[: shared.length], shared.ids) for r in rows
        )
        with self._eval_mode():
            if shares:
                hidden = self._shared_run(shared, ids)
            else:
                hidden = self._run(ids, mask)
        # the cache lives on the host (it can hold every example's features); rows move to
        # the model's device per batch
        hidden = hidden.cpu()
        return [hidden[i, : len(r)].clone() for i, r in enumerate(rows)]

    def _lengths(self, ids: torch.Tensor) -> torch.Tensor:
        """Up to the last non-pad token: with right padding, and also where the pad id occurs
        inside a sequence (chat models that pad with their end-of-turn token). A trailing real
        token equal to the pad id counts as padding; in a decoder nothing real attends to it."""
        positions = torch.arange(1, ids.shape[1] + 1)
        return ((ids != self.pad_id) * positions).max(1).values

    def _fingerprint(self, keys: list[bytes]) -> str:
        h = hashlib.sha256(f"{self.pad_id}|{len(self.prefix)}|{torch.__version__}".encode())
        for module in (self.embeddings, self.prefix):
            for name, t in module.state_dict().items():
                h.update(name.encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
        for k in keys:
            h.update(len(k).to_bytes(4, "little"))
            h.update(k)
        return h.hexdigest()[:32]

    def precompute(self, inputs: Iterable[torch.Tensor], batch_size: int = 64) -> int:
        """Cache the features of every row of the given ``input_ids`` tensors; returns how many
        were computed here (the rest came from memory or the on-disk store)."""
        rows: dict[bytes, torch.Tensor] = {}
        for ids in inputs:
            for i, n in enumerate(self._lengths(ids).tolist()):
                r = ids[i, :n]
                rows.setdefault(r.numpy().tobytes(), r)
        # Canonical order (length, then tokens): the batches, and so the floats, depend only on
        # the set of inputs, whether this process computes them or loads them from the store.
        keys = sorted(rows, key=lambda k: (len(k), k))
        store = os.environ.get(STORE_ENV)
        path = Path(store) / f"prefix-{self._fingerprint(keys)}.pt" if store else None
        if path is not None and path.exists():
            saved = torch.load(path, weights_only=True)
            for k, h in zip(keys, torch.split(saved["hidden"], saved["lengths"].tolist())):
                self.cache.setdefault(k, h)
            return 0
        todo = [k for k in keys if k not in self.cache]
        # A prompt format puts the same tokens first in every row (SmolLM2's chat template
        # and the instruction: 43 of ~75): computed once, not once per row.
        shared = self._shared_prefix([rows[k] for k in todo])
        from tqdm.auto import tqdm

        # minutes for a real model on a CPU: a bar on a terminal (none in logs and pipes)
        bar = tqdm(
            total=len(todo), desc="caching frozen layers", unit="row", leave=False, disable=None
        )
        for _, group in itertools.groupby(todo, key=len):  # todo is sorted by length
            same = list(group)
            for s in range(0, len(same), batch_size):
                part = same[s : s + batch_size]
                for k, h in zip(part, self._compute([rows[k] for k in part], shared)):
                    self.cache[k] = h
                bar.update(len(part))
        bar.close()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            hidden = [self.cache[k] for k in keys]
            lengths = torch.tensor([h.shape[0] for h in hidden])
            torch.save({"lengths": lengths, "hidden": torch.cat(hidden)}, tmp)
            os.replace(tmp, path)  # atomic: a concurrent cell sees no file or a whole one
        return len(todo)

    def forward(self, input_ids=None, **kwargs) -> torch.Tensor:
        device = input_ids.device
        input_ids = input_ids.cpu()
        lengths = self._lengths(input_ids)
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
        return out.to(device)


def cached_layers(model: nn.Module) -> int:
    """How many layers of ``model`` the cache stands in for (0: none installed)."""
    return sum(isinstance(m, _PassThrough) for m in model.modules())


def _layout(module: nn.Module) -> tuple[str, str, nn.ModuleList] | None:
    """(embeddings attribute, layer-list prefix, layers) of a supported container."""
    encoder = getattr(module, "encoder", None)
    if hasattr(module, "embeddings") and isinstance(getattr(encoder, "layer", None), nn.ModuleList):
        return "embeddings", "encoder.layer", encoder.layer
    layers = getattr(module, "layers", None)
    if (
        hasattr(module, "embed_tokens")
        and hasattr(module, "rotary_emb")
        and isinstance(layers, nn.ModuleList)
    ):
        return "embed_tokens", "layers", layers
    return None


def install_prefix_cache(model: nn.Module, trainable: set[str], pad_id: int) -> int:
    """Install the cache below the lowest layer that can train. Returns k (0: not installed)."""
    for name, module in model.named_modules():
        layout = _layout(module)
        if layout is None:
            continue
        emb_attr, list_name, layers = layout
        dot = f"{name}." if name else ""
        prefix_names = {f"{dot}{emb_attr}."}
        k = 0
        for i in range(len(layers)):
            tag = f"{dot}{list_name}.{i}."
            if any(t.startswith(tag) for t in trainable):
                break
            prefix_names.add(tag)
            k = i + 1
        if k == 0 or any(t.startswith(p) for t in trainable for p in prefix_names):
            return 0
        prefix = nn.ModuleList([layers[i] for i in range(k)])
        rotary = getattr(module, "rotary_emb", None) if emb_attr == "embed_tokens" else None
        cached = CachedPrefix(module.config, getattr(module, emb_attr), prefix, pad_id, rotary)
        setattr(module, emb_attr, cached)
        for i in range(k):
            layers[i] = _PassThrough()
        return k
    return 0
