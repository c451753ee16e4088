"""``base:`` inheritance: method configs are the quickstart plus their differences."""

from __future__ import annotations

from dataclasses import fields

import pytest

from dpfedlora.config import ConfigError, load_config, to_dict
from dpfedlora.methods import METHODS
from tests.helpers import ROOT

QUICKSTART = ROOT / "configs" / "quickstart.yaml"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_method_config_is_the_quickstart_but_its_method(name):
    cfg = load_config(ROOT / "configs" / "methods" / f"{name}.yaml")
    base = load_config(QUICKSTART)
    assert cfg.method.name == name and cfg.name == name
    for section in ("model", "data", "privacy", "train", "server"):
        assert getattr(cfg, section) == getattr(base, section), section
    # the file is short: it states its differences only
    text = (ROOT / "configs" / "methods" / f"{name}.yaml").read_text()
    assert text.count("\n") <= 12


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_chain_merges_section_by_section(tmp_path):
    _write(tmp_path, "a.yaml", "seed: 3\ntrain:\n  lr: 0.5\n  local_steps: 7\n")
    _write(tmp_path, "b.yaml", "base: a.yaml\ntrain:\n  lr: 0.25\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    c = _write(sub, "c.yaml", "base: ../b.yaml\nserver:\n  rounds: 9\n")
    cfg = load_config(c, ["train.local_steps=2"])
    assert (cfg.seed, cfg.train.lr, cfg.train.local_steps, cfg.server.rounds) == (3, 0.25, 2, 9)
    assert "base" not in to_dict(cfg)  # the resolved config names no base


def test_switching_method_over_a_base_drops_the_old_methods_own_keys(tmp_path):
    _write(tmp_path, "sb.yaml", "method:\n  name: fedsb\n  rank: 2\n  init: public\n")
    child = _write(tmp_path, "ffa.yaml", "base: sb.yaml\nmethod:\n  name: ffa\n")
    cfg = load_config(child)
    assert cfg.method.name == "ffa" and cfg.method.rank == 2  # shared keys are kept
    shared = {f.name for f in fields(type(cfg.method))}
    assert "init" not in shared


def test_base_errors_name_the_file_and_the_fix(tmp_path):
    loop_a = _write(tmp_path, "x.yaml", "base: y.yaml\n")
    _write(tmp_path, "y.yaml", "base: x.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(loop_a)
    missing = _write(tmp_path, "m.yaml", "base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(missing)
    bad = _write(tmp_path, "n.yaml", "base: 3\n")
    with pytest.raises(ConfigError, match="must be the path"):
        load_config(bad)
    unknown = _write(tmp_path, "u.yaml", "base: y2.yaml\n")
    _write(tmp_path, "y2.yaml", "train:\n  lrr: 1\n")
    with pytest.raises(ConfigError, match="train.lrr"):
        load_config(unknown)
