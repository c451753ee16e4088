"""Causal-LM loss: the LM head at the loss positions only (``logits_to_keep``) vs every position.

One forward and backward of the response loss on a batch of 16 SMS prompts, FFA-LoRA on the top
2 layers, alternating the two forms in one process (median of ``--repeats`` pairs, after one
warm-up pair); both losses are checked equal. SmolLM2-135M-Instruct by default (weights from
``make .venv/.weights-examples``); ``--config`` takes any causal-LM config.

    .venv/bin/python benchmarks/bench_lm_head.py
    .venv/bin/python benchmarks/bench_lm_head.py --config configs/causal_lm_smollm2_top2.yaml \
        --batch 32
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/causal_lm_smollm2_top2.yaml")
    ap.add_argument("--batch", type=int, default=16, help="examples per step")
    ap.add_argument("--repeats", type=int, default=5, help="timed pairs (median reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from dpfedlora import tasks
    from dpfedlora.config import load_config
    from dpfedlora.federation.setup import build_setup

    # a small iid subset: client 0 holds at least a batch; the frozen-prefix cache stays on
    data = {"num_examples": 8 * args.batch, "partition": {"kind": "iid"}}
    cfg = load_config(args.config, {"data": data})
    setup = build_setup(cfg)
    params = dict(setup.model.named_parameters())
    for n in setup.method.trainable_names(1):
        params[n].requires_grad_(True)
    batch = setup.clients[0].data.subset(range(args.batch)).trimmed()
    kept = tasks.forward_logits

    def every_position(model, b, keep):  # the head over every position, then the loss's
        return model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, keep]

    times: dict[str, list[float]] = {"kept positions": [], "every position": []}
    losses = {}
    for rep in range(args.repeats + 1):
        for name, fn in (("kept positions", kept), ("every position", every_position)):
            tasks.forward_logits = fn
            t0 = time.perf_counter()
            loss = tasks._causal_lm_loss(setup.model, batch)
            loss.sum().backward()
            if rep:  # the first pair warms up
                times[name].append(time.perf_counter() - t0)
            losses[name] = loss.detach()
    tasks.forward_logits = kept
    torch.testing.assert_close(losses["kept positions"], losses["every position"])
    med = {k: statistics.median(v) for k, v in times.items()}
    t = batch.input_ids.shape[1]
    k = int((batch.labels[:, 1:] != -100).any(0).sum())
    print(f"{cfg.model.name}, batch {args.batch} x {t} tokens, loss read at {k} positions")
    for name, s in med.items():
        print(f"  {name:15s} {s:.3f} s per forward+backward (median of {args.repeats})")
    print(f"  every / kept = {med['every position'] / med['kept positions']:.2f}x")


if __name__ == "__main__":
    main()
