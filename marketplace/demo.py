"""The main job on real input (PRODUCT.md §8): build a market from the Alibaba GPU trace and
replay it through matching, settlement and the ledger audit.

How the trace becomes a market (also in the README):

* **Offers** — the 1,213 GPU nodes of ``openb_node_list_gpu_node.csv`` are dealt, in node order,
  to provider data centres in nine hubs; a provider's nodes of one model and node size form one
  offer, available from tomorrow 00:00 UTC for ``OFFER_DAYS`` days.
* **Prices** — per-GPU median on-demand USD/hour of ``cloud-gpus.csv`` for the model, converted at
  ``USD_CNY`` CNY per USD, times a hub factor (western hubs cheaper, "East Data, West Computing").
  G1/G2/G3 are undisclosed Alibaba codes; they are priced like the V100 (32 GB) rows.
* **Demands** — the first ``n`` GPU tasks of ``openb_pod_list_gpuspec33.csv``: GPU count =
  ``num_gpu`` (a fractional GPU asks for one whole GPU), acceptable models = ``gpu_spec`` (empty =
  any), duration
  = run time rounded up to whole hours and capped at ``MAX_HOURS``; arrival = ``creation_time``
  compressed by ``COMPRESSION`` onto a calendar starting tomorrow 00:00 UTC; the window is
  ``[arrival hour, arrival hour + duration + SLACK_HOURS)``. Buyer, limit price mark-up and
  locality limit are drawn from the task name with a fixed hash, so every run is the same.
"""

import csv
import hashlib
import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

from django.conf import settings

DATA = Path(settings.BASE_DIR) / "data"
USD_CNY = Decimal("7.20")  # stated conversion rate, CNY per USD
COMPRESSION = 18  # 126 trace days → 7 calendar days
MAX_HOURS = 72
SLACK_HOURS = 12
OFFER_DAYS = 14

# Trace model → price rows of cloud-gpus.csv ("GPU Type" column) used for its reference price.
PRICE_ROWS = {
    "T4": ["T4 (16 GB)"],
    "P100": ["P100 (16 GB)"],
    "V100-16G": ["V100 (16 GB)"],
    "V100-32G": ["V100 (32 GB)"],
    "A10": ["A10", "A10 (24 GB)", "A10G (24 GB)"],
    "G1": ["V100 (32 GB)"],
    "G2": ["V100 (32 GB)"],
    "G3": ["V100 (32 GB)"],
}
TRACE_MODEL = {
    "V100M16": "V100-16G",
    "V100M32": "V100-32G",
    "T4": "T4",
    "P100": "P100",
    "A10": "A10",
    "G1": "G1",
    "G2": "G2",
    "G3": "G3",
}

# Provider data centres: (city, name, hub price factor, models they host besides G2 and T4).
PROVIDERS = [
    ("Chengdu", "Tianfu Intelligent Computing Co.", Decimal("0.90"), ["V100-16G", "V100-32G"]),
    ("Chongqing", "Chongqing Cloud Compute Co.", Decimal("0.90"), ["P100"]),
    ("Qingyang", "Qingyang East-West Compute Co.", Decimal("0.80"), ["V100-16G", "V100-32G", "G3"]),
    ("Zhongwei", "Zhongwei Desert Cloud Co.", Decimal("0.80"), ["G3", "P100"]),
    ("Hohhot", "Horinger Green Compute Co.", Decimal("0.80"), ["V100-16G", "V100-32G", "G1"]),
    ("Guiyang", "Gui'an Big Data Compute Co.", Decimal("0.80"), ["P100"]),
    ("Wuhu", "Wuhu Yangtze Compute Co.", Decimal("1.10"), []),
    ("Shaoguan", "Shaoguan Bay Area Compute Co.", Decimal("1.10"), ["A10"]),
    ("Zhangjiakou", "Zhangjiakou Capital Compute Co.", Decimal("1.10"), []),
]

# SMEs: (city, name, programme code or None, voucher face value CNY).
SMES = [
    ("Chengdu", "Rongcheng Vision AI", "chengdu-2025", Decimal("200000.00")),
    ("Chengdu", "Jinjiang Speech Labs", "chengdu-2025", Decimal("150000.00")),
    ("Chengdu", "Tianfu Genomics", "chengdu-2025", Decimal("100000.00")),
    ("Deyang", "Deyang Smart Manufacturing", "chengdu-2025", Decimal("80000.00")),
    ("Chongqing", "Yuzhong Robotics", None, Decimal(0)),
    ("Beijing", "Haidian LLM Studio", "beijing", Decimal("300000.00")),
    ("Beijing", "Zhongguancun Drug Discovery", "beijing", Decimal("200000.00")),
    ("Shanghai", "Pudong Quant Research", None, Decimal(0)),
    ("Hangzhou", "West Lake E-commerce AI", "hangzhou", Decimal("150000.00")),
    ("Shenzhen", "Nanshan Autonomous Driving", "shenzhen", Decimal("400000.00")),
    ("Shenzhen", "Futian Fintech Models", "shenzhen", Decimal("100000.00")),
    ("Qingyang", "Longdong Agritech", "qingyang", Decimal("50000.00")),
    ("Guiyang", "Guizhou Data Valley", None, Decimal(0)),
]
DIVISION = {
    "Chengdu": "510100",
    "Deyang": "510600",
    "Chongqing": "500000",
    "Beijing": "110000",
    "Shanghai": "310000",
    "Hangzhou": "330100",
    "Shenzhen": "440300",
    "Qingyang": "621000",
    "Guiyang": "520100",
    "Zhongwei": "640500",
    "Hohhot": "150100",
    "Wuhu": "340200",
    "Shaoguan": "440200",
    "Zhangjiakou": "130700",
}
LIMITS = ["city", "metro", "region", "national", "national"]
MARKUPS = [Decimal("0.85"), Decimal("1.00"), Decimal("1.15"), Decimal("1.40")]


def stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def reference_prices() -> dict[str, Decimal]:
    """CNY per GPU-hour for each trace model: median ``Per-GPU`` USD of its rows × ``USD_CNY``."""
    per_type: dict[str, list[float]] = defaultdict(list)
    with open(DATA / "cloud-gpus.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["Per-GPU"]:
                per_type[row["GPU Type"]].append(float(row["Per-GPU"]))
    prices = {}
    for model, types in PRICE_ROWS.items():
        values = [v for t in types for v in per_type[t]]
        median = Decimal(str(statistics.median(values)))
        prices[model] = (median * USD_CNY).quantize(Decimal("0.0001"))
    return prices


@dataclass(frozen=True)
class NodeGroup:
    provider_index: int
    model: str
    gpus_per_node: int
    gpu_count: int


def fleet_offers() -> list[NodeGroup]:
    """Deal the trace's GPU nodes to providers and group them into offers (see module doc)."""
    hosts: dict[str, list[int]] = defaultdict(list)
    for i, (_, _, _, extra) in enumerate(PROVIDERS):
        for model in ["G2", "T4", *extra]:
            hosts[model].append(i)
    counters: Counter[str] = Counter()
    groups: dict[tuple[int, str, int], int] = defaultdict(int)
    with open(DATA / "openb_node_list_gpu_node.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            model = TRACE_MODEL[row["model"]]
            gpus = int(row["gpu"])
            if gpus <= 0:
                continue
            owners = hosts.get(model) or list(range(len(PROVIDERS)))
            provider = owners[counters[model] % len(owners)]
            counters[model] += 1
            groups[(provider, model, gpus)] += gpus
    return [NodeGroup(p, m, n, total) for (p, m, n), total in sorted(groups.items())]


@dataclass(frozen=True)
class TraceDemand:
    name: str
    arrival: datetime
    gpu_count: int
    models: tuple[str, ...]
    duration_hours: int


def trace_demands(limit: int, calendar_start: datetime) -> list[TraceDemand]:
    """The first ``limit`` GPU tasks of the trace as demands (see module doc)."""
    out: list[TraceDemand] = []
    with open(DATA / "openb_pod_list_gpuspec33.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if int(row["num_gpu"]) <= 0:
                continue
            created = int(row["creation_time"])
            started = int(row["scheduled_time"] or row["creation_time"])
            seconds = max(1, int(row["deletion_time"]) - started)
            models = tuple(sorted({TRACE_MODEL[m] for m in row["gpu_spec"].split("|") if m}))
            out.append(
                TraceDemand(
                    name=row["name"],
                    arrival=calendar_start + timedelta(seconds=created / COMPRESSION),
                    gpu_count=int(row["num_gpu"]),
                    models=models,
                    duration_hours=min(MAX_HOURS, math.ceil(seconds / 3600)),
                )
            )
            if len(out) >= limit:
                break
    return out
