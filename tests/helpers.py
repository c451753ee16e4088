"""Shared builders for tests: the tiny config with overrides, and its set-up."""

from __future__ import annotations

from pathlib import Path

from dpfedlora.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
ALL_METHODS = ["fedit", "ffa", "rolora", "fedsb", "flexlora", "fedex", "full"]


def tiny_cfg(*overrides: str):
    return load_config(TINY, list(overrides))


def tiny_setup(*overrides: str):
    """Everything a run builds before round 1 (method, model, clients, trainer), no run dir."""
    from dpfedlora.federation.setup import build_setup

    return build_setup(tiny_cfg(*overrides))
