"""The frozen-prefix cache is an optimisation only: same logits, same per-sample gradients."""

import torch

from dpfedlora.models.prefix_cache import CachedPrefix
from dpfedlora.tasks import TASKS
from tests.helpers import tiny_setup


def _logits_and_grads(fed, batch, task="classification"):
    names = fed.method.trainable_names(1)
    params = dict(fed.model.named_parameters())
    for n in names:
        params[n].requires_grad_(True)
        params[n].grad = None
    with torch.no_grad():
        for n in names:
            if "latent" in n or "lora_B" in n:
                params[n].normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    loss = TASKS[task].loss(fed.model, batch).sum()
    loss.backward()
    logits = fed.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return logits.detach(), {n: params[n].grad.clone() for n in names}


def test_cache_matches_uncached_model(tmp_path):
    over = ("method.name=fedsb", "model.layers=[1]")
    plain = tiny_setup(*over, "model.cache_frozen_prefix=false")
    cached = tiny_setup(*over)
    assert plain.prefix_layers == 0 and cached.prefix_layers == 1
    prefix = next(m for m in cached.model.modules() if isinstance(m, CachedPrefix))
    batch = plain.clients[0].data.subset(torch.arange(8)).trimmed()
    la, ga = _logits_and_grads(plain, batch)
    for _ in range(2):  # second pass is served from the cache
        lb, gb = _logits_and_grads(cached, batch)
        torch.testing.assert_close(lb, la, atol=1e-5, rtol=1e-5)
        for n in ga:
            torch.testing.assert_close(gb[n], ga[n], atol=1e-6, rtol=1e-5)
    assert prefix.hits >= 16 and prefix.misses == 0  # precomputed when the run was built


def test_store_shares_features_between_runs(tmp_path, monkeypatch):
    from dpfedlora.models.prefix_cache import STORE_ENV

    over = ("method.name=fedsb", "model.layers=[1]")
    alone = tiny_setup(*over)
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "store"))
    first = tiny_setup(*over)
    second = tiny_setup(*over)
    files = list((tmp_path / "store").glob("prefix-*.pt"))
    assert len(files) == 1 and not list((tmp_path / "store").glob("*.tmp"))
    caches = [
        next(m for m in f.model.modules() if isinstance(m, CachedPrefix)).cache
        for f in (alone, first, second)
    ]
    assert len(caches[0]) > 100 and caches[0].keys() == caches[1].keys() == caches[2].keys()
    for k in caches[0]:  # same canonical batches: bit-identical whether computed or loaded
        assert torch.equal(caches[1][k], caches[0][k]) and torch.equal(caches[2][k], caches[0][k])
    # a different prefix (other weights) must not reuse the file
    tiny_setup(*over, "seed=5")
    assert len(list((tmp_path / "store").glob("prefix-*.pt"))) == 2


def test_prefix_runs_without_dropout_even_in_training_mode(tmp_path):
    from dpfedlora.models.builders import set_dropout

    fed = tiny_setup("method.name=fedsb", "model.layers=[1]")
    prefix = next(m for m in fed.model.modules() if isinstance(m, CachedPrefix))
    assert set_dropout(prefix.prefix, 0.5) > 0 and fed.model.training
    rows = [fed.clients[0].data.input_ids[i, :10] for i in range(4)]
    a, b = prefix._compute(rows), prefix._compute(rows)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert prefix.prefix.training  # modes restored


def test_no_cache_when_bottom_layer_trains(tmp_path):
    fed = tiny_setup("method.name=ffa")  # adapters on every layer
    assert fed.prefix_layers == 0


def test_decoder_cache_matches_uncached_model_on_real_tokens():
    """A Llama decoder with adapters on its top layer: logits at every real position and the
    per-sample-relevant gradients equal the uncached model's, though the pad id (0) also
    occurs inside sequences here."""
    over = ("model.name=builtin:tiny-llama", "model.task=causal_lm", "model.train_head=false",
            "method.name=fedit", "model.layers=[1]")  # fmt: skip
    plain = tiny_setup(*over, "model.cache_frozen_prefix=false")
    cached = tiny_setup(*over)
    assert plain.prefix_layers == 0 and cached.prefix_layers == 1
    batch = plain.clients[0].data.subset(torch.arange(8))
    batch.input_ids[:, 3] = 0  # the pad id inside every sequence
    batch = batch.trimmed()
    la, ga = _logits_and_grads(plain, batch, "causal_lm")
    lb, gb = _logits_and_grads(cached, batch, "causal_lm")
    real = batch.attention_mask.bool()
    torch.testing.assert_close(lb[real], la[real], atol=1e-5, rtol=1e-5)
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], atol=1e-6, rtol=1e-5)


def test_decoder_rows_sharing_leading_tokens_run_them_once_with_the_same_features(monkeypatch):
    """A prompt format puts the same tokens first in every row: the cache runs them once and
    each row's own tokens attend to their keys and values. Features equal the row-by-row
    computation at every position."""
    import dpfedlora.models.prefix_cache as pc

    over = ("model.name=builtin:tiny-llama", "model.task=causal_lm", "model.train_head=false",
            "method.name=fedit", "model.layers=[1]")  # fmt: skip
    prefix = next(m for m in tiny_setup(*over).model.modules() if isinstance(m, CachedPrefix))
    g = torch.Generator().manual_seed(0)
    head = torch.randint(5, 60, (12,), generator=g)  # the shared leading tokens
    rows = [torch.cat([head, torch.randint(5, 60, (n,), generator=g)]) for n in (1, 3, 3, 7, 9)]
    runs = []
    real = prefix._shared_run
    monkeypatch.setattr(
        prefix, "_shared_run", lambda s, ids: runs.append(ids.shape) or real(s, ids)
    )
    prefix.cache.clear()
    width = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([r, torch.full((width - len(r),), prefix.pad_id)]) for r in rows])
    assert prefix.precompute([ids]) == 5
    assert sorted(runs) == [(1, 13), (1, 19), (1, 21), (2, 15)]  # same-length rows batched
    for r in rows:
        ref = prefix._compute([r])[0]  # alone, no sharing
        got = prefix.cache[r.numpy().tobytes()]
        assert got.shape == ref.shape == (len(r), prefix.config.hidden_size)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # rows sharing fewer than MIN_SHARED leading tokens take the ordinary path
    assert prefix._shared_prefix([head[: pc.MIN_SHARED - 1], head]) is None
    # 15 tokens in common, but the shorter row keeps one of its own
    both = [torch.cat([head, head]), torch.cat([head, head[:3]])]
    assert prefix._shared_prefix(both).length == 14
