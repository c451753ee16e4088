"""Tuning at no privacy cost: the public share, proxy clients, the proxy's noise, the choice."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from accounting import calibrate_dpsgd
from dpfedlora.cli import main
from dpfedlora.config import ConfigError, load_config
from dpfedlora.experiments.sweep import load_sweep
from dpfedlora.experiments.tune import best, expand_cases, proxy_noise, tuned_cases
from dpfedlora.federation.setup import _load
from dpfedlora.methods import make_method
from dpfedlora.models.builders import build_model

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny.yaml"


def _rows(data) -> list[tuple[int, ...]]:
    return [tuple(r.tolist()) for r in data.input_ids]


def _pools(overrides: dict):
    cfg = load_config(TINY, overrides)
    built = build_model(cfg.model, seed=cfg.seed)
    clients, eval_data, public, _, _ = _load(
        cfg, make_method(cfg.method, seed=cfg.seed), built, None, None, None
    )
    return cfg, clients, eval_data, public


def test_public_share_is_in_no_private_shard_and_proxies_never_read_the_test_set():
    _, private, test, _ = _pools({"data": {"public_fraction": 0.25}})
    _, proxies, validation, _ = _pools({"data": {"public_fraction": 0.25, "pool": "public"}})
    _, everyone, test_all, _ = _pools({})
    private_rows = {r for c in private for r in _rows(c.data)}
    proxy_rows = {r for c in proxies for r in _rows(c.data)}
    val_rows, test_rows = set(_rows(validation)), set(_rows(test))
    all_rows = [r for c in everyone for r in _rows(c.data)]
    assert len(set(all_rows)) == len(all_rows) == 960  # rows identify records here
    assert test_rows == set(_rows(test_all))  # the held-out set does not depend on the share
    # 960 training records: int(0.25 * 960) = 240 public, 720 private
    assert len(private_rows) == 720 and len(proxy_rows) + len(val_rows) == 240
    assert not private_rows & (proxy_rows | val_rows)
    assert not proxy_rows & val_rows and not (proxy_rows | val_rows) & test_rows
    assert (private_rows | proxy_rows | val_rows) == set(all_rows)
    # the public share is split like the pool: eval_fraction 0.2 held out, stratified
    assert len(val_rows) == pytest.approx(0.2 * 240, abs=2)
    assert len(proxies) == 4


def test_public_pool_needs_a_public_share_and_shares_must_agree():
    with pytest.raises(ConfigError, match="data.public_fraction"):
        load_config(TINY, {"data": {"pool": "public"}})
    with pytest.raises(ConfigError, match="two different public shares"):
        load_config(
            TINY,
            {
                "data": {"public_fraction": 0.2},
                "method": {"name": "fedsb", "init": "public", "init_public_fraction": 0.1},
            },
        )
    with pytest.raises(ConfigError, match="data.pool"):
        load_config(TINY, {"data": {"public_fraction": 0.2, "pool": "shared"}})
    with pytest.raises(ConfigError, match="data.public_fraction"):
        load_config(TINY, {"data": {"public_fraction": 1.0}})


def test_proxy_noise_keeps_sigma_over_the_expected_batch():
    # Poisson rate 0.1 on every client: the proxies' batches are smaller by the pool ratio
    overrides = [("data.public_fraction", 0.25), ("train.sampling_rate", 0.1)]
    sigma_proxy = proxy_noise(TINY, overrides)
    # independently: 720 private records in 4 iid shards of 180, q 0.1, 10 steps, 2 rounds
    sigma = calibrate_dpsgd(
        target_epsilon=3.0, delta=1e-5, sampling_rate=0.1, steps=20, accountant="fastpld"
    ).noise_multiplier
    _, proxies, _, _ = _pools({"data": {"public_fraction": 0.25, "pool": "public"}})
    mean_proxy = sum(len(c.data) for c in proxies) / 4
    assert sigma_proxy == pytest.approx(sigma * mean_proxy / 180.0, rel=1e-6)
    # a fixed batch size keeps q·n = B on both sides, so σ is the private cell's
    assert proxy_noise(TINY, [("data.public_fraction", 0.25)]) == pytest.approx(
        calibrate_dpsgd(
            target_epsilon=3.0, delta=1e-5, sampling_rate=32 / 180, steps=20,
            accountant="fastpld",
        ).noise_multiplier,
        rel=1e-6,
    )  # fmt: skip


def test_best_prefers_balanced_accuracy_then_lower_loss():
    rows = [
        {"value": 0.1, "metrics": {"balanced_accuracy": 0.8, "loss": 0.5}},
        {"value": 0.03, "metrics": {"balanced_accuracy": 0.9, "loss": 0.4}},
        {"value": 0.01, "metrics": {"balanced_accuracy": 0.9, "loss": 0.3}},
        {"value": 0.003, "metrics": None},  # did not finish
    ]
    assert best(rows)["value"] == 0.01
    assert best([{"value": 1, "metrics": None}]) is None


def test_tuned_cases_take_the_nearest_tuned_epsilon_on_a_log_scale():
    cases = [{"method.name": "ffa"}, {"method.name": "fedit", "privacy.target_epsilon": 8}]
    targets = [[1.0, 3.0, 8.0, math.inf], [8.0]]
    choice = {(0, 1.0): 0.01, (0, 8.0): 0.1, (0, math.inf): 0.3, (1, 8.0): 0.05}
    out = tuned_cases(cases, targets, "train.lr", choice)
    lr = {(c["method.name"], c["privacy.target_epsilon"]): c["train.lr"] for c in out}
    # ε 3: |log(3/1)| = 1.10 > |log(8/3)| = 0.98, so 8's value
    assert lr == {
        ("ffa", 1.0): 0.01,
        ("ffa", 3.0): 0.1,
        ("ffa", 8.0): 0.1,
        ("ffa", "inf"): 0.3,
        ("fedit", 8.0): 0.05,
    }


def test_a_grid_over_other_keys_becomes_one_case_per_value():
    grid = {
        "method.name": ["ffa", "fedsb"], "privacy.target_epsilon": [3, "inf"], "seed": [0, 1],
        "train.lr": [0.1, 0.2], "method.rank": [4],
    }  # fmt: skip
    cases = expand_cases(grid, [{}], "train.lr")
    assert cases == [{"method.name": "ffa"}, {"method.name": "fedsb"}]
    pinned = expand_cases(grid, [{"method.name": "fedit"}, {}], "train.lr")
    assert pinned == [{"method.name": "fedit"}, {"method.name": "ffa"}, {"method.name": "fedsb"}]


def test_tune_end_to_end_chooses_the_best_candidate_and_writes_a_runnable_sweep(tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        f"base: {TINY}\n"
        "cases:\n  - {method.name: ffa}\n"
        "grid:\n"
        "  data.public_fraction: [0.3]\n"
        "  data.seed: [0]\n"
        "  privacy.target_epsilon: [1, 3]\n"
        "  seed: [0, 1]\n"
        "  server.rounds: [1]\n"
        "  train.local_steps: [3]\n"
    )
    out = tmp_path / "tune"
    # a fixed batch of 32: the proxies' σ is the private cell's (672 records, 4 shards of 168)
    sigma = calibrate_dpsgd(
        target_epsilon=3.0, delta=1e-5, sampling_rate=32 / 168, steps=3, accountant="fastpld"
    ).noise_multiplier
    rc = main(["tune", str(sweep), "--values", "0.001", "0.05", "--epsilon", "3", "--out",
               str(out), "--jobs", "2", "--no-progress"])  # fmt: skip
    assert rc == 0
    report = json.loads((out / "tune.json").read_text())
    assert len(report["rows"]) == 2  # ε 3 x 2 values (non-private: the unit test above)
    for row in report["rows"]:
        cell = yaml.safe_load((out / "cells" / row["cell"] / "config.yaml").read_text())
        assert cell["data"]["pool"] == "public" and cell["privacy"]["target_epsilon"] is None
        summary = json.loads((out / "cells" / row["cell"] / "summary.json").read_text())
        assert summary["evaluated_on"] == "public_validation"
        if row["target_epsilon"] == "inf":
            assert cell["privacy"]["mode"] == "none"
        else:
            assert cell["privacy"]["noise_multiplier"] == pytest.approx(sigma, rel=1e-6)
    for c in report["choice"]:
        mine = [r for r in report["rows"] if r["target_epsilon"] == c["target_epsilon"]]
        assert c["value"] == best(mine)["value"]
    _, cells = load_sweep(out / "tuned.yaml")
    assert len(cells) == 2 * 2  # ε 1 and 3 pinned per case, x 2 seeds
    chosen = {str(c["target_epsilon"]): c["value"] for c in report["choice"]}
    assert list(chosen) == ["3.0"]
    for cell in cells:  # ε 1 takes the value chosen at ε 3, the nearest tuned ε
        assert dict(cell.overrides)["train.lr"] == chosen["3.0"]
    assert "validation balanced accuracy" in capsys.readouterr().out


def test_tune_refuses_a_sweep_without_a_public_share(tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"base: {TINY}\ngrid:\n  seed: [0]\n")
    rc = main(["tune", str(sweep), "--values", "0.01", "--out", str(tmp_path / "t")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "data.public_fraction" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "t").exists()


def test_a_choice_at_the_edge_of_the_values_is_flagged():
    from dpfedlora.experiments.tune import _at_edge

    assert _at_edge(0.003, [0.003, 0.01, 0.03]) and _at_edge(0.03, [0.003, 0.01, 0.03])
    assert not _at_edge(0.01, [0.003, 0.01, 0.03])
    assert not _at_edge(0.1, [0.01, 0.1])  # two values: every choice is an edge
    assert not _at_edge("adamw", ["sgd", "adamw", "x"])


def test_tune_refuses_cells_whose_public_share_moves_with_the_seed(tmp_path, capsys):
    # data.seed follows seed: seed 1's public share differs, and may be private in its shards
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"base: {TINY}\ngrid:\n  data.public_fraction: [0.3]\n  seed: [0, 1]\n")
    rc = main(["tune", str(sweep), "--values", "0.01", "--out", str(tmp_path / "t")])
    assert rc == 2 and "data.seed" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_another_split_keeps_the_public_share_of_data_public_seed():
    # the share data seed 0 marks public, used by a split drawn with data seed 1 (real data:
    # the synthetic set draws other records per seed)
    share = {"public_fraction": 0.25, "name": "builtin:sms_spam", "label_names": ["ham", "spam"]}
    model = {"name": "builtin:minilm", "max_length": 32}

    def pools(**data):
        return _pools({"model": model, "data": {**share, **data}})

    _, _, _, public0 = pools(seed=0)
    _, private1, test1, public1 = pools(seed=1, public_seed=0)
    _, _, test1_own, own1 = pools(seed=1)
    _, proxies, validation, _ = pools(seed=1, public_seed=0, pool="public")
    _, proxies0, validation0, _ = pools(seed=0, pool="public")
    public_rows = set(_rows(public0))
    assert set(_rows(public1)) == public_rows != set(_rows(own1))
    private_rows = {r for c in private1 for r in _rows(c.data)}
    assert private_rows and not private_rows & public_rows
    assert not set(_rows(test1)) & public_rows
    # the held-out set is split 1's own, less the records the share took (none is new)
    assert set(_rows(test1)) <= set(_rows(test1_own))
    lost = set(_rows(test1_own)) - set(_rows(test1))
    assert lost == set(_rows(test1_own)) & public_rows and lost
    # proxies and their validation are the ones the tuning (data seed 0) used
    assert set(_rows(validation)) == set(_rows(validation0))
    assert {r for c in proxies for r in _rows(c.data)} == {
        r for c in proxies0 for r in _rows(c.data)
    }
    with pytest.raises(ConfigError, match="data.public_seed"):
        load_config(TINY, {"data": {"public_seed": 0}})


def test_tune_accepts_splits_that_share_one_public_share(tmp_path):
    from dpfedlora.experiments.tune import _check_one_public_share

    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        f"base: {TINY}\ngrid:\n  data.public_fraction: [0.3]\n  data.seed: [1, 2]\n"
        "  data.public_seed: [0]\n"
    )
    _check_one_public_share(sweep)  # no error: every cell holds data seed 0's share
    sweep.write_text(f"base: {TINY}\ngrid:\n  data.public_fraction: [0.3]\n  data.seed: [1, 2]\n")
    with pytest.raises(ConfigError, match="data.public_seed"):
        _check_one_public_share(sweep)
