"""`accounting` and the accounting CLI verbs must never import torch (it costs seconds)."""

import json
import subprocess
import sys

import pytest


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_accounting_is_torch_free():
    mods = _modules_after(
        "import accounting\n"
        "from accounting import *\n"
        "for b in ('prv', 'pld', 'rdp'):\n"
        "    ev = dpsgd_event(noise_multiplier=1, sampling_rate=0.01, steps=10)\n"
        "    make_accountant(b).compose(ev).epsilon(1e-5)\n"
    )
    assert "torch" not in mods
    assert "opacus" not in mods


@pytest.mark.parametrize(
    "backend, absent",
    [("rdp", {"prv_accountant", "torch"}), ("prv", {"dp_accounting", "torch"})],
)
def test_cli_verbs_import_only_their_backend(backend, absent, tmp_path):
    mods = _modules_after(
        "from dpfedlora.cli import main\n"
        f"main(['epsilon', '--noise-multiplier', '1', '--sample-rate', '0.01', '--steps', '10', "
        f"'--delta', '1e-5', '--accountant', '{backend}'])\n"
    )
    assert not (absent & mods), absent & mods
