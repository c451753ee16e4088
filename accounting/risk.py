"""Attack risk: what any membership-inference attack can achieve, next to ε.

A membership-inference attack on one record is a test between two neighbouring datasets (with
and without the record): its false-positive rate α and true-positive rate TPR. f-DP (Dong, Roth,
Su 2019, "Gaussian Differential Privacy", JRSS-B 2022) describes a mechanism by its trade-off
curve f(α), the smallest false-negative rate of any test at FPR α, so every attack has
TPR(α) ≤ 1 − f(α). Kulynych, Gomez, Kaissis, Calmon, Troncoso ("Attack-Aware Noise
Calibration for Differential Privacy", NeurIPS 2024; and riskcal, NeurIPS 2025) read attack
risk off the privacy profile and calibrate noise to it instead of to ε.

From the privacy profile δ(ε) (this package's ``Accountant.delta``: an upper bound, the larger of
the add and remove directions, so it covers both tests), each ε gives an (ε, δ(ε))-DP guarantee
and with it a bound on every test (Kairouz, Oh, Viswanath 2015; Dong, Roth, Su, Prop. 2.5)::

    TPR(α) ≤ min(1, δ(ε) + e^ε·α, 1 − e^(−ε)·(1 − δ(ε) − α))

and the curve is the minimum over ε ≥ 0 (Prop. 2.12: a mechanism is f-DP for the supremum of
the (ε, δ(ε)) trade-offs). Every ε gives a valid bound, so a minimum over any finite set of ε
is still an upper bound; this module searches a geometric grid and refines around the best
point (both lines are quasi-convex in ε: with δ'(ε) = −e^ε·β(ε), β decreasing, the first line's
slope is e^ε·(α − β(ε)), which changes sign once). The attack advantage, max over α of
TPR − FPR, is δ(0) (the total variation distance; Kulynych et al. 2024, Prop. 3.1).

A non-private history (δ = 1) gives TPR 1 at every α and advantage 1; an empty history gives
TPR = α (guessing) and advantage 0.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from scipy.optimize import minimize_scalar
from scipy.special import ndtri

from .accountant import Accountant, check_target_delta
from .backends import DEFAULT_BACKEND, make_accountant
from .calibrate import CalibrationError
from .events import Composed, Event, NonPrivate, SelfComposed, dpsgd_event
from .history import History

__all__ = [
    "Risk",
    "DEFAULT_FPRS",
    "attack_risk",
    "tpr_at_fpr",
    "check_fprs",
    "history_risk",
    "accountant_for",
    "noise_multiplier_for_risk",
    "noise_multiplier_for_risk_event",
    "equivalent_epsilon",
]

# False-positive rates at which risk is reported: an attack worth fearing is one that is right
# about some members while almost never accusing a non-member (Carlini et al. 2022, "Membership
# Inference Attacks From First Principles"), so the low rates are the ones to read.
DEFAULT_FPRS: tuple[float, ...] = (0.001, 0.01, 0.1)

# ε grid for the coarse search: 0, then 1/64 growing by √2 (up to ~724, far past any ε whose
# line can still beat the best bound: the search stops once e^ε·α alone exceeds it).
_GRID: tuple[float, ...] = (0.0, *(2.0 ** (k / 2) / 64 for k in range(32)))


@dataclass(frozen=True)
class Risk:
    """Upper bounds on membership-inference risk: TPR at each FPR, and the advantage.

    ``tpr_at_fpr[α]`` bounds the true-positive rate of any attack whose false-positive rate is
    α; ``advantage`` bounds TPR − FPR over every attack (0: no better than guessing)."""

    tpr_at_fpr: dict[float, float]
    advantage: float

    def to_json(self) -> dict[str, Any]:
        return {
            "tpr_at_fpr": {f"{a:g}": t for a, t in self.tpr_at_fpr.items()},
            "advantage": self.advantage,
        }


def check_fprs(fprs: Sequence[float], name: str = "fprs") -> tuple[float, ...]:
    """False-positive rates, each in (0, 1), as floats (their order kept, repeats dropped)."""
    out = []
    for a in fprs:
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 < a < 1.0:
            raise ValueError(f"`{name}` must hold rates in (0, 1), e.g. 0.01. Found {a!r}.")
        out.append(float(a))
    if not out:
        raise ValueError(f"`{name}` must hold at least one rate in (0, 1). Found none.")
    return tuple(dict.fromkeys(out))


def _line_min(f: Callable[[float], float], floor: Callable[[float], float], best: float) -> float:
    """min(best, min over ε ≥ 0 of f), f quasi-convex, ``floor`` ≤ f increasing in ε.

    Walk the grid until f rises (the minimum is then bracketed by the best point's neighbours)
    or until floor(ε) reaches the best value so far (no larger ε can beat it), then refine in
    the bracket with Brent's bounded search. Every value taken is an evaluated bound."""
    pts: list[tuple[float, float]] = []
    stop = None
    for e in _GRID:
        if floor(e) >= best:
            stop = e
            break
        v = f(e)
        pts.append((e, v))
        best = min(best, v)
        if len(pts) > 1 and v > pts[-2][1]:
            break
    if not pts:
        return best
    i = min(range(len(pts)), key=lambda j: pts[j][1])
    left = pts[i - 1][0] if i > 0 else 0.0
    right = pts[i + 1][0] if i + 1 < len(pts) else stop
    if right is not None and right > left:
        # the loss in TPR from missing the best ε by d is second order in d: 1 % of the
        # bracket's width is far below the 2 % this module promises
        res = minimize_scalar(
            f, bounds=(left, right), method="bounded", options={"xatol": 0.01 * (right - left)}
        )
        best = min(best, float(res.fun))
    return best


def _tpr(profile: Callable[[float], float], alpha: float) -> float:
    """min over ε of the two lines' bounds at FPR α (see the module docstring)."""
    best = min(1.0, profile(0.0) + alpha)  # ε = 0: both lines give δ(0) + α

    def upper(e: float) -> float:
        return profile(e) + math.exp(e) * alpha

    def lower(e: float) -> float:
        return 1.0 - math.exp(-e) * (1.0 - profile(e) - alpha)

    best = _line_min(upper, lambda e: math.exp(e) * alpha, best)
    best = _line_min(lower, lambda e: 1.0 - math.exp(-e) * (1.0 - alpha), best)
    return min(1.0, best)


def _profile(accountant: Accountant) -> Callable[[float], float]:
    """``accountant.delta`` memoised (the search asks for some ε more than once)."""
    seen: dict[float, float] = {}

    def delta(epsilon: float) -> float:
        epsilon = max(float(epsilon), 0.0)
        if epsilon not in seen:
            seen[epsilon] = accountant.delta(epsilon)
        return seen[epsilon]

    return delta


def attack_risk(accountant: Accountant, *, fprs: Sequence[float] = DEFAULT_FPRS) -> Risk:
    """Upper bounds on every membership-inference attack against what ``accountant`` composed.

    TPR at each FPR α in ``fprs`` (each in (0, 1)) from the accountant's privacy profile,
    within 2 % of the curve that profile implies and never below it; the advantage δ(0)."""
    fprs = check_fprs(fprs)
    profile = _profile(accountant)
    advantage = min(max(profile(0.0), 0.0), 1.0)
    if advantage >= 1.0:  # non-private: nothing is bounded
        return Risk({a: 1.0 for a in fprs}, 1.0)
    return Risk({a: _tpr(profile, a) for a in fprs}, advantage)


def tpr_at_fpr(accountant: Accountant, fpr: float) -> float:
    """Upper bound on the TPR of any membership-inference attack at false-positive rate ``fpr``."""
    (fpr,) = check_fprs([fpr], "fpr")
    return attack_risk(accountant, fprs=(fpr,)).tpr_at_fpr[fpr]


def accountant_for(history: History, backend: str = DEFAULT_BACKEND) -> Accountant:
    """A fresh ``backend`` accountant with ``history`` (merged (q, σ, steps) blocks) composed."""
    acc = make_accountant(backend)
    if history:
        acc.compose(Composed(tuple(_block_event(q, s, n) for q, s, n in history)))
    return acc


def _block_event(q: float, sigma: float, n: int) -> Event:
    if sigma > 0:
        return dpsgd_event(noise_multiplier=sigma, sampling_rate=q, steps=n)
    event = NonPrivate("non-private release")
    return event if n == 1 else SelfComposed(event, n)


# (backend, history, fprs) -> Risk, bounded like accounting.history's ε memo: clients with the
# same history share one computation, and a ledger asked again answers at once
_RISKS: OrderedDict[tuple[str, History, tuple[float, ...]], Risk] = OrderedDict()
_RISKS_MAX = 10_000


def history_risk(
    history: History, *, backend: str = DEFAULT_BACKEND, fprs: Sequence[float] = DEFAULT_FPRS
) -> Risk:
    """:func:`attack_risk` of a history, memoised by (backend, history, fprs)."""
    key = (backend, history, check_fprs(fprs))
    hit = _RISKS.get(key)
    if hit is not None:
        _RISKS.move_to_end(key)
        return hit
    risk = attack_risk(accountant_for(history, backend), fprs=key[2])
    _RISKS[key] = risk
    if len(_RISKS) > _RISKS_MAX:
        _RISKS.popitem(last=False)
    return risk


def equivalent_epsilon(
    *, noise_multiplier: float, sampling_rate: float, steps: int, delta: float,
    backend: str = DEFAULT_BACKEND,
) -> float:  # fmt: skip
    """ε at ``delta`` of DP-SGD with σ, q and steps: the (ε, δ) budget a run calibrated to risk
    records and enforces (the same releases, stated as ε)."""
    check_target_delta(delta)
    event = dpsgd_event(noise_multiplier=noise_multiplier, sampling_rate=sampling_rate, steps=steps)
    return make_accountant(backend).compose(event).epsilon(delta)


# ------------------------------------------------------------------ calibration to risk
# The σ searched for lies in [_MIN_SIGMA, _MAX_SIGMA], as in accounting.calibrate.
_MIN_SIGMA = 1e-2
_MAX_SIGMA = 1e4


def check_risk_target(target_tpr: float, at_fpr: float) -> tuple[float, float]:
    """0 < at_fpr < target_tpr < 1: a TPR at or below the FPR is guessing, unreachable by
    any mechanism that releases anything; a TPR of 1 is no bound."""
    for name, v in (("at_fpr", at_fpr), ("target_tpr", target_tpr)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v < 1.0:
            raise ValueError(f"`{name}` must be a rate in (0, 1), e.g. 0.01. Found {v!r}.")
    if not at_fpr < target_tpr:
        raise ValueError(
            f"`target_tpr` must be above `at_fpr` ({at_fpr:g}): an attack that guesses at random "
            f"already has TPR = FPR. Found {target_tpr!r}."
        )
    return float(target_tpr), float(at_fpr)


def noise_multiplier_for_risk_event(
    *, target_tpr: float, at_fpr: float, make_event: Callable[[float], Event],
    backend: str = DEFAULT_BACKEND, rtol: float = 0.01, start: float = 1.0,
) -> float:  # fmt: skip
    """Smallest σ (to tolerance) whose release ``make_event(σ)`` keeps every membership-
    inference attack's TPR at FPR ``at_fpr`` at or below ``target_tpr``.

    TPR(σ) decreases with σ. The search keeps a bracket (lo violates, hi meets) and steps by
    interpolating μ(σ) = Φ⁻¹(TPR) − Φ⁻¹(α), the Gaussian-DP parameter whose curve passes through
    the bound (about a power of σ), as a power law; a guess that would not shrink the bracket
    enough becomes its geometric midpoint. Returns once TPR(σ) ∈ [target·(1 − rtol), target]:
    the returned σ always meets the target as evaluated here (never overshoots).

    Raises:
        ValueError: unless 0 < at_fpr < target_tpr < 1.
        CalibrationError: no σ up to 1e4 meets the target.
    """
    target_tpr, at_fpr = check_risk_target(target_tpr, at_fpr)
    aim = ndtri(target_tpr * (1 - rtol / 2)) - ndtri(at_fpr)

    def probe(sigma: float) -> tuple[float, float]:
        tpr = tpr_at_fpr(make_accountant(backend).compose(make_event(sigma)), at_fpr)
        return tpr, float(ndtri(tpr) - ndtri(at_fpr))

    lo: tuple[float, float] | None = None  # (σ, μ) violating the target
    hi: tuple[float, float] | None = None  # (σ, μ) meeting it
    sigma = min(max(start, _MIN_SIGMA), _MAX_SIGMA)
    for _ in range(200):
        tpr, mu = probe(sigma)
        if tpr <= target_tpr:
            hi = (sigma, mu)
            if tpr >= target_tpr * (1 - rtol) or sigma <= _MIN_SIGMA:
                return sigma
        else:
            lo = (sigma, mu)
            if sigma >= _MAX_SIGMA:
                raise CalibrationError(
                    f"no noise multiplier up to {_MAX_SIGMA:g} keeps the TPR at FPR {at_fpr:g} "
                    f"below {target_tpr:g}. Raise the target, lower the sampling rate, or plan "
                    "fewer steps."
                )
        sigma = _next_sigma(lo, hi, sigma, mu, aim)
        if lo is not None and hi is not None and hi[0] / lo[0] < 1 + 1e-9:
            return hi[0]
    if hi is None:  # pragma: no cover - 200 probes always bracket and shrink
        raise CalibrationError("internal error: calibration to risk did not converge.")
    return hi[0]


def _next_sigma(lo, hi, sigma: float, mu: float, aim: float) -> float:
    """The next probe: a power-law step towards μ = aim, kept inside the bracket."""
    k = 1.0  # μ ∝ 1/σ for one Gaussian release
    if lo is not None and hi is not None and 0 < hi[1] < lo[1] < math.inf:
        k = math.log(lo[1] / hi[1]) / math.log(hi[0] / lo[0])
    if not 0 < mu < math.inf:  # TPR 1 (μ infinite) or guessing (μ 0): a big step
        guess = sigma * (4.0 if mu > 0 else 0.25)
    else:
        guess = sigma * (mu / aim) ** (1.0 / max(k, 0.1))
    guess = min(max(guess, _MIN_SIGMA), _MAX_SIGMA)
    if lo is not None and hi is not None:
        a, b = math.log(lo[0]), math.log(hi[0])
        frac = (math.log(guess) - a) / (b - a)
        if not 0.05 < frac < 0.95:
            guess = math.sqrt(lo[0] * hi[0])
    return guess


def noise_multiplier_for_risk(
    *, target_tpr: float, at_fpr: float, sampling_rate: float, steps: int,
    backend: str = DEFAULT_BACKEND,
) -> float:  # fmt: skip
    """Smallest σ for ``steps`` Poisson-sampled DP-SGD steps at rate ``sampling_rate`` whose
    attack TPR at FPR ``at_fpr`` is at most ``target_tpr`` (see
    :func:`noise_multiplier_for_risk_event`).

    The search starts from the central-limit approximation of Bu, Dong, Long and Su (2020):
    DP-SGD is about μ-GDP with μ = q·√T·√(e^(1/σ²) − 1), solved for the target's μ."""
    target_tpr, at_fpr = check_risk_target(target_tpr, at_fpr)
    dpsgd_event(noise_multiplier=1.0, sampling_rate=sampling_rate, steps=steps)  # validates q, T
    mu = ndtri(target_tpr) - ndtri(at_fpr)
    scale = sampling_rate * math.sqrt(steps)
    start = 1.0 / math.sqrt(math.log1p((mu / scale) ** 2))

    def make_event(sigma: float) -> Event:
        return dpsgd_event(noise_multiplier=sigma, sampling_rate=sampling_rate, steps=steps)

    return noise_multiplier_for_risk_event(
        target_tpr=target_tpr, at_fpr=at_fpr, make_event=make_event, backend=backend, start=start
    )
