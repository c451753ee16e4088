"""Plan a private federated run's privacy with the accounting package alone (no torch).

Question answered: with 10 clients of ~450 records, batch 64, 3 local epochs per round and 8
rounds, what noise multiplier keeps every client within ε = 3 at δ = 1e-5, and how does ε grow
round by round?

    .venv/bin/python examples/epsilon_planning.py [--rounds 8] [--target-epsilon 3]
"""

from __future__ import annotations

import argparse
import math

from accounting import calibrate_dpsgd, dpsgd_event, make_accountant


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shard-size", type=int, default=450, help="records per client")
    p.add_argument("--batch-size", type=int, default=64, help="expected Poisson batch size")
    p.add_argument("--local-epochs", type=float, default=3, help="local epochs per round")
    p.add_argument("--rounds", type=int, default=8, help="federated rounds")
    p.add_argument("--target-epsilon", type=float, default=3.0, help="ε budget per client")
    p.add_argument("--delta", type=float, default=1e-5, help="δ (below 1/records)")
    p.add_argument("--accountant", default="prv", help="prv, pld or rdp")
    args = p.parse_args(argv)

    q = args.batch_size / args.shard_size  # Poisson sampling rate per step
    steps_per_round = math.ceil(args.local_epochs / q)  # epochs * (n / batch)
    total = steps_per_round * args.rounds
    cal = calibrate_dpsgd(
        target_epsilon=args.target_epsilon,
        delta=args.delta,
        sampling_rate=q,
        steps=total,
        accountant=args.accountant,
    )
    print(f"q = {args.batch_size}/{args.shard_size} = {q:.4f}; {steps_per_round} steps/round")
    print(f"σ = {cal.noise_multiplier:.3f} keeps {total} steps within ε = {args.target_epsilon}")
    acc = make_accountant(args.accountant)
    round_event = dpsgd_event(
        noise_multiplier=cal.noise_multiplier, sampling_rate=q, steps=steps_per_round
    )
    eps = 0.0
    for rnd in range(1, args.rounds + 1):
        eps = acc.compose(round_event).epsilon(args.delta)
        print(f"  after round {rnd}: ε = {eps:.3f}")
    return {"noise_multiplier": cal.noise_multiplier, "epsilon": eps}


if __name__ == "__main__":
    main()
