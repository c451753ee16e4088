"""The data owner's privacy contract: the mechanism a node agrees to run, checked before any
record is read.

In a deployment the server *asks* for a release (its config: the privacy mode, δ, the clip norm,
the accountant; its broadcast: σ and the tensors to start from). The owner's contract, not the
server, decides whether that release happens:

- a request outside the contract is **refused** with a reason code from :data:`REASONS` (a fixed
  vocabulary: nothing data-dependent travels in a refusal), logged on the node with the values,
  and nothing is written to the owner's ledger or read from its shard;
- the owner's budget is checked at the owner's δ with the owner's accountant (the server's δ
  and accountant never enter the owner's check);
- a non-private request is refused unless the owner explicitly allows non-private training.

Torch-free: the contract is plain data and the checks look only at the server's raw config
values, so a malformed or hostile config is refused before anything is built from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "REASONS",
    "RELEASABLE",
    "OwnerContract",
    "ContractError",
    "Refusal",
    "contract_from_node_config",
    "contract_for_simulation",
]

# Every reason a node may give the server. A refusal or failure carries one of these codes and
# nothing else: no exception text, no values of the owner's data.
REASONS: dict[str, str] = {
    "budget": "the owner's ε budget (at the owner's δ, with the owner's accountant) cannot pay "
    "for the requested release",
    "contract:non_private": "the request trains without DP and the owner never allows that",
    "contract:delta": "the request's δ is above the owner's δ",
    "contract:clip_norm": "the request's clip norm is above the owner's maximum",
    "contract:accountant": "the request names an accountant the owner did not agree to",
    "contract:noise_multiplier": "the broadcast's σ is missing, not finite or not positive",
    "contract:config": "the request is not a valid dpfedlora config",
    "contract:describe": "the request asks for a description the owner does not declare public",
    "broadcast:malformed": "the broadcast could not be decoded",
    "broadcast:unknown_tensor": "the broadcast names a tensor the method does not manage",
    "broadcast:shape": "a broadcast tensor has the wrong shape",
    "broadcast:dtype": "a broadcast tensor has the wrong dtype",
    "broadcast:non_finite": "a broadcast tensor holds NaN or infinity",
    "broadcast:frozen_tensor": "the broadcast changes a frozen weight the method only restores",
    "unknown_client": "this node does not hold the client the broadcast names",
    "failed:internal": "the node failed; the details are in the node's own log",
}

# Plain (un-noised) reply fields an owner may let leave, each outside the DP guarantee.
RELEASABLE = ("loss", "examples_seen", "seconds")

# The largest δ any owner may agree to (a mechanism that publishes one record in a hundred
# outright meets δ = 1e-2 for a shard of one hundred).
MAX_OWNER_DELTA = 1e-2


class ContractError(ValueError):
    """The owner's own contract is invalid (a node config mistake: one line, with the fix)."""


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused: a code from :data:`REASONS` and the values (node log only)."""

    reason: str
    values: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown refusal reason {self.reason!r}; one of {sorted(REASONS)}.")


@dataclass(frozen=True)
class OwnerContract:
    """What one data owner agrees to release.

    - ``epsilon_budget``: the owner's ε budget per client over its whole ledger.
    - ``delta``: the owner's δ; every budget check is made at it. At most 1e-2, and below
      1/n for the owner's smallest shard (checked once the shards are known).
    - ``max_clip_norm``: the largest per-sample clip norm C the owner accepts.
    - ``allow_non_private``: whether a request without DP may train at all (default: never).
    - ``accountant``: the backend of the owner's own budget check; a request naming another is
      refused.
    - ``noise``: ``secure`` (noise and sampling from OS entropy, whatever the request says) or
      ``config`` (follow the request's ``privacy.secure_mode``: tests and loopback simulations
      where one person holds every node).
    - ``release``: plain reply fields (from :data:`RELEASABLE`) the owner lets leave, outside
      the DP guarantee (default: none).
    - ``public_shard_size``: whether the shard's record count is declared public (``describe``
      returns it; the server needs it for q = batch / n). Default true: Poisson-sampled DP-SGD
      with q = b/n treats n as public, as the docs say.
    - ``label_noise``: σ of a Gaussian-noised label histogram ``describe`` may release (each
      release spent in the owner's ledger); ``None``: no label counts leave.
    """

    epsilon_budget: float
    delta: float = 1e-5
    max_clip_norm: float = 1.0
    allow_non_private: bool = False
    accountant: str = "fastpld"
    noise: str = "secure"
    release: frozenset[str] = frozenset()
    public_shard_size: bool = True
    label_noise: float | None = None

    def __post_init__(self) -> None:
        from accounting import available_backends

        b = self.epsilon_budget
        if not (_number(b) and b > 0 and not math.isnan(b)):
            raise ContractError(f"`epsilon-budget` must be a number > 0. Found {b!r}.")
        d = self.delta
        if not (_number(d) and 0 < d <= MAX_OWNER_DELTA):
            raise ContractError(
                f"`delta` must be in (0, {MAX_OWNER_DELTA:g}]: a larger δ is no guarantee. "
                f"Found {d!r}. Use a value below 1/n of your smallest shard, e.g. 1e-5."
            )
        c = self.max_clip_norm
        if not (_number(c) and 0 < c < math.inf):
            raise ContractError(f"`max-clip-norm` must be a finite number > 0. Found {c!r}.")
        if self.accountant not in available_backends():
            raise ContractError(
                f"`accountant` must be one of {', '.join(available_backends())}. "
                f"Found {self.accountant!r}."
            )
        if self.noise not in ("secure", "config"):
            raise ContractError(f'`noise` must be "secure" or "config". Found {self.noise!r}.')
        bad = sorted(set(self.release) - set(RELEASABLE))
        if bad:
            raise ContractError(
                f"`release-outside-dp` may name {', '.join(RELEASABLE)}. Found {bad[0]!r}."
            )
        s = self.label_noise
        if s is not None and not (_number(s) and 0 < s < math.inf):
            raise ContractError(f"`label-noise` must be a finite number > 0. Found {s!r}.")

    def check_shards(self, sizes: list[int]) -> None:
        """δ must be below 1/n of the owner's smallest shard (else one leaked record meets it)."""
        if sizes and self.delta >= 1.0 / min(sizes):
            raise ContractError(
                f"`delta` = {self.delta:g} is not below 1/n = {1 / min(sizes):.3g} of this "
                f"node's smallest shard (n = {min(sizes)}). Use a smaller delta, e.g. 1e-5."
            )

    def check_request(self, cfg_data: dict[str, Any]) -> Refusal | None:
        """The server's requested mechanism against the contract, from its raw config values
        (nothing is built from them before they pass)."""
        if not isinstance(cfg_data, dict):
            return Refusal("contract:config", {"type": type(cfg_data).__name__})
        p = cfg_data.get("privacy", {})
        if not isinstance(p, dict):
            return Refusal("contract:config", {"privacy": repr(p)[:80]})
        mode = p.get("mode", "sample")
        eps, sigma = p.get("target_epsilon", 8.0), p.get("noise_multiplier")
        non_private = mode == "none" or (
            _number(eps) and math.isinf(eps) and sigma is None
        )  # the schema turns ε = ∞ without σ into mode none
        if non_private:
            if self.allow_non_private:
                return None
            return Refusal("contract:non_private", {"mode": mode, "target_epsilon": eps})
        delta = p.get("delta", 1e-5)
        if not (_number(delta) and 0 < delta <= self.delta):
            return Refusal("contract:delta", {"requested": delta, "owner": self.delta})
        clip = p.get("clip_norm", 1.0)
        if not (_number(clip) and 0 < clip <= self.max_clip_norm):
            return Refusal("contract:clip_norm", {"requested": clip, "owner": self.max_clip_norm})
        accountant = p.get("accountant", "fastpld")
        if accountant != self.accountant:
            return Refusal(
                "contract:accountant", {"requested": accountant, "owner": self.accountant}
            )
        return None

    def check_sigma(self, noise_multiplier: object, private: bool) -> Refusal | None:
        if not private:
            return None
        s = noise_multiplier
        if not (_number(s) and 0 < s < math.inf):
            return Refusal("contract:noise_multiplier", {"requested": s})
        return None


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(x)


def _flag(node_config: dict[str, Any], key: str, default: bool) -> bool:
    raw = node_config.get(key, default)
    if isinstance(raw, bool):
        return raw
    if str(raw).lower() in ("true", "false"):
        return str(raw).lower() == "true"
    raise ContractError(f"node config `{key}` must be true or false. Found {raw!r}.")


def _float(node_config: dict[str, Any], key: str, default: float | None) -> float | None:
    raw = node_config.get(key, default)
    if raw is None:
        return None
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise ContractError(f"node config `{key}` must be a number. Found {raw!r}.") from None


def contract_from_node_config(
    node_config: dict[str, Any], *, request: dict[str, Any] | None = None
) -> OwnerContract:
    """The contract a node config states (``flower-supernode --node-config``, typed TOML).

    Keys: ``epsilon-budget`` (required unless ``noise = "config"``), ``delta`` (1e-5),
    ``max-clip-norm`` (1.0), ``allow-non-private`` (false), ``accountant`` ("fastpld"),
    ``noise`` ("secure"), ``release-outside-dp`` (comma-separated, from :data:`RELEASABLE`),
    ``public-shard-size`` (true), ``label-noise`` (none).

    A ``noise = "config"`` node (tests and loopback runs, where one person holds every node and
    the config is that person's own) takes every key it does not state from ``request``, the
    config: its budget, δ, clip norm and accountant, and the plain diagnostics the config keeps.
    A real node states its own.
    """
    noise = str(node_config.get("noise", "secure"))
    follows = noise == "config" and request is not None
    p = (request or {}).get("privacy", {}) if follows else {}
    p = p if isinstance(p, dict) else {}
    budget = node_config.get("epsilon-budget")
    if budget is None:
        if not follows:
            raise ContractError(
                "node config needs `epsilon-budget`: the data owner's own ε budget, which this "
                "node enforces whatever the server asks (e.g. epsilon-budget = 3.0)."
            )
        budget = p.get("target_epsilon") if p.get("noise_multiplier") is None else math.inf
        budget = math.inf if budget is None else budget
    release = node_config.get("release-outside-dp")
    if release is None:
        plain = follows and p.get("diagnostics", True)
        names = frozenset(RELEASABLE) if plain else frozenset()
    else:
        names = frozenset(x.strip() for x in str(release).split(",") if x.strip())
    return OwnerContract(
        epsilon_budget=_float({"epsilon-budget": budget}, "epsilon-budget", None),
        delta=_float(node_config, "delta", p.get("delta", 1e-5) if follows else 1e-5),
        max_clip_norm=_float(
            node_config, "max-clip-norm", p.get("clip_norm", 1.0) if follows else 1.0
        ),
        allow_non_private=_flag(node_config, "allow-non-private", follows),
        accountant=str(
            node_config.get("accountant", p.get("accountant", "fastpld") if follows else "fastpld")
        ),
        noise=noise,
        release=names,
        public_shard_size=_flag(node_config, "public-shard-size", True),
        label_noise=_float(node_config, "label-noise", None),
    )


def contract_for_simulation(cfg) -> OwnerContract:
    """A simulation's owners agree to what the config says (one person holds every shard):
    the config's budget, δ, clip norm and accountant; the plain diagnostics it keeps."""
    p = cfg.privacy
    return OwnerContract(
        epsilon_budget=p.budget,
        delta=min(p.delta, MAX_OWNER_DELTA),
        max_clip_norm=p.clip_norm,
        allow_non_private=not p.private,
        accountant=p.accountant,
        noise="config",
        release=frozenset(RELEASABLE) if p.diagnostics else frozenset(),
    )
