"""Label-word diagnostics of a finished causal-LM run: AUC of the spam-vs-ham log-odds, balanced
accuracy of the raw and the content-free-calibrated argmax, on the run's held-out set.

    .venv/bin/python examples/label_word_diagnostics.py runs/lm/fedsb-b

The oracle threshold line picks the best threshold *on the held-out set itself*: a diagnostic of
how much a decision rule could recover, never a result to report. Binary label words only.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch
from scipy.stats import mannwhitneyu

from dpfedlora.calibration import calibration_inputs, label_log_prior
from dpfedlora.data.load import load_data
from dpfedlora.export import load_run
from dpfedlora.tasks import TASKS, label_word_log_probs


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="a finished `dpfedlora run` directory (causal LM)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = load_run(args.run_dir)
    cfg, tok = run.cfg, run.built.tokenizer
    _, held_out = load_data(cfg.data, cfg.model, seed=cfg.data_seed, tokenizer=tok)
    ids = TASKS[cfg.model.task].label_token_ids(tok, cfg.data, cfg.model)
    model = run.model.eval()
    scores = []
    with torch.no_grad():
        for i in range(0, len(held_out), 32):
            b = held_out.subset(range(i, min(i + 32, len(held_out)))).trimmed()
            logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
            scores.append(label_word_log_probs(logits, b, ids))
        s = torch.cat(scores)
        # the content-free prior whatever the run used (its own decision rule is in its summary)
        data = dataclasses.replace(cfg.data, label_calibration="content_free")
        prior = label_log_prior(model, calibration_inputs(tok, data, cfg.model), ids)
    y = held_out.classes
    d = (s[:, 1] - s[:, 0]).numpy()

    def balanced(pred: np.ndarray) -> float:
        return float(np.mean([np.mean(pred[y == c] == c) for c in (0, 1)]))

    auc = mannwhitneyu(d[y == 1], d[y == 0]).statistic / ((y == 1).sum() * (y == 0).sum())
    oracle = max(balanced((d > t).astype(int)) for t in np.unique(d))
    print(f"held-out {len(y)} examples | AUC {auc:.3f}")
    print(f"balanced accuracy: raw {balanced(s.argmax(1).numpy()):.3f}, "
          f"content-free calibrated {balanced((s - prior).argmax(1).numpy()):.3f}")  # fmt: skip
    print(f"oracle threshold on the held-out set (diagnostic only): {oracle:.3f}")
    return {"auc": float(auc), "oracle": oracle}


if __name__ == "__main__":
    main()
