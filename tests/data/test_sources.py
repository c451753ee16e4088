"""Every data source kind with small local files, stratified splits, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dpfedlora.config import ConfigError, DataConfig, ModelConfig
from dpfedlora.data import load_data, stratified_split
from tests.helpers import tiny_cfg


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


# ------------------------------------------------------------------ what data.name names
@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a socket fails the test loudly (a hub request would need one)."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize(
    "name, kind",
    [
        ("builtin:synthetic", "builtin"),
        ("hub:imdb", "hub"),
        ("hub:stanfordnlp/sst2", "hub"),
        ("data.csv", "file"),
        ("shards/data.JSONL", "file"),
        ("~/records.parquet", "file"),
        ("C:\\data\\records.tsv", "file"),
    ],
)
def test_data_name_kinds(name, kind):
    from dpfedlora.config.data_names import data_name_kind

    assert data_name_kind("data.name", name) == kind
    assert DataConfig(name=name).name == name


@pytest.mark.parametrize(
    "name, message",
    [
        ("notes.txt", r"local path with extension '.txt'.*\.csv/\.tsv/\.json/\.jsonl/\.parquet"),
        ("./records", "local path with no file extension"),
        ("~/data", "local path with no file extension"),
        ("org/dataset", "local path with no file extension.*hub:<id>"),
        ("imdb", "Write hub:imdb"),
        ("hub:", "names no hub dataset"),
    ],
)
def test_data_names_that_are_neither_files_nor_marked_hub_ids_are_config_errors(name, message):
    with pytest.raises(ConfigError, match=f"`data.name` = {name!r}.*" + message):
        DataConfig(name=name)


def test_an_unsupported_local_file_fails_at_once_without_the_network(tmp_path, capsys, no_network):
    import time

    from dpfedlora.cli import main
    from tests.helpers import TINY

    notes = tmp_path / "notes.txt"
    notes.write_text("patient 1: private words\n")
    out = tmp_path / "out"
    start = time.perf_counter()
    code = main(
        ["run", str(TINY), "--no-progress", "--out", str(out), "--set", f"data.name={notes}"]
    )
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "notes.txt" in lines[0] and ".csv/.tsv/.json/.jsonl/.parquet" in lines[0]
    assert elapsed < 5.0  # was 32 s of retried hub requests naming the file
    assert not out.exists()


def test_a_missing_file_fails_before_the_model_is_built(tmp_path, monkeypatch, no_network):
    from dpfedlora.federation import setup

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built for data that does not exist")

    monkeypatch.setattr(setup, "build_model", no_model)
    cfg = tiny_cfg(f"data.name={tmp_path / 'missing.csv'}")
    with pytest.raises(ConfigError, match="does not exist.*missing.csv.*\\.csv/\\.tsv"):
        setup.build_setup(cfg)


def test_home_relative_paths_are_read_from_disk(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HOME", str(tmp_path))
    _write(tmp_path, "csv")
    cfg = DataConfig(name="~/data.csv", label_names=("ham", "spam"))
    train, held = load_data(cfg, ModelConfig(max_length=8), seed=0, tokenizer=WordTokenizer())
    assert len(train) + len(held) == 40


def test_only_a_hub_prefix_reaches_the_hub(monkeypatch, no_network):
    import datasets

    asked = []

    def fake_load_dataset(path, *args, **kwargs):
        asked.append((path, args, kwargs))
        rows = {"text": [r["text"] for r in ROWS], "label": [r["label"] for r in ROWS]}
        return datasets.DatasetDict(
            train=datasets.Dataset.from_dict(rows), test=datasets.Dataset.from_dict(rows)
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = DataConfig(name="hub:org/spam-set", label_names=("ham", "spam"), eval_split="test")
    train, held = load_data(cfg, ModelConfig(max_length=8), seed=0, tokenizer=WordTokenizer())
    assert asked == [("org/spam-set", (), {})]  # the id, without the prefix
    assert len(train) == len(held) == 40
