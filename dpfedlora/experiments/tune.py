"""Hyperparameter tuning that spends no privacy: ``dpfedlora tune SWEEP --key K --values ...``.

Choosing a hyperparameter by training on the private shards and keeping the best run is itself a
release whose privacy cost the per-run ε does not cover (Papernot & Steinke, ICLR 2022). So
every candidate here trains *proxy clients* on the public share of the pool
(``data.public_fraction``, which no private shard holds) and is scored on the public validation
part of that share (``data.pool: public``); the private shards and the held-out test set are
never read.

A proxy imitates a private cell's noise, not its privacy: same Poisson rate q, steps and
rounds, and σ' = σ · B̄'/B̄, where σ is what the private cell calibrates for its target ε and B̄,
B̄' are the mean expected batches q·n of the private and proxy clients. Then the noise on each
averaged clipped gradient, σ·C/B, equals the private cell's; at a fixed σ/B the trajectory of
DP-SGD, and the best learning rate, carry across batch sizes (Sander, Stock and Sablayrolles,
ICML 2023). Non-private cells get their own candidates (σ = 0).

Output (``<out>``): the candidates as sweep cells (resumable, in parallel), ``tune.json`` (every
candidate's validation metrics and the choice) and a tuned copy of the sweep file whose
``cases`` pin the chosen value per case and target ε.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, load_config, nest_overrides
from .sweep import cell_of, cell_overrides, load_sweep, read_sweep, run_sweep

__all__ = ["Candidate", "best", "expand_cases", "proxy_noise", "tune", "tune_table", "tuned_cases"]

EPS_KEY = "privacy.target_epsilon"


@dataclass(frozen=True)
class Candidate:
    case: int  # index into the sweep's cases
    target: float  # the private cell's target ε (inf: non-private)
    value: Any  # the tuned key's value
    overrides: tuple[tuple[str, Any], ...]  # the proxy run's overrides on the base


def _is_inf(v: Any) -> bool:
    return cell_overrides(EPS_KEY, v)[0][0] == "privacy.mode"


def _target(v: Any) -> float:
    return math.inf if _is_inf(v) else float(v)


def proxy_noise(base: Path, overrides: list[tuple[str, Any]], plans: dict | None = None) -> float:
    """σ' of the proxy for the private cell ``overrides``: σ · B̄(proxy) / B̄(private).
    ``plans`` memoises the clients' plans across calls (they depend on the data, not the
    method's adapters, so every case of a sweep usually shares them)."""
    from ..config import to_dict
    from ..federation.planning import plan_noise
    from ..federation.setup import client_plans
    from ..methods import make_method

    cfg = load_config(base, nest_overrides(overrides))
    method = make_method(cfg.method, seed=cfg.seed)
    plans = {} if plans is None else plans
    # what the plans read: the data, the training schedule, the tokenizer, the method's share
    key = json.dumps(
        [to_dict(cfg)[k] for k in ("data", "train", "model", "seed")] + [method.public_fraction()],
        sort_keys=True, default=str,
    )  # fmt: skip
    if key not in plans:
        plans[key] = client_plans(cfg, pools=("private", "public"))
    private, proxy = plans[key]["private"], plans[key]["public"]
    sigma = plan_noise(
        cfg.privacy,
        rounds=cfg.server.rounds,
        rates_and_steps=[(q, steps) for _, q, steps in private],
        init=method.init_event(True),
    )
    batches = [sum(n * q for n, q, _ in p) / len(p) for p in (proxy, private)]
    return sigma * batches[0] / batches[1]


def _case_targets(base: Path, grid: dict, case: dict) -> list[float]:
    """The target ε values a case's cells take (inf: non-private), sorted."""
    targets = [case[EPS_KEY]] if EPS_KEY in case else grid.get(EPS_KEY, [])
    if not targets:
        cfg = load_config(
            base, nest_overrides([o for k, v in case.items() for o in cell_overrides(k, v)])
        )
        targets = [cfg.privacy.target_epsilon if cfg.privacy.private else math.inf]
    return sorted({_target(t) for t in targets})


def expand_cases(grid: dict, cases: list[dict], key: str) -> list[dict]:
    """Every case crossed with the grid's other multi-valued keys (not ε, seed or the tuned
    key): each combination is tuned on its own, so it becomes a case of its own."""
    out = []
    for case in cases:
        multi = [k for k, v in grid.items() if len(v) > 1 and k not in (EPS_KEY, "seed", key)]
        multi = [k for k in multi if k not in case]
        for combo in itertools.product(*(grid[k] for k in multi)):
            out.append({**case, **dict(zip(multi, combo))})
    return out


def _settings(
    base: Path, grid: dict, cases: list[dict], key: str, epsilons: list[float] | None
) -> list[tuple[int, dict[str, Any], float]]:
    """(case index, the case's fixed keys without ε, target ε) of every setting to tune: each
    private target of the case (or ``epsilons``, when given) and the non-private one."""
    settings = []
    for i, case in enumerate(cases):
        fixed = {k: v[0] for k, v in grid.items() if k not in case and k not in (EPS_KEY, key)}
        fixed.update({k: v for k, v in case.items() if k not in (EPS_KEY, key)})
        targets = _case_targets(base, grid, case)
        private = [t for t in targets if math.isfinite(t)]
        if epsilons is not None and private:
            private = sorted(epsilons)
        for t in [*private, *(t for t in targets if math.isinf(t))]:
            settings.append((i, fixed, t))
    return settings


def _candidates(base: Path, settings, key: str, values: list[Any], log) -> list[Candidate]:
    out, plans = [], {}
    for i, fixed, target in settings:
        common = [o for k, v in fixed.items() for o in cell_overrides(k, v)]
        # refuses a sweep without a public share, or a bad key or value, before any model is
        # built
        for v in values:
            load_config(base, nest_overrides([*common, ("data.pool", "public"), (key, v)]))
        if math.isinf(target):
            noise = [("privacy.mode", "none"), (EPS_KEY, None)]
        else:
            sigma = proxy_noise(base, [*common, (EPS_KEY, target)], plans)
            log(f"case {i} at ε = {target:g}: proxy σ' = {sigma:.4f}")
            noise = [(EPS_KEY, None), ("privacy.noise_multiplier", float(sigma))]
        for v in values:
            overrides = (*common, *noise, ("data.pool", "public"), (key, v))
            out.append(Candidate(i, target, v, overrides))
    return out


def _check_one_public_share(sweep_file: Path) -> None:
    """Every cell of the sweep must hold the same public share as the proxies: the share is
    drawn with the data seed (or ``data.public_seed``), so a cell with another one could hold
    the tuning records in its private shards, and the chosen value would depend on them."""
    base, cells = load_sweep(sweep_file)
    seeds = {load_config(base, nest_overrides(list(c.overrides))).public_seed for c in cells}
    if len(seeds) > 1:
        raise ConfigError(
            f"tune: the sweep's cells draw their public share with {len(seeds)} different data "
            f"seeds {sorted(seeds)} (data.seed follows seed unless set), so the records tuned on "
            "would be private in some cells. Fix the split (`data.seed: [0]` in the grid), or "
            "fix the public share alone (`data.public_seed: [0]`)."
        )


def _score(cell_dir: Path) -> dict[str, Any] | None:
    path = cell_dir / "summary.json"
    if not path.exists():
        return None
    final = json.loads(path.read_text())["final"]
    return {m: final[m] for m in ("balanced_accuracy", "loss") if m in final}


def best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Highest validation balanced accuracy; ties (and tasks without it) by lower loss."""
    scored = [r for r in rows if r["metrics"]]
    if not scored:
        return None

    def rank(r: dict[str, Any]) -> tuple[float, float]:
        m = r["metrics"]
        loss = m.get("loss", math.inf)
        return (m.get("balanced_accuracy", 0.0), -loss if math.isfinite(loss) else -math.inf)

    return max(scored, key=rank)


def tuned_cases(
    cases: list[dict], targets: list[list[float]], key: str, choice: dict[tuple[int, float], Any]
) -> list[dict]:
    """The sweep's cases with the chosen value pinned: one case per original case and target ε
    (``targets[i]``: case i's); a private ε that was not tuned takes the value chosen at the
    nearest tuned ε (log scale). A setting with no choice keeps the case's own value."""
    out = []
    for i, case in enumerate(cases):
        tuned = {t: v for (j, t), v in choice.items() if j == i}
        finite = [t for t in tuned if math.isfinite(t)]
        for t in targets[i]:
            if t not in tuned and math.isfinite(t) and finite:
                t_near = min(finite, key=lambda u, t=t: abs(math.log(u / t)))
            else:
                t_near = t
            pinned = {**case, EPS_KEY: "inf" if math.isinf(t) else t}
            if t_near in tuned:
                pinned[key] = tuned[t_near]
            out.append(pinned)
    return out


def tune(
    sweep_file: str | Path,
    out: str | Path,
    *,
    key: str,
    values: list[Any],
    epsilons: list[float] | None = None,
    jobs: int | None = None,
    progress: bool = True,
    write_sweep: str | Path | None = None,
    log=print,
) -> dict[str, Any]:
    """Run every candidate proxy, choose per (case, target ε), write the tuned sweep file."""
    sweep_file, out = Path(sweep_file), Path(out)
    base, grid, cases = read_sweep(sweep_file)
    if not values:
        raise ConfigError("tune: give at least one value to try (--values).")
    _check_one_public_share(sweep_file)
    cases = expand_cases(grid, cases, key)
    settings = _settings(base, grid, cases, key, epsilons)
    candidates = _candidates(base, settings, key, values, log)
    cells = [cell_of(base, list(c.overrides)) for c in candidates]  # validates every candidate
    out.mkdir(parents=True, exist_ok=True)
    spec = {"base": str(base), "cases": [dict(c.overrides) for c in candidates]}
    (out / "candidates.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    result = run_sweep(out / "candidates.yaml", out, jobs=jobs, progress=progress, log=log)
    rows = [
        {
            "case": c.case,
            "target_epsilon": c.target,
            "value": c.value,
            "cell": Path(result["dirs"][cell.config_hash]).name,
            "metrics": _score(Path(result["dirs"][cell.config_hash])),
        }
        for c, cell in zip(candidates, cells)
    ]
    choice: dict[tuple[int, float], Any] = {}
    for i, _, target in settings:
        pick = best([r for r in rows if r["case"] == i and r["target_epsilon"] == target])
        if pick is not None:
            choice[(i, target)] = pick["value"]
            if _at_edge(pick["value"], values):
                log(
                    f"case {i} at ε = {target:g}: the chosen {key} = {pick['value']} is at the "
                    "edge of the values tried; a wider range may do better."
                )
        else:
            log(f"case {i} at ε = {target:g}: no candidate finished; nothing chosen")
    targets = [_case_targets(base, grid, case) for case in cases]
    tuned = tuned_cases(cases, targets, key, choice)
    dest = Path(write_sweep) if write_sweep else out / "tuned.yaml"
    dest.parent.mkdir(parents=True, exist_ok=True)
    spec = yaml.safe_load(sweep_file.read_text())
    spec["base"] = os.path.relpath(base, dest.parent.resolve())
    spec["cases"] = tuned
    spec["grid"] = {k: v for k, v in grid.items() if k != EPS_KEY}
    header = (
        f"# Generated by `dpfedlora tune --key {key}` from {sweep_file.name}: each case's\n"
        f"# {key} chosen on public proxy clients (highest validation balanced accuracy, per\n"
        f"# case and target ε); every candidate's scores: {out}/tune.json.\n"
    )
    dest.write_text(header + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    report = {
        "key": key,
        "values": values,
        "rows": [{**r, "target_epsilon": _json_eps(r["target_epsilon"])} for r in rows],
        "choice": [
            {"case": i, "target_epsilon": _json_eps(t), "value": v} for (i, t), v in choice.items()
        ],
        "tuned_sweep": str(dest),
        "failed": result["failed"],
    }
    (out / "tune.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _at_edge(value: Any, values: list[Any]) -> bool:
    """Whether a numeric choice is the smallest or largest of several numeric values."""
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) < 3 or len(numbers) != len(values):
        return False
    return value in (min(numbers), max(numbers))


def _json_eps(t: float) -> float | str:
    return "inf" if math.isinf(t) else t


def tune_table(report: dict[str, Any], cases: list[dict]) -> str:
    """Markdown: one row per case and target ε, validation balanced accuracy per value."""
    values = report["values"]
    head = ["case", "target ε", *(f"{report['key']}={v}" for v in values), "chosen"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    chosen = {(c["case"], str(c["target_epsilon"])): c["value"] for c in report["choice"]}
    seen = []
    for r in report["rows"]:
        k = (r["case"], str(r["target_epsilon"]))
        if k not in seen:
            seen.append(k)
    for i, t in seen:
        cells = []
        for v in values:
            m = next(
                (r["metrics"] for r in report["rows"]
                 if r["case"] == i and str(r["target_epsilon"]) == t and r["value"] == v),
                None,
            )  # fmt: skip
            cells.append("-" if not m else f"{m.get('balanced_accuracy', math.nan):.3f}")
        label = ", ".join(f"{k}={v}" for k, v in cases[i].items() if k != EPS_KEY) or str(i)
        lines.append(f"| {label} | {t} | " + " | ".join(cells) + f" | {chosen.get((i, t), '-')} |")
    return "\n".join(lines)
