"""Matching instances built from the Alibaba trace in ``data/`` (plain engine data, no ORM).

* Offers: GPU nodes of ``openb_node_list_gpu_node.csv`` in file order, one offer per node (its
  GPUs, its model), dealt round-robin to the nine provider cities of ``marketplace.demo``;
  price = the demo's reference price × the hub factor. Past the 1,213 nodes the fleet is
  dealt again (new offer ids). Availability: hours ``[0, horizon)``.
* Demands: GPU tasks of ``openb_pod_list_gpuspec33.csv`` in file order (again from the start
  past the ~7k GPU tasks, with arrivals shifted by the trace span): GPU count ``num_gpu``,
  acceptable models ``gpu_spec`` (empty = any), duration = run time in whole hours ≤ 72 h,
  arrival = creation time mapped onto ``[0, spread)`` hours, window = arrival … arrival +
  duration + 12 h. Buyer city, limit price mark-up (0.85–1.40 × the dearest acceptable model's
  reference) and locality limit come from the demo's fixed hash of the task name.
"""

import csv
import math
import os
import sys
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings.local")

import django  # noqa: E402

django.setup()

from marketplace import demo  # noqa: E402
from marketplace.matching.engine import DemandSnap, OfferSnap, SiteRef  # noqa: E402

HUB_OF_CITY = {
    "Chengdu": "chengdu-chongqing",
    "Deyang": "chengdu-chongqing",
    "Chongqing": "chengdu-chongqing",
    "Qingyang": "gansu",
    "Zhongwei": "ningxia",
    "Hohhot": "inner-mongolia",
    "Guiyang": "guizhou",
    "Wuhu": "yangtze-delta",
    "Shanghai": "yangtze-delta",
    "Hangzhou": "yangtze-delta",
    "Shaoguan": "guangdong-hk-macao",
    "Shenzhen": "guangdong-hk-macao",
    "Zhangjiakou": "beijing-tianjin-hebei",
    "Beijing": "beijing-tianjin-hebei",
}
METRO = {"Deyang": "Chengdu"}
LATENCY_MS = 10.0


def site(city: str) -> SiteRef:
    return SiteRef(f"site-{city}", city, METRO.get(city, city), HUB_OF_CITY[city])


def latency() -> dict[tuple[str, str], float]:
    hubs = sorted(set(HUB_OF_CITY.values()))
    return {(a, b): LATENCY_MS + abs(i - j) for i, a in enumerate(hubs) for j, b in enumerate(hubs)}


def _nodes() -> list[tuple[str, int]]:
    with open(ROOT / "data" / "openb_node_list_gpu_node.csv", newline="") as fh:
        return [
            (demo.TRACE_MODEL[r["model"]], int(r["gpu"]))
            for r in csv.DictReader(fh)
            if int(r["gpu"]) > 0
        ]


def _pods() -> list[dict[str, str]]:
    with open(ROOT / "data" / "openb_pod_list_gpuspec33.csv", newline="") as fh:
        return [r for r in csv.DictReader(fh) if int(r["num_gpu"]) > 0]


PRICES = demo.reference_prices()
NODES = _nodes()
PODS = _pods()
SPAN = max(int(p["creation_time"]) for p in PODS) + 1  # seconds, ~149 days


def offers(count: int, horizon: int) -> list[OfferSnap]:
    out = []
    for i in range(count):
        model, gpus = NODES[i % len(NODES)]
        city, _, factor, _ = demo.PROVIDERS[i % len(demo.PROVIDERS)]
        out.append(
            OfferSnap(
                id=f"o{i}",
                provider=f"p{i % len(demo.PROVIDERS)}",
                model=model,
                site=site(city),
                price=(PRICES[model] * factor).quantize(Decimal("0.0001")),
                gpu_count=gpus,
                start=0,
                end=horizon,
                listed=i,
            )
        )
    return out


def pod_demand(i: int, spread_hours: float, span_seconds: int = SPAN) -> DemandSnap:
    """The ``i``-th GPU task as a demand, arriving on ``[0, spread_hours)``."""
    row = PODS[i % len(PODS)]
    lap = i // len(PODS)
    created = int(row["creation_time"]) + lap * SPAN
    started = int(row["scheduled_time"] or row["creation_time"])
    seconds = max(1, int(row["deletion_time"]) - started)
    duration = min(demo.MAX_HOURS, math.ceil(seconds / 3600))
    models = sorted({demo.TRACE_MODEL[m] for m in row["gpu_spec"].split("|") if m}) or sorted(
        PRICES
    )
    h = demo.stable_hash(row["name"] + str(lap))
    city = demo.SMES[h % len(demo.SMES)][0]
    ref = max(PRICES[m] for m in models)
    arrival = int(created / span_seconds * spread_hours)
    return DemandSnap(
        id=f"d{i}",
        buyer=f"b{h % len(demo.SMES)}",
        related=frozenset(),
        models=frozenset(models),
        gpu_count=int(row["num_gpu"]),
        duration=duration,
        start=arrival,
        end=arrival + duration + demo.SLACK_HOURS,
        max_price=(ref * demo.MARKUPS[(h >> 8) % len(demo.MARKUPS)]).quantize(Decimal("0.0001")),
        origin=site(city),
        limit=demo.LIMITS[(h >> 16) % len(demo.LIMITS)],
        posted=i,
    )


def cycle_instance(n_demands: int) -> tuple[list[DemandSnap], list[OfferSnap]]:
    """One batch: ``n`` open demands arriving over 48 h, ``n / 5`` single-node offers over
    72 h (about one GPU per demand: a contended market)."""
    span = SPAN * math.ceil(n_demands / len(PODS))
    demands = [pod_demand(i, 48, span) for i in range(n_demands)]
    return demands, offers(max(1, n_demands // 5), 72 + demo.MAX_HOURS + demo.SLACK_HOURS)
