"""δ that cannot be a guarantee is refused before anything is written or spent: δ >= 0.1
everywhere a user names a δ (config, CLI, the accounting functions), and δ >= 1/n for the
smallest shard in a run unless `privacy.allow_large_delta` asks for research on δ itself."""

from __future__ import annotations

import pytest

from accounting import Ledger, calibrate_dpsgd, dpsgd_event, make_accountant
from dpfedlora.cli import main
from dpfedlora.config import ConfigError, PrivacyConfig
from dpfedlora.federation.advice import check_delta_for_shards, shard_warnings
from tests.helpers import TINY, tiny_cfg

# the tiny config: 1200 synthetic records, 960 train over 4 iid clients -> 240 each, 1/n = 0.00417
BETWEEN = "0.01"  # above 1/240, below the 0.1 cap
QUICK = ["server.rounds=1", "train.local_steps=1", "privacy.accountant=rdp"]


def _run(out, *sets: str) -> list[str]:
    argv = ["run", str(TINY), "--no-progress", "--out", str(out)]
    for s in sets:
        argv += ["--set", s]
    return argv


def _one_line_refusal(capsys, argv) -> str:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    captured = capsys.readouterr()
    lines = [x for x in captured.err.splitlines() if x.strip()]
    assert code == 2, captured
    assert "Traceback" not in captured.err
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("delta", ["0.5", "0.1"])
def test_run_refuses_a_delta_of_a_tenth_or_more_and_writes_nothing(tmp_path, capsys, delta):
    out = tmp_path / "out"
    line = _one_line_refusal(capsys, _run(out, f"privacy.delta={delta}"))
    assert "`privacy.delta` must be below 0.1" in line and f"Found {delta}" in line
    assert "1e-5" in line  # the fix
    assert not out.exists()


def test_run_refuses_a_delta_not_below_one_over_n_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    line = _one_line_refusal(capsys, _run(out, f"privacy.delta={BETWEEN}"))
    assert f"`privacy.delta` = {BETWEEN} is not below 1/n = 0.00417" in line
    assert "n = 240 records" in line and "privacy.allow_large_delta=true" in line
    assert not out.exists()


def test_the_opt_out_runs_with_a_loud_warning_but_keeps_the_cap(tmp_path, capsys):
    out = tmp_path / "out"
    argv = _run(out, f"privacy.delta={BETWEEN}", "privacy.allow_large_delta=true", *QUICK)
    assert main(argv) == 0
    assert "warning: PRIVACY NOT GUARANTEED" in capsys.readouterr().out
    assert (out / "ledger.jsonl").is_file()
    # the 0.1 cap is not lifted by the opt-out
    out2 = tmp_path / "out2"
    line = _one_line_refusal(
        capsys, _run(out2, "privacy.delta=0.2", "privacy.allow_large_delta=true")
    )
    assert "must be below 0.1" in line
    assert not out2.exists()


def test_non_private_runs_are_not_held_to_one_over_n():
    # no DP: δ guarantees nothing either way, and the run releases no ε
    assert check_delta_for_shards(tiny_cfg("privacy.mode=none", "privacy.delta=0.05"), [10]) == []


@pytest.mark.parametrize("sizes, refused", [([240, 40, 240], True), ([240, 30, 240], False)])
def test_one_over_n_of_the_smallest_shard(sizes, refused):
    cfg = tiny_cfg("privacy.delta=0.03")
    if refused:
        with pytest.raises(ConfigError, match=r"not below 1/n = 0.025 .*client 1, n = 40"):
            check_delta_for_shards(cfg, sizes)
        opted = tiny_cfg("privacy.delta=0.03", "privacy.allow_large_delta=true")
        (warning,) = check_delta_for_shards(opted, sizes)
        assert warning.startswith("PRIVACY NOT GUARANTEED")
        with pytest.raises(ConfigError, match="1/n"):  # the run's shard warnings raise it too
            shard_warnings(cfg, sizes, [0.1] * len(sizes))
    else:
        assert check_delta_for_shards(cfg, sizes) == []


def test_privacy_config_refuses_large_delta_and_checks_the_flag():
    with pytest.raises(ConfigError, match="`privacy.delta` must be below 0.1.*Found 0.5"):
        PrivacyConfig(delta=0.5, allow_large_delta=True)
    with pytest.raises(ConfigError, match="`privacy.allow_large_delta` must be true or false"):
        PrivacyConfig(allow_large_delta="yes")  # type: ignore[arg-type]
    assert PrivacyConfig(delta=0.09).delta == 0.09


@pytest.mark.parametrize(
    "argv",
    [
        ["epsilon", "--noise-multiplier", "1", "--sample-rate", "0.1", "--steps", "10"],
        ["calibrate", "--target-epsilon", "1", "--sample-rate", "0.1", "--steps", "10"],
    ],
    ids=["epsilon", "calibrate"],
)
@pytest.mark.parametrize("delta", ["0.2", "0.1"])
def test_accounting_verbs_refuse_a_large_delta(capsys, argv, delta):
    line = _one_line_refusal(capsys, [*argv, "--delta", delta])
    assert "argument --delta: must be below 0.1" in line and f"Found {float(delta)}" in line


def test_ledger_verb_refuses_a_large_delta(tmp_path, capsys):
    path = tmp_path / "ledger.jsonl"
    path.write_text("")
    line = _one_line_refusal(capsys, ["ledger", str(path), "--delta", "0.5"])
    assert "argument --delta: must be below 0.1" in line


def test_accounting_refuses_large_target_deltas_but_keeps_the_profile(tmp_path):
    event = dpsgd_event(noise_multiplier=1.0, sampling_rate=0.1, steps=10)
    acc = make_accountant("rdp").compose(event)
    for delta in (0.1, 0.5):
        with pytest.raises(ValueError, match="`delta` must be below 0.1"):
            acc.epsilon(delta)
        with pytest.raises(ValueError, match="`delta` must be below 0.1"):
            calibrate_dpsgd(target_epsilon=1.0, delta=delta, sampling_rate=0.1, steps=10)
    ledger = Ledger(tmp_path / "ledger.jsonl", accountant="rdp")
    ledger.spend("0", 1, "train", event, budget=100.0, delta=1e-5)
    for ask in (ledger.epsilons, ledger.max_epsilon):
        with pytest.raises(ValueError, match="below 0.1"):
            ask(delta=0.2)
    with pytest.raises(ValueError, match="below 0.1"):
        ledger.epsilon("0", delta=0.2)
    # the privacy profile δ(ε) is internal maths, not a guarantee asked for: any δ comes back
    assert 0.1 < make_accountant("rdp").compose(event).delta(0.01) <= 1.0
