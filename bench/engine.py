"""Engine-only benchmark (no database): solve time of one cycle for ``greedy`` and ``optimal``
at 1k / 10k / 50k open demands built from the Alibaba trace (``bench/instances.py``), the
candidate pairs greedy actually evaluated (offers of the buckets whose capacity it queried),
wall and CPU seconds (the machine is shared: CPU time is the steadier figure), the growth slope
of log(CPU time) over log(size), and quality: served GPU-hours ÷ a true upper bound.

Upper bound (``capacity_bound``): the LP relaxation over ALL feasible (demand, bucket) pairs —
bucket = offers of one model, site, price, provider — with each bucket's capacity aggregated to
its free GPU-hours over the instance's horizon and demands served fractionally. It drops the
hour-by-hour timelines, gang allocation and integrality, so it bounds every policy from above
(not the relaxation of optimal's pruned model).

Run: ``make bench-engine`` (``SIZES=1000,10000`` to choose sizes; ``TIME_LIMIT`` seconds).
"""

import math
import os
import time

import highspy
import numpy as np
from instances import cycle_instance, latency

from marketplace.matching.engine import (
    DemandSnap,
    OfferIndex,
    OfferSnap,
    snapshot_copy,
    solve_greedy,
)
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


def capacity_bound(
    demands: list[DemandSnap], offers: list[OfferSnap], lat: dict[tuple[str, str], float]
) -> float:
    """max Σ_d hours_d·y_d  s.t.  Σ_b x_db = hours_d·y_d,  Σ_d x_db ≤ free GPU-hours of b,
    0 ≤ y ≤ 1, x ≥ 0 over feasible pairs (model, price, locality, min duration, provider, and a
    window fit on the bucket's timelines). Sparse: one column per feasible pair."""
    index = OfferIndex(offers, lat)
    bucket_ids: dict[int, int] = {}
    cap: list[float] = []
    cols_d: list[int] = []
    cols_b: list[int] = []
    hours: list[float] = []
    for i, d in enumerate(demands):
        hours.append(float(d.gpu_count * d.duration))
        for bucket in index.usable(d):
            if bucket.earliest(d.gpu_count, d.duration, d.start, d.end) is None:
                continue
            b = bucket_ids.setdefault(id(bucket), len(cap))
            if b == len(cap):
                cap.append(float(bucket.free.sum()))
            cols_d.append(i)
            cols_b.append(b)
    n_d, n_b, n_x = len(demands), len(cap), len(cols_d)
    # columns: y_0..y_{n_d-1}, then x; rows: n_d balance rows (= 0), n_b capacity rows
    lp = highspy.HighsLp()
    lp.num_col_ = n_d + n_x
    lp.num_row_ = n_d + n_b
    lp.col_cost_ = np.concatenate([-np.array(hours), np.zeros(n_x)])
    lp.col_lower_ = np.zeros(n_d + n_x)
    lp.col_upper_ = np.concatenate([np.ones(n_d), np.full(n_x, highspy.kHighsInf)])
    lp.row_lower_ = np.concatenate([np.zeros(n_d), np.full(n_b, -highspy.kHighsInf)])
    lp.row_upper_ = np.concatenate([np.zeros(n_d), np.array(cap)])
    starts = np.concatenate([np.arange(n_d + 1), n_d + 2 * np.arange(1, n_x + 1)])
    index_ = np.empty(n_d + 2 * n_x, dtype=np.int32)
    values = np.empty(n_d + 2 * n_x)
    index_[:n_d] = np.arange(n_d)
    values[:n_d] = -np.array(hours)
    index_[n_d::2] = np.array(cols_d, dtype=np.int32)
    values[n_d::2] = 1.0
    index_[n_d + 1 :: 2] = n_d + np.array(cols_b, dtype=np.int32)
    values[n_d + 1 :: 2] = 1.0
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = starts.astype(np.int32)
    lp.a_matrix_.index_ = index_
    lp.a_matrix_.value_ = values
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    # one thread, as the engine (HiGHS's scheduler keeps the thread count of its first run)
    h.setOptionValue("threads", 1)
    h.passModel(lp)
    h.run()
    return -h.getInfo().objective_function_value


def main() -> None:
    lat = latency()
    rows = []
    print(
        f"{'demands':>8} {'offers':>7} {'pairs eval':>10} {'greedy s':>9} {'cpu s':>6} "
        f"{'cpu s/M':>7} {'optimal s':>9} {'cpu s':>6} {'blocks':>11} {'cols':>7} "
        f"{'bound':>8} {'greedy %':>8} {'optimal %':>9} {'asked GPU-h':>11}"
    )
    notes = []
    for n in SIZES:
        demands, offers = cycle_instance(n)
        asked = sum(d.gpu_count * d.duration for d in demands)
        d1, o1 = snapshot_copy(demands, offers)
        t, c = time.perf_counter(), time.process_time()
        greedy = solve_greedy(d1, o1, latency=lat)
        t_greedy, c_greedy = time.perf_counter() - t, time.process_time() - c
        d2, o2 = snapshot_copy(demands, offers)
        t, c = time.perf_counter(), time.process_time()
        optimal = solve_optimal(d2, o2, lat, OptimalSettings(time_limit=TIME_LIMIT))
        t_optimal, c_optimal = time.perf_counter() - t, time.process_time() - c
        bound = capacity_bound(*snapshot_copy(demands, offers), lat)
        pairs = greedy.pairs_considered
        rows.append((n, pairs, c_greedy, c_optimal))
        f = optimal.solver
        seconds = {k: float(v) for k, v in f.items() if k.endswith("_seconds")}  # type: ignore[arg-type]
        solved = int(f["blocks"]) - int(f["skipped"])  # type: ignore[call-overload]
        # blocks improved / solved / in all (a block not solved in time keeps greedy's answer)
        blocks = f"{f['improved']}/{solved}/{f['blocks']}"
        print(
            f"{n:>8} {len(offers):>7} {pairs:>10} {t_greedy:>9.3f} {c_greedy:>6.2f} "
            f"{c_greedy / max(pairs, 1) * 1e6:>7.3f} {t_optimal:>9.2f} {c_optimal:>6.2f} "
            f"{blocks:>11} {f['columns']:>7} "
            f"{bound:>8.0f} {100 * greedy.gpu_hours / bound:>8.2f} "
            f"{100 * optimal.gpu_hours / bound:>9.2f} {asked:>11}",
            flush=True,
        )
        steps = ", ".join(f"{k.removesuffix('_seconds')} {v:.2f}" for k, v in seconds.items())
        notes.append(
            f"{n:>8}: optimal {t_optimal:.2f} s of its {TIME_LIMIT:g} s limit "
            f"({'inside' if t_optimal <= TIME_LIMIT else 'OVER'}); steps s: {steps}; "
            f"clock cut work: {f['deadline_hit']}; solver statuses {f['statuses']}; "
            f"filled after the blocks {f['filled']}; GPU-h greedy {greedy.gpu_hours}, "
            f"optimal {optimal.gpu_hours}, bound {bound:.0f}"
            + ("" if optimal.gpu_hours >= greedy.gpu_hours else "  BELOW GREEDY")
        )
    print("\n".join(notes))
    sizes = [float(r[0]) for r in rows]
    pair_counts = [float(r[1]) for r in rows]
    print(
        f"log-log slope of CPU time over demands: greedy {slope(sizes, [r[2] for r in rows]):.2f},"
        f" optimal {slope(sizes, [r[3] for r in rows]):.2f}; greedy over pairs evaluated "
        f"{slope(pair_counts, [r[2] for r in rows]):.2f}"
    )


if __name__ == "__main__":
    main()
