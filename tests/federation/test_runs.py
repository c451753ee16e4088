"""End-to-end tiny runs: every method with DP, resume, budget stop, ledger replay, Fed-SB init."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from accounting import Ledger
from dpfedlora.federation import run
from tests.helpers import ALL_METHODS, tiny_cfg


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_METHODS)
def test_every_method_runs_with_dp_within_budget(tmp_path, name):
    cfg = tiny_cfg(f"method.name={name}")
    summary = run(cfg, tmp_path / name, progress=False, log=lambda s: None)
    assert summary["rounds_completed"] == 2 and summary["stopped_reason"] == "completed"
    assert 0 < summary["max_epsilon"] <= cfg.privacy.target_epsilon
    assert summary["method"] == name and summary["delta"] == cfg.privacy.delta
    assert summary["accountant_used"] == "fastpld" and summary["noise_source"] == "seeded"
    assert summary["noise_multiplier"] > 0 and summary["faulty_clients"] == []
    # two DP rounds are not enough for every method to learn the tiny task, but none may fall
    # clearly below the majority class (a broken update would)
    assert summary["final"]["accuracy"] >= summary["final"]["majority_baseline"] - 0.05
    assert summary["bytes_up"] > 0


def test_ledger_replay_equals_cli_epsilon(tmp_path):
    cfg = tiny_cfg("method.name=ffa", "privacy.accountant=pld")
    summary = run(cfg, tmp_path / "r", progress=False, log=lambda s: None)
    ledger = Ledger(tmp_path / "r" / "ledger.jsonl", accountant="pld")
    assert len(ledger) == 4 * 2  # one write-ahead record per client per round
    for client in summary["clients"]:
        steps = client["steps_per_round"] * summary["rounds_completed"]
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "dpfedlora",
                "epsilon",
                "--noise-multiplier",
                repr(summary["noise_multiplier"]),
                "--sample-rate",
                repr(client["sampling_rate"]),
                "--steps",
                str(steps),
                "--delta",
                repr(cfg.privacy.delta),
                "--accountant",
                "pld",
                "--json",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        cli = json.loads(out.stdout)["epsilon"]
        assert ledger.epsilon(client["cid"], delta=cfg.privacy.delta) == pytest.approx(
            cli, rel=1e-9
        )
        assert summary["epsilon_per_client"][client["cid"]] == pytest.approx(cli, rel=1e-9)


def test_resume_equals_uninterrupted(tmp_path):
    cfg = tiny_cfg("method.name=fedit", "server.rounds=4", "train.local_steps=3")
    straight = run(cfg, tmp_path / "a", progress=False, log=lambda s: None)
    first = run(cfg, tmp_path / "b", progress=False, until_round=2, log=lambda s: None)
    assert first["rounds_completed"] == 2
    second = run(cfg, tmp_path / "b", resume=True, progress=False, log=lambda s: None)
    assert second["rounds_completed"] == 4
    sa = torch.load(tmp_path / "a" / "checkpoint" / "final_state.pt")
    sb = torch.load(tmp_path / "b" / "checkpoint" / "final_state.pt")
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (tmp_path / "a" / "ledger.jsonl").read_text() == (
        tmp_path / "b" / "ledger.jsonl"
    ).read_text()
    assert straight["max_epsilon"] == second["max_epsilon"]


def test_refuses_to_overwrite_a_run(tmp_path):
    from dpfedlora.federation import RunError

    cfg = tiny_cfg("server.rounds=1", "train.local_steps=1")
    run(cfg, tmp_path / "r", progress=False, log=lambda s: None)
    with pytest.raises(RunError, match="--resume"):
        run(cfg, tmp_path / "r", progress=False, log=lambda s: None)


def test_budget_stops_before_crossing(tmp_path):
    # σ given and too small for 6 rounds within ε = 3: the run must stop before the crossing.
    cfg = tiny_cfg(
        "privacy.noise_multiplier=1.8",
        "privacy.target_epsilon=3.0",
        "server.rounds=6",
        "privacy.accountant=rdp",
    )
    lines = []
    summary = run(cfg, tmp_path / "r", progress=False, log=lines.append)
    assert summary["stopped_reason"] == "budget_exhausted"
    # rdp: ε after 5 rounds = 2.91, after 6 = 3.17 (10 steps of q = 32/240, σ = 1.8)
    assert summary["rounds_completed"] == 5
    assert summary["max_epsilon"] <= 3.0
    assert any("skipped: this round would raise its ε" in x for x in lines)
    assert not any("Skip this client" in x for x in lines)  # it is already skipped
    ledger = Ledger(tmp_path / "r" / "ledger.jsonl", accountant="rdp")
    assert ledger.max_epsilon(delta=cfg.privacy.delta) <= 3.0


def test_fedsb_private_init_is_in_the_ledger_and_accounted(tmp_path):
    cfg = tiny_cfg("method.name=fedsb", "method.init=private", "method.init_noise_multiplier=8.0")
    summary = run(cfg, tmp_path / "r", progress=False, log=lambda s: None)
    ledger = Ledger(tmp_path / "r" / "ledger.jsonl")
    init = [r for r in ledger if r.scope == "init"]
    assert sorted(r.client for r in init) == ["0", "1", "2", "3"]
    assert all(r.round == 0 and r.event.noise_multiplier == 8.0 for r in init)
    assert summary["max_epsilon"] <= cfg.privacy.target_epsilon
    # the init moved B and A away from the random orthonormal start and set R = diag(S)/s
    state = torch.load(tmp_path / "r" / "checkpoint" / "final_state.pt")
    r_name = next(k for k in state if k.endswith("latent.weight"))
    assert torch.count_nonzero(state[r_name]) > 0


def test_fedsb_init_without_noise_is_refused():
    from dpfedlora.config import ConfigError

    with pytest.raises(ConfigError, match="must be noised"):
        tiny_cfg("method.name=fedsb", "method.init=private", "method.init_noise_multiplier=0")


def test_fedsb_public_init_removes_public_data_from_clients(tmp_path):
    from dpfedlora.federation import Federation

    fed = Federation(
        tiny_cfg("method.name=fedsb", "method.init=public"), tmp_path / "r", log=lambda s: None
    )
    n_clients = sum(c.spec.num_examples for c in fed.clients)
    assert n_clients + len(fed.setup.public) == 960


def test_each_release_is_in_the_ledger_file_before_its_shard_is_read(tmp_path, monkeypatch):
    """Write-ahead inside a round's ledger group: when a client's training starts, a fresh
    reader of the file already sees that client's record for the round."""
    from dpfedlora.client.trainer import Trainer

    seen = []
    original = Trainer.train_local
    out = tmp_path / "r"

    def spy(self, shard, round_idx, *args, **kwargs):
        on_disk = Ledger(out / "ledger.jsonl")
        seen.append(any(r.client == shard.spec.cid and r.round == round_idx for r in on_disk))
        return original(self, shard, round_idx, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_local", spy)
    cfg = tiny_cfg("train.local_steps=1")
    run(cfg, out, progress=False, log=lambda s: None)
    assert seen == [True] * (4 * 2)
