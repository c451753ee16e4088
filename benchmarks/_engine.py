"""Shared set-up of the step benchmarks: one tiny-config engine, hooked for round 1."""

from __future__ import annotations

from pathlib import Path

from dpfedlora.config import load_config
from dpfedlora.federation.setup import build_setup

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def prepared_engine(overrides: list[str]):
    """(engine, trainable params, client 0) with requires_grad and hooks set for round 1."""
    cfg = load_config(TINY, overrides)
    fed = build_setup(cfg)
    engine = fed.trainer
    names = fed.method.trainable_names(1)
    for n, p in engine.params.items():
        p.requires_grad_(n in names)
    engine._ensure_hooks(names)
    return engine, [engine.params[n] for n in names], fed.clients[0]
