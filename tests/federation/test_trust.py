"""Resume refusals, client faults, stop reasons, honest summaries and warnings (issue: trust)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from accounting import Ledger
from dpfedlora.client import Trainer
from dpfedlora.federation import RunError, run
from tests.helpers import tiny_cfg

QUICK = ("server.rounds=2", "train.local_steps=2", "privacy.accountant=rdp")


def quiet(cfg, out, **kw):
    return run(cfg, out, progress=False, log=lambda s: None, **kw)


@pytest.fixture(scope="module")
def half_done(tmp_path_factory):
    """A run stopped after round 1 of 2 (cleanly checkpointed), copied per test."""
    base = tmp_path_factory.mktemp("half")
    cfg = tiny_cfg(*QUICK)
    quiet(cfg, base / "r", until_round=1)
    return cfg, base / "r"


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_resume_refuses_a_missing_ledger(half_done, tmp_path):
    cfg, src = half_done
    out = _copy(src, tmp_path / "r")
    (out / "ledger.jsonl").unlink()
    with pytest.raises(RunError, match="missing.*4 releases"):
        quiet(cfg, out, resume=True)
    assert not (out / "ledger.jsonl").exists()  # nothing written, nothing spent


def test_resume_refuses_a_shortened_ledger(half_done, tmp_path):
    cfg, src = half_done
    out = _copy(src, tmp_path / "r")
    lines = (out / "ledger.jsonl").read_text().splitlines(keepends=True)
    (out / "ledger.jsonl").write_text("".join(lines[:-1]))
    with pytest.raises(RunError, match="3 releases, fewer than the 4"):
        quiet(cfg, out, resume=True)


def test_resume_refuses_an_altered_ledger(half_done, tmp_path):
    cfg, src = half_done
    out = _copy(src, tmp_path / "r")
    lines = (out / "ledger.jsonl").read_text().splitlines(keepends=True)
    rec = json.loads(lines[-1])
    rec["event"]["count"] = 1  # fewer steps: a smaller ε for that client
    lines[-1] = json.dumps(rec) + "\n"
    (out / "ledger.jsonl").write_text("".join(lines))
    with pytest.raises(RunError, match="altered"):
        quiet(cfg, out, resume=True)


def test_resume_accepts_extra_write_ahead_records_and_counts_them(half_done, tmp_path):
    """Records of an interrupted round (after the checkpoint) are kept and counted."""
    cfg, src = half_done
    out = _copy(src, tmp_path / "r")
    ledger = Ledger(out / "ledger.jsonl")
    extra = ledger.records[0]
    ledger.record(extra.client, 2, "train", extra.event)  # as if round 2 started, then crashed
    straight = json.loads((src / "summary.json").read_text())  # ε after round 1
    resumed = quiet(cfg, out, resume=True)
    assert resumed["rounds_completed"] == 2
    # the orphan record counts: client 0 has (almost) spent 2 rounds, so its real round 2 would
    # cross ε = 3 and it is skipped; the others train
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped"] == [extra.client] and rows[-1]["clients"] == 3
    assert len(Ledger(out / "ledger.jsonl")) == 4 + 1 + 3
    eps = resumed["epsilon_per_client"]
    assert straight["epsilon_per_client"][extra.client] < eps[extra.client] <= 3.0
    assert all(eps[c] == eps[extra.client] for c in eps)


def test_refused_resume_names_the_differing_keys(half_done, tmp_path):
    _, src = half_done
    out = _copy(src, tmp_path / "r")
    cfg = tiny_cfg(*QUICK, "train.lr=0.02")
    with pytest.raises(RunError, match=r"train\.lr: 0\.01 -> 0\.02"):
        quiet(cfg, out, resume=True)


def test_until_round_is_its_own_stop_reason(half_done):
    _, src = half_done
    assert json.loads((src / "summary.json").read_text())["stopped_reason"] == "until_round"


def test_ghost_mode_empty_batch_takes_a_noise_only_step(tmp_path):
    # q·n = 0.0042 · 240 ≈ 1: many Poisson batches are empty
    cfg = tiny_cfg(
        "privacy.grad_sample_mode=ghost",
        "train.sampling_rate=0.0042",
        "privacy.target_epsilon=50",
        "server.rounds=1",
        "train.local_steps=6",
    )
    before = {}

    def spy(self, client, rnd, received, **kw):
        before[client.spec.cid] = {k: v.clone() for k, v in received.items()}
        return original(self, client, rnd, received, **kw)

    original = Trainer.train_local
    Trainer.train_local = spy
    try:
        summary = quiet(cfg, tmp_path / "r")
    finally:
        Trainer.train_local = original
    assert summary["stopped_reason"] == "completed" and summary["faulty_clients"] == []


def _inject(monkeypatch, fault):
    original = Trainer.train_local

    def faulty(self, client, rnd, received, **kw):
        res = original(self, client, rnd, received, **kw)
        return fault(client, res)

    monkeypatch.setattr(Trainer, "train_local", faulty)


def test_a_raising_client_is_left_out_and_its_spend_counted(monkeypatch, tmp_path, capsys):
    def fault(client, res):
        if client.spec.cid == "1":
            raise RuntimeError("disk on fire")
        return res

    _inject(monkeypatch, fault)
    lines: list[str] = []
    summary = run(tiny_cfg(*QUICK), tmp_path / "r", progress=False, log=lines.append)
    assert summary["stopped_reason"] == "completed"
    assert [(f["round"], f["cid"]) for f in summary["faulty_clients"]] == [(1, "1"), (2, "1")]
    # the reply carries a code only (an error's text may depend on the records); the details
    # stay on the client's side, under the failure id it prints
    assert summary["faulty_clients"][0]["error"] == "failed:internal"
    err = capsys.readouterr().err
    assert "disk on fire" in err and "client 1 round 1 failed (failure id " in err
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["faulty"] == ["1"] and r["clients"] == 3 for r in rows)
    # its spend stays counted: same ε as the others
    eps = summary["epsilon_per_client"]
    assert eps["1"] == eps["0"] > 0
    assert any("client 1 failed" in x for x in lines)


def test_a_non_finite_payload_is_left_out(monkeypatch, tmp_path):
    def fault(client, res):
        if client.spec.cid == "2":
            res.trained = {k: torch.full_like(v, math.nan) for k, v in res.trained.items()}
        return res

    _inject(monkeypatch, fault)
    summary = quiet(tiny_cfg(*QUICK), tmp_path / "r")
    assert {f["cid"] for f in summary["faulty_clients"]} == {"2"}
    assert summary["faulty_clients"][0]["error"] == "failed:internal"
    state = torch.load(tmp_path / "r" / "checkpoint" / "final_state.pt")
    assert all(bool(torch.isfinite(v).all()) for v in state.values())


def test_no_successful_client_stops_with_a_clear_reason(monkeypatch, tmp_path):
    def fault(client, res):
        raise ValueError("broken")

    _inject(monkeypatch, fault)
    summary = quiet(tiny_cfg(*QUICK), tmp_path / "r")
    assert summary["stopped_reason"] == "all_clients_failed"
    assert summary["rounds_completed"] == 0
    assert len(Ledger(tmp_path / "r" / "ledger.jsonl")) == 4  # the spend of round 1 stays


def test_summary_records_delta_accountant_and_noise_source(tmp_path):
    summary = quiet(tiny_cfg(*QUICK, "privacy.accountant=pld"), tmp_path / "r")
    assert summary["delta"] == 1e-5
    assert summary["accountant"] == summary["accountant_used"] == "pld"
    assert summary["noise_source"] == "seeded"


def test_prv_fallback_is_recorded_not_just_warned(tmp_path):
    from accounting import dpsgd_event

    ledger = Ledger(tmp_path / "l.jsonl", accountant="prv")
    # prv-accountant 0.2.0 cannot discretise this (dp_stack.md §5); PLD answers
    ledger.record("0", 1, "train", dpsgd_event(noise_multiplier=0.5, sampling_rate=0.1, steps=500))
    with pytest.warns(UserWarning, match="PLD"):
        eps = ledger.epsilon("0", delta=1e-5)
    assert eps == pytest.approx(78.96, abs=0.05)
    assert ledger.answered_by == {"pld"}


def test_target_epsilon_inf_is_a_non_private_run(tmp_path):
    cfg = tiny_cfg(*QUICK, "privacy.target_epsilon=inf")
    assert not cfg.privacy.private
    summary = quiet(cfg, tmp_path / "r")
    assert summary["private"] is False and not (tmp_path / "r" / "ledger.jsonl").exists()


def test_diagnostics_switch_removes_histogram_and_loss(tmp_path):
    summary = quiet(tiny_cfg(*QUICK, "privacy.diagnostics=false"), tmp_path / "r")
    assert not (tmp_path / "r" / "label_histogram.json").exists()
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["train_loss"] is None for r in rows)  # NaN -> null in JSON
    assert summary["rounds_completed"] == 2


def test_warnings_for_settings_that_silently_hurt(tmp_path):
    from dpfedlora.federation.advice import shard_warnings

    cfg = tiny_cfg("privacy.delta=1e-5")
    found = shard_warnings(cfg, [240, 50, 240], [32 / 240, 32 / 50, 32 / 240], left_out=0)
    assert "Set train.sampling_rate" in " ".join(found)  # q 0.133 to 0.64: σ from client 1
    low = shard_warnings(tiny_cfg("train.sampling_rate=0.01"), [240, 240], [0.01, 0.01])
    assert any("fewer than 4 records per batch (client 0: q·n = 2.40)" in w for w in low)
    dropped = shard_warnings(cfg, [10], [0.5], left_out=37)
    assert any("37 records of the other users are left out" in w for w in dropped)
    assert shard_warnings(tiny_cfg(), [240] * 4, [32 / 240] * 4) == []


def test_ledger_verb_reads_delta_and_accountant_from_the_run_dir(tmp_path, capsys):
    from dpfedlora.cli import main

    cfg = tiny_cfg(*QUICK, "privacy.delta=1e-6", "privacy.accountant=pld")
    summary = quiet(cfg, tmp_path / "r")
    assert main(["ledger", str(tmp_path / "r"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["delta"] == 1e-6 and doc["accountant"] == "pld"
    assert doc["max_epsilon"] == pytest.approx(summary["max_epsilon"], rel=1e-12)
    # an explicit --delta still wins, and gives a larger ε at a smaller δ
    assert main(["ledger", str(tmp_path / "r"), "--json", "--delta", "1e-9"]) == 0
    assert json.loads(capsys.readouterr().out)["max_epsilon"] > doc["max_epsilon"]


def test_ledger_verb_on_a_non_private_run_says_why_there_is_none(tmp_path, capsys):
    from dpfedlora.cli import main

    quiet(tiny_cfg(*QUICK, "privacy.mode=none"), tmp_path / "r")
    assert main(["ledger", str(tmp_path / "r")]) == 0
    assert "nothing private was released" in capsys.readouterr().out


def test_checkpoint_replace_fsyncs_its_directory(tmp_path, monkeypatch):
    import os

    from dpfedlora.federation.rundir import RunDir

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_mode), real(fd)))
    rd = RunDir(tmp_path / "r")
    (tmp_path / "r" / "checkpoint").mkdir(parents=True)
    rd.save_checkpoint({"round": 1})
    import stat

    assert [stat.S_ISDIR(m) for m in synced] == [False, True]  # the file, then its directory


def test_sigma_without_a_target_runs_uncapped_and_reports_the_ledger_epsilon(tmp_path):
    cfg = tiny_cfg(*QUICK, "privacy.noise_multiplier=1.0", "privacy.target_epsilon=null")
    assert cfg.privacy.budget == float("inf")
    summary = quiet(cfg, tmp_path / "r")
    eps = Ledger(tmp_path / "r" / "ledger.jsonl", accountant="rdp").max_epsilon(delta=1e-5)
    assert summary["stopped_reason"] == "completed" and summary["max_epsilon"] == eps > 0


def test_resume_accepts_a_checkpoint_older_than_new_default_keys(tmp_path):
    """A checkpoint written before a key existed resumes when the key keeps its default (the
    old run ran with that behaviour), and is refused when the key is set otherwise."""
    import torch

    from dpfedlora.federation import run
    from dpfedlora.federation.server import RunError
    from tests.helpers import tiny_cfg

    out = tmp_path / "r"
    cfg = tiny_cfg("train.local_steps=1")
    run(cfg, out, progress=False, log=lambda s: None, until_round=1)
    path = out / "checkpoint" / "state.pt"
    ckpt = torch.load(path, weights_only=False)
    del ckpt["config"]["model"]["dtype"]  # as written before model.dtype existed
    del ckpt["config"]["train"]["gradient_checkpointing"]
    ckpt["config_hash"] = "0" * 16
    torch.save(ckpt, path)
    with pytest.raises(RunError, match="model.dtype"):
        run(tiny_cfg("train.local_steps=1", "model.dtype=bfloat16"), out, resume=True,
            progress=False, log=lambda s: None)  # fmt: skip
    summary = run(cfg, out, resume=True, progress=False, log=lambda s: None)
    assert summary["rounds_completed"] == 2
