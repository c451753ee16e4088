"""Shared builders for tests: the tiny config with overrides, and a federation in a temp dir."""

from __future__ import annotations

from pathlib import Path

from dpfedlora.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
ALL_METHODS = ["fedit", "ffa", "rolora", "fedsb", "flexlora", "fedex", "full"]
EXACT_METHODS = ["ffa", "rolora", "fedsb", "flexlora", "fedex", "full"]


def tiny_cfg(*overrides: str):
    return load_config(TINY, list(overrides))


def federation(tmp_path, *overrides: str):
    from dpfedlora.federation import Federation

    return Federation(tiny_cfg(*overrides), tmp_path / "run", log=lambda s: None)
