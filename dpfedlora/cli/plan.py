"""``dpfedlora plan CONFIG``: predicted peak memory per DP step and the modes chosen, before
any data is read and without materialising the model (it is built on the meta device)."""

from __future__ import annotations

import argparse
import json

from . import CLIError, add_overrides


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="predict a config's peak memory per DP step and the modes chosen (reads no data)",
    )
    p.add_argument("config", metavar="CONFIG", help="YAML config (see configs/)")
    add_overrides(p, "model.dtype=bfloat16")
    p.add_argument(
        "--free-memory",
        type=float,
        metavar="GB",
        help="plan for this much free device memory, in GB (1e9 bytes), e.g. 141 for an H200 "
        "(default: what model.device has free now)",
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(handler=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..config import load_config

    if not Path(args.config).is_file():
        raise CLIError(f"argument CONFIG: no such file: {args.config!r}.")
    if args.free_memory is not None and not args.free_memory > 0:
        raise CLIError(f"argument --free-memory: must be > 0 GB. Found {args.free_memory}.")
    cfg = load_config(args.config, args.overrides)
    from ..federation.memory_plan import plan_config

    free = None if args.free_memory is None else int(args.free_memory * 1e9)
    report = plan_config(cfg, free=free)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    m = cfg.model
    quant = "" if m.quantization == "none" else f", {m.quantization}"
    print(
        f"plan for {cfg.name}: {m.name} ({report.parameters:,} parameters, {m.dtype}{quant}), "
        f"method {cfg.method.name}: {report.trainable:,} trainable (float32)"
    )
    print(
        f"  expected Poisson batch: {report.expected_batch:.1f} examples of {m.max_length} tokens"
    )
    for line in report.plan.lines():
        print(f"  {line}")
    for note in report.notes:
        print(f"  note: {note}")
    peak, free_b = report.plan.peak(), report.plan.free
    verdict = "fits" if peak <= free_b else "does NOT fit"
    print(f"  -> {verdict}: {peak / 1e9:.2f} GB predicted of {free_b / 1e9:.2f} GB free")
    return 0
