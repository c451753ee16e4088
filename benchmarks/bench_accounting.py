"""Time a 10,000-step heterogeneous ε query with each accountant backend.

Two histories of 10,000 DP-SGD steps: 2 distinct (q, σ) blocks (a typical federated client)
and 20 distinct blocks of 500 steps (a worst case: q and σ change every block). Each backend
gets a fresh accountant; the time includes building the accountant from the events and the
query (imports are done beforehand).

    .venv/bin/python benchmarks/bench_accounting.py
    .venv/bin/python benchmarks/bench_accounting.py --pld-intervals   # PLD discretisation
    .venv/bin/python benchmarks/bench_accounting.py --fastpld         # fastpld: seconds, memory

``--fastpld`` runs each query in its own process (cold caches, imports done first) and prints
a table of ε, the median of 3 timings, the peak memory numpy allocated during the query
(tracemalloc) and the process's peak resident memory.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc

from accounting import Composed, dpsgd_event, make_accountant
from accounting.history import clear_caches


def two_blocks() -> Composed:
    # The typical federated client: its shard (q) and σ are fixed, so rounds merge into one
    # block; a second block is e.g. a private initialisation or a changed sampling rate.
    return Composed(
        (
            dpsgd_event(noise_multiplier=1.0, sampling_rate=0.01, steps=6000),
            dpsgd_event(noise_multiplier=1.5, sampling_rate=0.02, steps=4000),
        )
    )


def history() -> Composed:
    blocks = []
    for i in range(20):
        q = 0.005 + 0.001 * (i % 5)  # 5 distinct sampling rates
        sigma = 1.0 + 0.1 * (i % 4)  # 4 distinct noise multipliers
        blocks.append(dpsgd_event(noise_multiplier=sigma, sampling_rate=q, steps=500))
    return Composed(tuple(blocks))


def main(repeats: int = 3) -> None:
    if "--pld-intervals" in sys.argv:
        pld_intervals()
        return
    if "--fastpld-case" in sys.argv:
        _fastpld_case(int(sys.argv[sys.argv.index("--fastpld-case") + 1]), repeats)
        return
    if "--fastpld" in sys.argv:
        fastpld_table()
        return
    for label, event in (("2 blocks", two_blocks()), ("20 blocks", history())):
        _time(label, event, repeats)


def pld_intervals() -> None:
    """ε and seconds of the 20-block history with PLD at several discretisation intervals
    (pessimistic, so every row is an upper bound), and RDP for reference."""
    from accounting.backends.pld import PLDBackend

    make_accountant("pld")
    for interval in (1e-4, 1e-3, 2e-3, 5e-3, 1e-2):
        t0 = time.perf_counter()
        eps = PLDBackend(value_discretization_interval=interval).compose(history()).epsilon(1e-5)
        print(f"pld interval {interval:g}: ε = {eps:.4f}, {time.perf_counter() - t0:.2f} s")
    for interval in (1e-4, 2e-4, 5e-4, 1e-3):
        clear_caches()
        t0 = time.perf_counter()
        eps = make_accountant("fastpld", value_discretization_interval=interval)
        eps = eps.compose(history()).epsilon(1e-5)
        print(f"fastpld interval {interval:g}: ε = {eps:.4f}, {time.perf_counter() - t0:.2f} s")
    t0 = time.perf_counter()
    eps = make_accountant("rdp").compose(history()).epsilon(1e-5)
    print(f"rdp: ε = {eps:.4f}, {time.perf_counter() - t0:.2f} s")
    # A fixed coarse interval is not uniformly tight: the discretisation error grows like
    # interval² x steps, and relative to ε it is largest where ε is small.
    others = {
        "Abadi et al. (q 0.01, σ 4, 10,000 steps)": (0.01, 4.0, 10_000),
        "q 0.001, σ 0.8, 100,000 steps": (0.001, 0.8, 100_000),
        "q 0.01, σ 2, 100 steps": (0.01, 2.0, 100),
    }
    for label, (q, sigma, steps) in others.items():
        event = dpsgd_event(noise_multiplier=sigma, sampling_rate=q, steps=steps)
        ref = PLDBackend(value_discretization_interval=1e-4).compose(event).epsilon(1e-5)
        row = []
        for interval in (1e-3, 2e-3):
            eps = PLDBackend(value_discretization_interval=interval).compose(event).epsilon(1e-5)
            row.append(f"{interval:g}: {100 * (eps - ref) / ref:+.2f} %")
        eps = make_accountant("fastpld").compose(event).epsilon(1e-5)
        row.append(f"fastpld (default 2e-4): {100 * (eps - ref) / ref:+.3f} %")
        print(f"{label}: ε = {ref:.4f} at 1e-4; " + ", ".join(row))


def _fastpld_cases() -> list[tuple[str, object, float]]:
    def dpsgd(sigma: float, q: float, steps: int):
        return dpsgd_event(noise_multiplier=sigma, sampling_rate=q, steps=steps)

    return [
        ("20 blocks, 10,000 steps", history(), 1e-5),
        ("2 blocks, 10,000 steps", two_blocks(), 1e-5),
        ("q 0.01, σ 1, 1,000 steps", dpsgd(1.0, 0.01, 1_000), 1e-10),
        ("q 1e-3, σ 1, 1,000,000 steps", dpsgd(1.0, 1e-3, 1_000_000), 1e-10),
        ("q 1e-5, σ 1, 100,000 steps", dpsgd(1.0, 1e-5, 100_000), 1e-5),
        ("q 1e-4, σ 0.8, 100,000 steps", dpsgd(0.8, 1e-4, 100_000), 1e-5),
        ("q 1e-5, σ 0.5, 1,000,000 steps", dpsgd(0.5, 1e-5, 1_000_000), 1e-5),
        ("calibrate ε 4: q 0.01, 1,000 steps", None, 1e-10),
    ]


def _fastpld_case(index: int, repeats: int) -> None:
    """One row of :func:`fastpld_table`, as JSON on stdout (run in a fresh process)."""
    from accounting import calibrate_dpsgd

    label, event, delta = _fastpld_cases()[index]

    def query() -> float:
        if event is None:
            cal = calibrate_dpsgd(target_epsilon=4.0, delta=delta, sampling_rate=0.01,
                                  steps=1_000)  # fmt: skip
            return cal.noise_multiplier
        return make_accountant().compose(event).epsilon(delta)

    make_accountant()
    times = []
    for _ in range(repeats):
        clear_caches()
        t0 = time.perf_counter()
        value = query()
        times.append(time.perf_counter() - t0)
    clear_caches()
    tracemalloc.start()
    query()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps([label, delta, value, times, peak, rss]))


def fastpld_table() -> None:
    print("| query | δ | ε (σ: calibrate) | median s (min–max) | query peak MB | process RSS MB |")
    print("|---|---|---|---|---|---|")
    for index in range(len(_fastpld_cases())):
        out = subprocess.run([sys.executable, __file__, "--fastpld-case", str(index)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        label, delta, value, times, peak, rss = json.loads(out.stdout.splitlines()[-1])
        print(
            f"| {label} | {delta:g} | {value:.6g} | {statistics.median(times):.3f} "
            f"({min(times):.3f}–{max(times):.3f}) | {peak:.0f} | {rss:.0f} |"
        )


def _time(label: str, event: Composed, repeats: int) -> None:
    for name in ("fastpld", "prv", "pld", "rdp"):
        make_accountant(name)  # import the backend library outside the timing
        times, eps = [], None
        for _ in range(repeats):
            clear_caches()  # every run builds from the events, as a first query does
            t0 = time.perf_counter()
            eps = make_accountant(name).compose(event).epsilon(1e-5)
            times.append(time.perf_counter() - t0)
        print(
            f"{name}: ε = {eps:.4f} at δ = 1e-5, median {statistics.median(times):.2f} s "
            f"(min {min(times):.2f}, max {max(times):.2f}; {repeats} runs, 10,000 steps in "
            f"{label})"
        )


if __name__ == "__main__":
    main()
