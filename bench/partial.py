"""Partial-fills benchmark (no database): one ``greedy`` cycle on the trace instances of
``bench/instances.py`` (1k and 10k open demands) with every demand set to ``split`` = ``none``
(the baseline), ``site`` and ``hub``: CPU seconds (best of ``REPEAT``) and their ratio to the
baseline in the same run, served GPU-hours, demands served and how many of them in parts (with
the parts written). The trace asks mostly 1 GPU, so a second variant multiplies every demand's
GPUs by 16 (data-parallel jobs larger than any offer of the fleet's 8-GPU nodes: only a split
can serve them).

Run: ``cd bench && ../.venv/bin/python partial.py`` (``SIZES=1000,10000``).
"""

import os
import time
from dataclasses import replace

from instances import cycle_instance, latency

from marketplace.matching.engine import snapshot_copy, solve_greedy

SIZES = [int(x) for x in os.environ.get("SIZES", "1000,10000").split(",")]
REPEAT = int(os.environ.get("REPEAT", "3"))


def main() -> None:
    lat = latency()
    print(
        f"{'demands':>8} {'offers':>7} {'GPUs ×':>6} {'split':>5} {'cpu s':>7} {'× none':>7} "
        f"{'served GPU-h':>12} {'served':>7} {'in parts':>8} {'parts':>6}"
    )
    for n in SIZES:
        demands, offers = cycle_instance(n)
        for scale in (1, 16):
            base = None
            for scope in ("none", "site", "hub"):
                cpu = float("inf")
                for _ in range(REPEAT):
                    d, o = snapshot_copy(
                        [replace(x, split=scope, gpu_count=x.gpu_count * scale) for x in demands],
                        offers,
                    )
                    c = time.process_time()
                    result = solve_greedy(d, o, latency=lat)
                    cpu = min(cpu, time.process_time() - c)
                base = base or cpu
                split = {m.demand_id for m in result.matches if m.gpus is not None}
                parts = sum(1 for m in result.matches if m.gpus is not None)
                print(
                    f"{n:>8} {len(offers):>7} {scale:>6} {scope:>5} {cpu:>7.3f} "
                    f"{cpu / base:>7.2f} {result.gpu_hours:>12} {len(result.served):>7} "
                    f"{len(split):>8} {parts:>6}"
                )


if __name__ == "__main__":
    main()
