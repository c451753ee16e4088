"""FlexLoRA with heterogeneous client ranks under DP (the FlexLoRA setting).

Clients hold different amounts of data and train adapters of different ranks: here the rank
follows the shard size (``method.rank_rule=shard_size``), or is given per client
(``--ranks 8,4,2``). The server sums full-size products Σ p_k s_k B_k A_k and sends each client
the best rank-r_k approximation (truncated SVD, all singular values in B).

    .venv/bin/python examples/heterogeneous_ranks.py --rounds 5
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dpfedlora import load_config, run

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "flexlora_hetero.yaml"))
    p.add_argument("--ranks", default="", help="comma-separated ranks per client (cycled)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default="runs/example-hetero")
    p.add_argument("--set", action="append", default=[], help="extra key=value overrides")
    args = p.parse_args(argv)

    over = [f"server.rounds={args.rounds}", *args.set]
    if args.ranks:
        over += ["method.rank_rule=", f"method.ranks=[{args.ranks}]"]
    cfg = load_config(args.config, over)
    summary = run(cfg, args.out, resume=True, progress=False)
    for c in summary["clients"]:
        print(f"client {c['cid']}: {c['examples']} examples, rank {c['rank']}")
    print(f"max ε = {summary['max_epsilon']:.3f}; final {summary['final']}")
    return summary


if __name__ == "__main__":
    main()
