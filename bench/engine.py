"""Engine-only benchmark (no database): solve time of one cycle for ``greedy`` and ``optimal``
at 1k / 10k / 50k open demands built from the Alibaba trace (``bench/instances.py``), the
number of candidate pairs (demand × offer of an acceptable model), the growth slope of
log(time) over log(size), and quality: served GPU-hours ÷ the LP-relaxation bound.

Run: ``make bench-engine`` (``SIZES=1000,10000`` to choose sizes; ``TIME_LIMIT`` seconds).
"""

import copy
import math
import os
import time

from instances import cycle_instance, latency

from marketplace.matching.engine import solve_greedy
from marketplace.matching.optimal import OptimalSettings, solve_optimal

SIZES = [int(x) for x in os.environ.get("SIZES", "1000,10000,50000").split(",")]
TIME_LIMIT = float(os.environ.get("TIME_LIMIT", "10"))


def slope(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 2:
        return float("nan")
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum(
        (a - mx) ** 2 for a in lx
    )


def main() -> None:
    lat = latency()
    rows = []
    print(
        f"{'demands':>8} {'offers':>7} {'pairs':>10} {'greedy s':>9} {'s/M pairs':>9} "
        f"{'optimal s':>9} {'cols':>7} {'status':>12} {'LP bound':>10} "
        f"{'greedy %':>8} {'optimal %':>9} {'asked GPU-h':>11}"
    )
    for n in SIZES:
        demands, offers = cycle_instance(n)
        asked = sum(d.gpu_count * d.duration for d in demands)
        t = time.perf_counter()
        greedy = solve_greedy(copy.deepcopy(demands), copy.deepcopy(offers), latency=lat)
        t_greedy = time.perf_counter() - t
        t = time.perf_counter()
        optimal = solve_optimal(
            copy.deepcopy(demands),
            copy.deepcopy(offers),
            lat,
            OptimalSettings(time_limit=TIME_LIMIT),
        )
        t_optimal = time.perf_counter() - t
        relaxed = solve_optimal(
            copy.deepcopy(demands),
            copy.deepcopy(offers),
            lat,
            OptimalSettings(time_limit=600, relax=True),
        ).solver.get("lp_bound_gpu_hours", 0.0)
        assert isinstance(relaxed, float)
        bound = math.floor(relaxed + 1)  # the secondary terms are worth < 1 GPU-hour
        pairs = greedy.pairs_considered
        rows.append((n, pairs, t_greedy, t_optimal))
        print(
            f"{n:>8} {len(offers):>7} {pairs:>10} {t_greedy:>9.3f} "
            f"{t_greedy / max(pairs, 1) * 1e6:>9.3f} {t_optimal:>9.2f} "
            f"{optimal.solver.get('columns', 0):>7} {optimal.solver.get('status', '-'):>12} "
            f"{bound:>10} {100 * greedy.gpu_hours / bound:>8.2f} "
            f"{100 * optimal.gpu_hours / bound:>9.2f} {asked:>11}"
        )
        if optimal.solver.get("fallback"):
            print(f"{'':>8} optimal fell back to greedy: {optimal.solver['fallback']}")
    sizes = [float(r[0]) for r in rows]
    pair_counts = [float(r[1]) for r in rows]
    print(
        f"log-log slope of time over demands: greedy {slope(sizes, [r[2] for r in rows]):.2f}, "
        f"optimal {slope(sizes, [r[3] for r in rows]):.2f}; "
        f"greedy over candidate pairs {slope(pair_counts, [r[2] for r in rows]):.2f}"
    )
    print(
        "LP bound: the relaxation of the same programme (same pruned candidate columns: "
        "up to 8 offers per demand, earliest and latest start each)."
    )


if __name__ == "__main__":
    main()
