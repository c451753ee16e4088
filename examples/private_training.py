"""A private federated fine-tuning with an ε budget, through the Python API.

Loads the quickstart config (MiniLM on SMS spam, 5 non-IID clients), sets the budget, runs, and
prints ε per client from the run's ledger. Every release was checked against the budget and
recorded before it happened; a client that would cross the budget is skipped.

    .venv/bin/python examples/private_training.py --epsilon 3 --rounds 5
"""

from __future__ import annotations

import argparse
from pathlib import Path

from accounting import Ledger
from dpfedlora import load_config, run

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    p.add_argument("--epsilon", type=float, default=3.0, help="ε budget per client (δ from config)")
    p.add_argument("--rounds", type=int, default=5, help="federated rounds")
    p.add_argument("--out", default="runs/example-private", help="run directory")
    p.add_argument("--set", action="append", default=[], help="extra key=value overrides")
    args = p.parse_args(argv)

    cfg = load_config(
        args.config,
        [f"privacy.target_epsilon={args.epsilon}", f"server.rounds={args.rounds}", *args.set],
    )
    summary = run(cfg, args.out, resume=True, progress=False)

    ledger = Ledger(Path(args.out) / "ledger.jsonl", accountant=cfg.privacy.accountant)
    print(f"σ = {summary['noise_multiplier']:.3f}; ε per client at δ = {cfg.privacy.delta:g}:")
    for client, eps in ledger.epsilons(delta=cfg.privacy.delta).items():
        print(f"  client {client}: ε = {eps:.3f} (budget {args.epsilon})")
    print(f"final: {summary['final']}")
    return summary


if __name__ == "__main__":
    main()
