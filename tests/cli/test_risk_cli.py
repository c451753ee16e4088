"""Attack risk on the accounting verbs: ``epsilon`` and ``ledger`` report it next to ε,
``calibrate --target-tpr --at-fpr`` calibrates σ to it; bad inputs exit 2 with one line."""

from __future__ import annotations

import json

import pytest

from accounting import Ledger, attack_risk, dpsgd_event, make_accountant, tpr_at_fpr
from dpfedlora.cli import main

DPSGD = ["--sample-rate", "0.01", "--steps", "1000", "--delta", "1e-5"]


def _json(capsys, argv: list[str]) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_epsilon_reports_risk_at_the_default_and_chosen_fprs(capsys):
    doc = _json(capsys, ["epsilon", "--noise-multiplier", "1", *DPSGD])
    acc = make_accountant().compose(
        dpsgd_event(noise_multiplier=1.0, sampling_rate=0.01, steps=1000)
    )
    assert doc["risk"] == attack_risk(acc).to_json()
    assert list(doc["risk"]["tpr_at_fpr"]) == ["0.001", "0.01", "0.1"]
    assert 0.004 < doc["risk"]["tpr_at_fpr"]["0.001"] < 0.0042
    doc = _json(capsys, ["epsilon", "--noise-multiplier", "1", *DPSGD, "--fpr", "0.05", "0.2"])
    assert list(doc["risk"]["tpr_at_fpr"]) == ["0.05", "0.2"]
    assert main(["epsilon", "--noise-multiplier", "1", *DPSGD]) == 0
    text = capsys.readouterr().out
    risk = attack_risk(acc)  # the backend's numbers, as the text prints them
    assert f"TPR ≤ {risk.tpr_at_fpr[0.001]:.4f} at FPR 0.001" in text
    assert f"advantage ≤ {risk.advantage:.4f}" in text


def test_calibrate_to_risk_meets_the_target_and_reports_the_equivalent_epsilon(capsys):
    argv = ["calibrate", "--target-tpr", "0.05", "--at-fpr", "0.01", *DPSGD]
    doc = _json(capsys, argv)
    sigma = doc["noise_multiplier"]
    acc = make_accountant().compose(
        dpsgd_event(noise_multiplier=sigma, sampling_rate=0.01, steps=1000)
    )
    # an independent evaluation of the σ it returned: within 5 % below the target, never above
    assert 0.0475 <= tpr_at_fpr(acc, 0.01) <= 0.05
    assert doc["tpr"] == tpr_at_fpr(acc, 0.01)
    assert doc["epsilon"] == acc.epsilon(1e-5) and doc["delta"] == 1e-5
    assert set(doc["risk"]["tpr_at_fpr"]) == {"0.001", "0.01", "0.1"}
    assert doc["target_tpr"] == 0.05 and doc["at_fpr"] == 0.01


def test_calibrate_to_risk_in_data_units(capsys):
    units = ["--dataset-size", "1000", "--batch-size", "50", "--epochs", "2"]
    argv = ["calibrate", "--target-tpr", "0.2", "--at-fpr", "0.01", "--delta", "1e-5", *units]
    argv += ["--accountant", "rdp"]
    doc = _json(capsys, argv)
    assert doc["sampling_rate"] == 0.05 and doc["steps"] == 40
    assert doc["tpr"] <= 0.2 and doc["accountant"] == "rdp"
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "q = 50 / 1000" in out and "the same σ gives ε =" in out


def test_ledger_reports_risk_per_client(tmp_path, capsys):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    ledger.record(
        "0", 1, "train", dpsgd_event(noise_multiplier=1.0, sampling_rate=0.01, steps=1000)
    )
    ledger.record("1", 1, "train", dpsgd_event(noise_multiplier=4.0, sampling_rate=0.01, steps=100))
    doc = _json(capsys, ["ledger", str(path), "--fpr", "0.01"])
    assert set(doc["risk"]) == {"0", "1"}
    assert doc["risk"]["0"] == ledger.risk("0", fprs=(0.01,)).to_json()
    assert doc["risk"]["1"]["advantage"] < doc["risk"]["0"]["advantage"]
    assert doc["max_risk"] == doc["risk"]["0"]
    assert main(["ledger", str(path)]) == 0
    out = capsys.readouterr().out
    assert "TPR@0.001" in out and "advantage" in out and "max attack risk" in out


BAD = [
    ("fpr-zero", ["epsilon", "--noise-multiplier", "1", *DPSGD, "--fpr", "0"], "--fpr"),
    ("fpr-one", ["epsilon", "--noise-multiplier", "1", *DPSGD, "--fpr", "1"], "--fpr"),
    ("fpr-word", ["epsilon", "--noise-multiplier", "1", *DPSGD, "--fpr", "low"], "--fpr"),
    ("fpr-nan", ["epsilon", "--noise-multiplier", "1", *DPSGD, "--fpr", "nan"], "--fpr"),
    ("tpr-without-fpr", ["calibrate", "--target-tpr", "0.05", *DPSGD], "--at-fpr"),
    ("fpr-without-tpr", ["calibrate", "--at-fpr", "0.01", *DPSGD], "--target-tpr"),
    ("tpr-below-fpr", ["calibrate", "--target-tpr", "0.01", "--at-fpr", "0.05", *DPSGD],
     "--target-tpr"),
    ("tpr-one", ["calibrate", "--target-tpr", "1", "--at-fpr", "0.05", *DPSGD], "--target-tpr"),
    ("both-targets", ["calibrate", "--target-tpr", "0.05", "--at-fpr", "0.01",
                      "--target-epsilon", "3", *DPSGD], "--target-epsilon"),
    ("no-target", ["calibrate", *DPSGD], "--target-tpr"),
    ("ledger-fpr", ["ledger", "TMP", "--fpr", "2"], "--fpr"),
]  # fmt: skip


@pytest.mark.parametrize("case_id,argv,needle", BAD, ids=[c[0] for c in BAD])
def test_bad_risk_inputs_exit_2_with_one_line(tmp_path, capsys, case_id, argv, needle):
    argv = [a.replace("TMP", str(tmp_path)) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2, (case_id, err)
    assert len(lines) == 1 and "Traceback" not in err, lines
    assert needle in lines[0], lines[0]
