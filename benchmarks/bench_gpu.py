"""DP vs non-private training throughput and peak memory on the hybrid path.

Random-weight models shaped like Llama-3.2-1B and Llama-3.1-8B (no download), LoRA r = 16 on
all attention and MLP projections (FedIT: A and B train), a frozen base in bfloat16 (or 4-bit
with bitsandbytes), sequences of 512 tokens, one physical batch per step. For each setting the
script times non-private steps, then DP steps (hooks, then ghost clipping) on the same model,
then non-private steps again (the faster non-private median is the reference), and prints
tokens/s, the DP / non-private ratio and peak memory (CUDA's max allocated, or the
process's peak RSS on CPU). ``--device cpu --size tiny`` runs a test-sized shape, so the script
itself is tested in CI.

    .venv/bin/python benchmarks/bench_gpu.py --device cpu --size tiny
    python benchmarks/bench_gpu.py --size 1b 8b --quant none 4bit      # on a GPU
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from dpfedlora.config import load_config
from dpfedlora.data.tensors import TensorData
from dpfedlora.noise import SeededNoise

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
SIZES = {
    "tiny": ("builtin:llama-tiny-shape", 64, 4),  # (model, sequence length, batch)
    "1b": ("builtin:llama-3.2-1b-shape", 512, 8),
    "8b": ("builtin:llama-3.1-8b-shape", 512, 8),
}
TARGETS = "[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"


def _cfg(size: str, args, mode: str, private: bool):
    name, seq, batch = SIZES[size]
    over = [
        f"model.name={name}", "model.task=causal_lm", "model.train_head=false",
        f"model.target_modules={TARGETS}", f"model.max_length={seq}",
        f"model.dtype={args.dtype}", f"model.device={args.device}",
        "method.name=fedit", "method.rank=16", "method.alpha=32",
        f"train.batch_size={batch}", "train.optimizer=adamw", "train.lr=1e-4",
        f"train.gradient_checkpointing={str(args.checkpointing).lower()}",
        f"privacy.grad_sample_mode={mode}",
    ]  # fmt: skip
    over += ["privacy.noise_multiplier=1.0"] if private else ["privacy.mode=none"]
    return load_config(TINY, over)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time(trainer, params, batch, steps: int, private: bool) -> float:
    opt = trainer.method.make_optimizer(params, trainer.cfg.train)
    if private:
        opt = trainer.dp_optimizer(
            opt, SeededNoise(0, "bench-gpu"), noise_multiplier=1.0, expected_batch=len(batch)
        )
    times = []
    for i in range(steps + 1):  # the first step warms up (allocations, kernels)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        t0 = time.perf_counter()
        trainer.step(opt, batch, params)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(size: str, quant: str, args) -> list[dict]:
    from dpfedlora.client.trainer import Trainer
    from dpfedlora.federation.setup import adapt_model
    from dpfedlora.methods import make_method
    from dpfedlora.models.builders import build_model

    plain_cfg = _cfg(size, args, "hooks", private=False)
    if quant != "none":
        plain_cfg = replace(plain_cfg, model=replace(plain_cfg.model, quantization=quant))
    method = make_method(plain_cfg.method, seed=0)
    built = build_model(plain_cfg.model, seed=0)
    model = adapt_model(plain_cfg, method, built)  # as a run prepares it
    names = method.trainable_union()
    _, seq, batch_size = SIZES[size]
    vocab = model.config.vocab_size if hasattr(model, "config") else 512
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (batch_size, seq), generator=g)
    batch = TensorData(ids, torch.ones_like(ids), ids.clone())
    rows = []
    plain = Trainer(plain_cfg, method, model, expected_batch=batch_size)
    params = [plain.params[n] for n in names]
    for p in params:
        p.requires_grad_(True)
    device = plain.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_plain = _time(plain, params, batch, args.steps, private=False)
    rows.append(_row(size, quant, "non-private", t_plain, None, batch_size * seq, device))
    for mode in args.modes:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        d = _to_private(plain_cfg, mode)
        trainer = Trainer(d, method, model, expected_batch=batch_size)
        for p in params:
            p.requires_grad_(True)
        trainer._ensure_hooks(names)
        t_dp = _time(trainer, params, batch, args.steps, private=True)
        trainer.wrapped.remove_hooks()
        rows.append(_row(size, quant, f"DP {mode}", t_dp, t_plain, batch_size * seq, device))
    # non-private again, after the DP runs (hooks removed): load drifts on a shared machine, so
    # every ratio is against the faster of the two non-private measurements
    again = _time(plain, params, batch, args.steps, private=False)
    if again < t_plain:
        t_plain = rows[0]["seconds_per_step"] = again
        rows[0]["tokens_per_s"] = batch_size * seq / again
        for r in rows[1:]:
            r["ratio_to_non_private"] = again / r["seconds_per_step"]
    del model, built, plain
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def _to_private(cfg, mode: str):
    privacy = replace(
        cfg.privacy, mode="sample", noise_multiplier=1.0, target_epsilon=None, grad_sample_mode=mode
    )
    return replace(cfg, privacy=privacy)


def _row(size, quant, what, seconds, plain_seconds, tokens, device) -> dict:
    return {
        "size": size,
        "quantization": quant,
        "run": what,
        "seconds_per_step": seconds,
        "tokens_per_s": tokens / seconds,
        "ratio_to_non_private": None if plain_seconds is None else plain_seconds / seconds,
        "peak_mb": _peak_mb(device),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--size", nargs="+", default=["1b"], choices=sorted(SIZES))
    p.add_argument("--quant", nargs="+", default=["none"], choices=["none", "4bit", "8bit"])
    p.add_argument("--modes", nargs="+", default=["hooks", "ghost"], choices=["hooks", "ghost"])
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--steps", type=int, default=5, help="timed steps per setting (median)")
    p.add_argument("--checkpointing", action="store_true", help="reentrant checkpointing")
    p.add_argument("--json", action="store_true", help="one JSON line per row")
    args = p.parse_args()
    for size in args.size:
        for quant in args.quant:
            for r in bench(size, quant, args):
                if args.json:
                    print(json.dumps(r), flush=True)
                    continue
                ratio = r["ratio_to_non_private"]
                extra = "" if ratio is None else f", DP/non-private throughput {ratio:.2f}x"
                print(
                    f"{r['device']} {r['size']} {r['quantization']} {r['run']}: "
                    f"{r['tokens_per_s']:.0f} tokens/s ({1e3 * r['seconds_per_step']:.1f} ms/step)"
                    f", peak {r['peak_mb']:.0f} MB{extra}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
