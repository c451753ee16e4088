import json
import subprocess
import sys

import pytest

from accounting import Ledger, dpsgd_event


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "dpfedlora", *args], capture_output=True, text=True, timeout=120
    )


def test_epsilon_json_matches_reference():
    out = run_cli(
        "epsilon",
        "--noise-multiplier",
        "1.0",
        "--sample-rate",
        "0.01",
        "--steps",
        "1000",
        "--delta",
        "1e-5",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) == {"epsilon", "delta", "accountant", "risk"}
    assert 1.80 <= data["epsilon"] <= 1.85
    assert data["accountant"] == "fastpld" and data["delta"] == 1e-5


def test_calibrate_json():
    out = run_cli(
        "calibrate",
        "--target-epsilon",
        "3",
        "--sample-rate",
        "0.01",
        "--steps",
        "1000",
        "--delta",
        "1e-5",
        "--accountant",
        "rdp",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert 2.97 <= data["epsilon"] <= 3.0
    assert data["noise_multiplier"] > 0 and data["accountant"] == "rdp"


def test_ledger_json(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path, accountant="pld")
    ledger.record(
        "0", 1, "train", dpsgd_event(noise_multiplier=1.0, sampling_rate=0.01, steps=1000)
    )
    ledger.record(
        "1", 1, "train", dpsgd_event(noise_multiplier=2.0, sampling_rate=0.01, steps=1000)
    )
    out = run_cli("ledger", str(path), "--accountant", "pld", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data["clients"]) == {"0", "1"}
    assert data["clients"]["1"] < data["clients"]["0"]
    assert data["max_epsilon"] == data["epsilon"] == pytest.approx(1.828, abs=0.005)
    text = run_cli("ledger", str(path), "--accountant", "pld")
    assert "max ε = 1.82" in text.stdout


BASE = ["--noise-multiplier", "1", "--sample-rate", "0.01", "--steps", "100", "--delta", "1e-5"]


def _replace(flag, value):
    args = list(BASE)
    args[args.index(flag) + 1] = value
    return args


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["epsilon", *_replace("--sample-rate", "1.5")],
            "argument --sample-rate: must be in (0, 1]. Found 1.5.",
        ),
        (
            ["epsilon", *_replace("--sample-rate", "0")],
            "argument --sample-rate: must be in (0, 1]. Found 0.",
        ),
        (
            ["epsilon", *_replace("--noise-multiplier", "0")],
            "argument --noise-multiplier: must be a positive finite number. Found 0.",
        ),
        (
            ["epsilon", *_replace("--noise-multiplier", "-2")],
            "argument --noise-multiplier: must be a positive finite number. Found -2.",
        ),
        (
            ["epsilon", *_replace("--delta", "0")],
            "argument --delta: must be in (0, 0.1), typically below 1/n. Found 0.",
        ),
        (
            ["epsilon", *_replace("--delta", "1")],
            "argument --delta: must be below 0.1 (a δ this large is no guarantee",
        ),
        (
            ["epsilon", *_replace("--steps", "0")],
            "argument --steps: must be an integer >= 1. Found 0.",
        ),
        (
            ["epsilon", *_replace("--steps", "ten")],
            "argument --steps: must be an integer >= 1. Found 'ten'.",
        ),
        (["epsilon", *BASE, "--accountant", "gdp"], "argument --accountant: invalid choice: 'gdp'"),
        (
            [
                "calibrate",
                "--target-epsilon",
                "-1",
                "--sample-rate",
                "0.1",
                "--steps",
                "5",
                "--delta",
                "1e-5",
            ],
            "argument --target-epsilon: must be a positive finite number. Found -1.",
        ),
        (["ledger", "missing.jsonl"], "argument PATH: no such file or directory: 'missing.jsonl'"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, expected):
    out = run_cli(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert expected in lines[0]
    assert "Traceback" not in out.stderr


def test_corrupt_ledger_exits_2(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text('{"client": "0"}\n{"broken\n{"x": 1}\n')
    out = run_cli("ledger", str(path))
    assert out.returncode == 2
    assert "line 1" in out.stderr and "Traceback" not in out.stderr
