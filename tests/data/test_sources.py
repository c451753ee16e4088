"""Every data source kind with small local files, stratified splits, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dpfedlora.config import ConfigError, DataConfig, ModelConfig
from dpfedlora.data import load_data, stratified_split


class WordTokenizer:
    """A deterministic stand-in for a HF tokenizer (ids from a growing vocabulary)."""

    pad_token_id = 0
    eos_token_id = 1

    def __init__(self):
        self.vocab = {}

    def _ids(self, text):
        return [self.vocab.setdefault(w, len(self.vocab) + 2) for w in text.split()]

    def __call__(
        self,
        texts,
        padding=None,
        truncation=None,
        max_length=None,
        return_tensors=None,
        add_special_tokens=True,
    ):
        import torch

        if isinstance(texts, str):
            return {"input_ids": self._ids(texts)}
        ids = torch.zeros((len(texts), max_length), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, t in enumerate(texts):
            row = self._ids(t)[:max_length]
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}


ROWS = [
    {
        "text": f"message number {i} {'win cash' if i % 5 == 0 else 'see you'}",
        "label": "spam" if i % 5 == 0 else "ham",
        "user": f"u{i % 3}",
    }
    for i in range(40)
]


def _write(tmp_path, kind):
    import pandas as pd

    df = pd.DataFrame(ROWS)
    path = tmp_path / f"data.{kind}"
    if kind == "csv":
        df.to_csv(path, index=False)
    elif kind == "tsv":
        df.to_csv(path, sep="\t", index=False)
    elif kind == "json":
        path.write_text(json.dumps(ROWS))
    elif kind == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    elif kind == "parquet":
        df.to_parquet(path)
    return path


@pytest.mark.parametrize("kind", ["csv", "tsv", "json", "jsonl", "parquet"])
def test_local_files(tmp_path, kind):
    path = _write(tmp_path, kind)
    cfg = DataConfig(name=str(path), label_names=("ham", "spam"), eval_fraction=0.25)
    train, held = load_data(cfg, ModelConfig(max_length=8), seed=0, tokenizer=WordTokenizer())
    assert len(train) + len(held) == 40 and len(held) == 10
    # stratified: 20 % spam in both parts
    assert train.labels.float().mean().item() == pytest.approx(0.2)
    assert held.labels.float().mean().item() == pytest.approx(0.2)


def test_builtin_sms_spam_counts():
    cfg = DataConfig(name="builtin:sms_spam", label_names=("ham", "spam"), eval_fraction=0.2)
    train, held = load_data(cfg, ModelConfig(max_length=8), seed=0, tokenizer=WordTokenizer())
    assert len(train) + len(held) == 5574  # 4,827 ham + 747 spam
    assert int(train.labels.sum() + held.labels.sum()) == 747
    assert len(held) == round(0.2 * 4827) + round(0.2 * 747)


def test_stratified_split_is_seeded():
    y = np.array([0] * 80 + [1] * 20)
    a = stratified_split(y, 0.25, seed=3)
    b = stratified_split(y, 0.25, seed=3)
    c = stratified_split(y, 0.25, seed=4)
    assert all(np.array_equal(x, z) for x, z in zip(a, b))
    assert not np.array_equal(a[1], c[1])
    assert y[a[1]].sum() == 5 and len(a[1]) == 25


@pytest.mark.parametrize(
    "cfg, model, message",
    [
        (
            dict(text_column="body"),
            {},
            "column 'body' .data.text_column. not found. Columns: label, text, user",
        ),
        (dict(label_names=("ham",)), {}, r"labels \['spam'\] are not in `data.label_names`"),
        (dict(), {}, "labels in 'label' are not integers"),
        (
            dict(label_names=("ham", "spam")),
            dict(num_labels=1),
            r"`model.num_labels` must be an integer >= 2. Found 1",
        ),
    ],
)
def test_bad_data_errors(tmp_path, cfg, model, message):
    path = _write(tmp_path, "jsonl")
    with pytest.raises(ConfigError, match=message):
        load_data(
            DataConfig(name=str(path), **cfg),
            ModelConfig(max_length=8, **model),
            seed=0,
            tokenizer=WordTokenizer(),
        )


def test_missing_file_and_unknown_builtin():
    with pytest.raises(ConfigError, match="does not exist"):
        load_data(DataConfig(name="nope.csv"), ModelConfig(), seed=0, tokenizer=WordTokenizer())
    with pytest.raises(ConfigError, match="unknown built-in dataset 'builtin:imdb'"):
        load_data(DataConfig(name="builtin:imdb"), ModelConfig(), seed=0, tokenizer=WordTokenizer())


def test_causal_lm_loss_only_on_response_tokens(tmp_path):
    import torch

    from dpfedlora.tasks import TASKS

    path = tmp_path / "lm.jsonl"
    path.write_text(
        "\n".join(
            json.dumps({"prompt": f"q {i} is", "response": "yes" if i % 2 else "no"})
            for i in range(10)
        )
        + "\n"
    )
    cfg = DataConfig(name=str(path), eval_fraction=0.2)
    train, _ = load_data(
        cfg, ModelConfig(task="causal_lm", max_length=8), seed=0, tokenizer=WordTokenizer()
    )
    row = train.subset([0])
    n_prompt = 3  # "q", i, "is"
    assert (row.labels[0, :n_prompt] == -100).all()
    assert (row.labels[0, n_prompt : n_prompt + 2] != -100).all()  # answer word + eos
    assert (row.labels[0, n_prompt + 2 :] == -100).all()  # padding

    class Fixed(torch.nn.Module):
        """Logits that make token t cost exactly (t mod 5) nats of cross-entropy... approximately:
        we only check masking and per-example averaging against a hand computation."""

        def forward(self, input_ids, attention_mask):
            from types import SimpleNamespace

            torch.manual_seed(0)
            return SimpleNamespace(logits=torch.randn(*input_ids.shape, 64))

    batch = train.subset([0, 1])
    got = TASKS["causal_lm"].loss(Fixed(), batch)
    logits = Fixed()(batch.input_ids, batch.attention_mask).logits
    want = []
    for i in range(2):
        terms = [
            torch.nn.functional.cross_entropy(logits[i, t - 1 : t], batch.labels[i, t : t + 1])
            for t in range(1, 8)
            if batch.labels[i, t] != -100
        ]
        want.append(torch.stack(terms).mean())
    torch.testing.assert_close(got, torch.stack(want))
