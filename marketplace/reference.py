"""Reference data shipped with the product (PRODUCT.md §2), as plain Python data.

Loaded (and re-loaded, idempotently) by ``manage.py load_reference``. Operators may edit the rows
afterwards in the admin; a later ``load_reference`` puts the shipped values back on the shipped
codes and leaves every other row alone.

Sources:

* Hubs and clusters: NDRC et al., 2022 replies approving the national computing-hub nodes of the
  "East Data, West Computing" (东数西算) project — 8 hubs, 10 data-centre clusters — and the 2021
  《全国一体化大数据中心协同创新体系算力枢纽实施方案》, which groups Beijing-Tianjin-Hebei,
  Yangtze River Delta, Greater Bay Area and Chengdu-Chongqing as the demand-side hubs and
  Inner Mongolia, Guizhou, Gansu and Ningxia as the hubs with renewable energy that serve
  non-real-time work ("west").
* Accelerators: the vendors' datasheets, dense (no sparsity) BF16/FP16 tensor TFLOPS.
* Voucher programmes: PRODUCT.md §2 and §5.6; values that document does not give are marked
  "assumed" where they are set.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

# --- Hubs ------------------------------------------------------------------------------------
# ``is_west``: the 2021 implementation plan names four western hubs (Inner Mongolia, Guizhou,
# Gansu, Ningxia). Chengdu-Chongqing lies in the west geographically but the plan groups it with
# the eastern, demand-side hubs ("用户规模较大、应用需求强烈"), so it is *not* flagged west here.
HUBS: list[dict[str, Any]] = [
    {
        "code": "beijing-tianjin-hebei",
        "name": "Beijing-Tianjin-Hebei",
        "name_zh": "京津冀",
        "is_west": False,
    },
    {
        "code": "yangtze-river-delta",
        "name": "Yangtze River Delta",
        "name_zh": "长三角",
        "is_west": False,
    },
    {
        "code": "greater-bay-area",
        "name": "Guangdong-Hong Kong-Macao Greater Bay Area",
        "name_zh": "粤港澳大湾区",
        "is_west": False,
    },
    {"code": "chengdu-chongqing", "name": "Chengdu-Chongqing", "name_zh": "成渝", "is_west": False},
    {"code": "inner-mongolia", "name": "Inner Mongolia", "name_zh": "内蒙古", "is_west": True},
    {"code": "guizhou", "name": "Guizhou", "name_zh": "贵州", "is_west": True},
    {"code": "gansu", "name": "Gansu", "name_zh": "甘肃", "is_west": True},
    {"code": "ningxia", "name": "Ningxia", "name_zh": "宁夏", "is_west": True},
]

# --- Clusters (the 10 national data-centre clusters) -----------------------------------------
CLUSTERS: list[dict[str, Any]] = [
    {
        "code": "zhangjiakou",
        "name": "Zhangjiakou cluster",
        "name_zh": "张家口数据中心集群",
        "hub": "beijing-tianjin-hebei",
    },
    {
        "code": "yrd-demo-zone",
        "name": "Yangtze River Delta ecological green integration demonstration zone cluster",
        "name_zh": "长三角生态绿色一体化发展示范区数据中心集群",
        "hub": "yangtze-river-delta",
    },
    {
        "code": "wuhu",
        "name": "Wuhu cluster",
        "name_zh": "芜湖数据中心集群",
        "hub": "yangtze-river-delta",
    },
    {
        "code": "shaoguan",
        "name": "Shaoguan cluster",
        "name_zh": "韶关数据中心集群",
        "hub": "greater-bay-area",
    },
    {
        "code": "tianfu",
        "name": "Tianfu cluster",
        "name_zh": "天府数据中心集群",
        "hub": "chengdu-chongqing",
    },
    {
        "code": "chongqing",
        "name": "Chongqing cluster",
        "name_zh": "重庆数据中心集群",
        "hub": "chengdu-chongqing",
    },
    {
        "code": "horinger",
        "name": "Horinger cluster",
        "name_zh": "和林格尔数据中心集群",
        "hub": "inner-mongolia",
    },
    {"code": "guian", "name": "Gui'an cluster", "name_zh": "贵安数据中心集群", "hub": "guizhou"},
    {"code": "qingyang", "name": "Qingyang cluster", "name_zh": "庆阳数据中心集群", "hub": "gansu"},
    {
        "code": "zhongwei",
        "name": "Zhongwei cluster",
        "name_zh": "中卫数据中心集群",
        "hub": "ningxia",
    },
]

# --- Reference sites (provider=None) -----------------------------------------------------------
# ``metro_area`` drives the ``metro`` locality tier (§2). Metropolitan areas follow the cities'
# own plans where they exist: the Chengdu metro area (成都都市圈) is Chengdu, Deyang, Meishan and
# Ziyang; Wuhu belongs to the Nanjing metro area (南京都市圈); Beijing, Tianjin and Langfang are
# treated as one metro (the capital's commuter belt); Shanghai with Suzhou and Jiaxing; Guangzhou
# with Foshan; Shenzhen with Dongguan. A cluster is set where the site lies in a cluster's
# starting zone (e.g. Tianfu: Shuangliu, Pidu, Jianyang; Horinger: Horinger New Area and the
# Jining big-data park in Ulanqab; YRD demo zone: Qingpu, Wujiang, Jiashan).
_SITE_ROWS: list[tuple[str, str, str, str, str, str | None]] = [
    # code, name, city, metro_area, hub, cluster
    (
        "beijing-yizhuang",
        "Yizhuang DC (Beijing)",
        "Beijing",
        "Beijing",
        "beijing-tianjin-hebei",
        None,
    ),
    ("tianjin-binhai", "Binhai DC (Tianjin)", "Tianjin", "Beijing", "beijing-tianjin-hebei", None),
    (
        "langfang-kaifaqu",
        "Langfang Development Zone DC (Langfang)",
        "Langfang",
        "Beijing",
        "beijing-tianjin-hebei",
        None,
    ),
    (
        "zhangjiakou-huailai",
        "Huailai DC (Zhangjiakou)",
        "Zhangjiakou",
        "Zhangjiakou",
        "beijing-tianjin-hebei",
        "zhangjiakou",
    ),
    (
        "zhangjiakou-zhangbei",
        "Zhangbei DC (Zhangjiakou)",
        "Zhangjiakou",
        "Zhangjiakou",
        "beijing-tianjin-hebei",
        "zhangjiakou",
    ),
    (
        "shanghai-qingpu",
        "Qingpu DC (Shanghai)",
        "Shanghai",
        "Shanghai",
        "yangtze-river-delta",
        "yrd-demo-zone",
    ),
    (
        "shanghai-lingang",
        "Lingang DC (Shanghai)",
        "Shanghai",
        "Shanghai",
        "yangtze-river-delta",
        None,
    ),
    (
        "suzhou-wujiang",
        "Wujiang DC (Suzhou)",
        "Suzhou",
        "Shanghai",
        "yangtze-river-delta",
        "yrd-demo-zone",
    ),
    (
        "jiaxing-jiashan",
        "Jiashan DC (Jiaxing)",
        "Jiaxing",
        "Shanghai",
        "yangtze-river-delta",
        "yrd-demo-zone",
    ),
    (
        "hangzhou-xiaoshan",
        "Xiaoshan DC (Hangzhou)",
        "Hangzhou",
        "Hangzhou",
        "yangtze-river-delta",
        None,
    ),
    (
        "nanjing-jiangning",
        "Jiangning DC (Nanjing)",
        "Nanjing",
        "Nanjing",
        "yangtze-river-delta",
        None,
    ),
    ("wuhu-jiangbei", "Jiangbei DC (Wuhu)", "Wuhu", "Nanjing", "yangtze-river-delta", "wuhu"),
    (
        "guangzhou-nansha",
        "Nansha DC (Guangzhou)",
        "Guangzhou",
        "Guangzhou",
        "greater-bay-area",
        None,
    ),
    ("foshan-shunde", "Shunde DC (Foshan)", "Foshan", "Guangzhou", "greater-bay-area", None),
    ("shenzhen-qianhai", "Qianhai DC (Shenzhen)", "Shenzhen", "Shenzhen", "greater-bay-area", None),
    (
        "dongguan-songshanhu",
        "Songshan Lake DC (Dongguan)",
        "Dongguan",
        "Shenzhen",
        "greater-bay-area",
        None,
    ),
    (
        "shaoguan-zhenjiang",
        "Zhenjiang DC (Shaoguan)",
        "Shaoguan",
        "Shaoguan",
        "greater-bay-area",
        "shaoguan",
    ),
    # The two Chengdu centres of the 2023 voucher programme: Chengdu Supercomputing Center
    # (Tianfu) and Chengdu Intelligent Computing Center (Pidu).
    ("chengdu-tianfu", "Tianfu DC (Chengdu)", "Chengdu", "Chengdu", "chengdu-chongqing", "tianfu"),
    ("chengdu-pidu", "Pidu DC (Chengdu)", "Chengdu", "Chengdu", "chengdu-chongqing", "tianfu"),
    ("deyang", "Deyang DC (Deyang)", "Deyang", "Chengdu", "chengdu-chongqing", None),
    ("meishan", "Meishan DC (Meishan)", "Meishan", "Chengdu", "chengdu-chongqing", None),
    ("ziyang", "Ziyang DC (Ziyang)", "Ziyang", "Chengdu", "chengdu-chongqing", None),
    (
        "chongqing-liangjiang",
        "Liangjiang DC (Chongqing)",
        "Chongqing",
        "Chongqing",
        "chengdu-chongqing",
        "chongqing",
    ),
    ("hohhot-horinger", "Horinger DC (Hohhot)", "Hohhot", "Hohhot", "inner-mongolia", "horinger"),
    ("ulanqab-jining", "Jining DC (Ulanqab)", "Ulanqab", "Ulanqab", "inner-mongolia", "horinger"),
    ("guiyang-guian", "Gui'an DC (Guiyang)", "Guiyang", "Guiyang", "guizhou", "guian"),
    ("qingyang", "Qingyang DC (Qingyang)", "Qingyang", "Qingyang", "gansu", "qingyang"),
    ("lanzhou", "Lanzhou DC (Lanzhou)", "Lanzhou", "Lanzhou", "gansu", None),
    ("zhongwei", "Zhongwei DC (Zhongwei)", "Zhongwei", "Zhongwei", "ningxia", "zhongwei"),
    ("yinchuan", "Yinchuan DC (Yinchuan)", "Yinchuan", "Yinchuan", "ningxia", None),
]
SITES: list[dict[str, Any]] = [
    {"code": code, "name": name, "city": city, "metro_area": metro, "hub": hub, "cluster": cluster}
    for code, name, city, metro, hub, cluster in _SITE_ROWS
]

# --- Hub-to-hub latency (ms) -------------------------------------------------------------------
# PRODUCT.md §2 gives only the aggregate: measured average 9.7 ms, maximum 17.1 ms. Per-pair
# values are *estimates*: great-circle distance between representative cities (Beijing,
# Shanghai, Guangzhou, Chengdu/Chongqing midpoint, Hohhot, Guiyang, Qingyang, Zhongwei) mapped
# by ``a + b·d^1.3`` (a fixed ≈1.4 ms of equipment delay; long routes take more hops) and fitted
# so that the 28 pairs average exactly 9.7 ms with a maximum of 17.1 ms (three pairs rounded up
# by 0.1 ms to hit the average). Stored in both directions; the diagonal is the ``region`` tier.
HUB_LATENCY_MS: list[tuple[str, str, Decimal]] = [
    (a, b, Decimal(ms))
    for a, b, ms in [
        ("beijing-tianjin-hebei", "yangtze-river-delta", "8.5"),  # 1,071 km
        ("beijing-tianjin-hebei", "greater-bay-area", "16.2"),  # 1,891 km
        ("beijing-tianjin-hebei", "chengdu-chongqing", "12.2"),  # 1,484 km
        ("beijing-tianjin-hebei", "inner-mongolia", "3.4"),  # 411 km
        ("beijing-tianjin-hebei", "guizhou", "14.6"),  # 1,730 km
        ("beijing-tianjin-hebei", "gansu", "7.2"),  # 903 km
        ("beijing-tianjin-hebei", "ningxia", "7.9"),  # 1,007 km
        ("yangtze-river-delta", "greater-bay-area", "9.7"),  # 1,211 km
        ("yangtze-river-delta", "chengdu-chongqing", "12.9"),  # 1,553 km
        ("yangtze-river-delta", "inner-mongolia", "11.3"),  # 1,383 km
        ("yangtze-river-delta", "guizhou", "12.6"),  # 1,527 km
        ("yangtze-river-delta", "gansu", "11.3"),  # 1,382 km
        ("yangtze-river-delta", "ningxia", "13.8"),  # 1,649 km
        ("greater-bay-area", "chengdu-chongqing", "8.8"),  # 1,112 km
        ("greater-bay-area", "inner-mongolia", "17.1"),  # 1,974 km (the maximum)
        ("greater-bay-area", "guizhou", "6.0"),  # 771 km
        ("greater-bay-area", "gansu", "12.4"),  # 1,505 km
        ("greater-bay-area", "ningxia", "15.1"),  # 1,778 km
        ("chengdu-chongqing", "inner-mongolia", "10.7"),  # 1,323 km
        ("chengdu-chongqing", "guizhou", "3.4"),  # 413 km
        ("chengdu-chongqing", "gansu", "5.2"),  # 659 km
        ("chengdu-chongqing", "ningxia", "6.4"),  # 823 km
        ("inner-mongolia", "guizhou", "13.8"),  # 1,645 km
        ("inner-mongolia", "gansu", "5.3"),  # 670 km
        ("inner-mongolia", "ningxia", "5.2"),  # 670 km
        ("guizhou", "gansu", "8.1"),  # 1,015 km
        ("guizhou", "ningxia", "9.8"),  # 1,220 km
        ("gansu", "ningxia", "2.7"),  # 293 km
    ]
]
HUB_LATENCY_AVERAGE_MS = Decimal("9.7")
HUB_LATENCY_MAX_MS = Decimal("17.1")

# --- Accelerator catalogue ---------------------------------------------------------------------
# ``bf16_tflops``: dense (no 2:4 sparsity) BF16/FP16 tensor-core TFLOPS from the vendors' data
# sheets; for cards without BF16 (T4, P100, V100) the FP16 figure. Aliases are matched
# case-insensitively by ``marketplace.services.accelerators_resolve`` and must be unique across
# the catalogue (a test checks this); ambiguous names ("V100", "A100") are left out on purpose
# except where PRODUCT.md's own examples need them ("h100" means the SXM5 part).
_UNDISCLOSED = "undisclosed (Alibaba trace)"
ACCELERATORS: list[dict[str, Any]] = [
    {
        "code": "A100-40G",
        "vendor": "NVIDIA",
        "memory_gb": 40,
        "bf16_tflops": Decimal("312"),
        "interconnect": "NVLink",
        "is_domestic": False,
        "aliases": ["NVIDIA A100 40GB", "A100 40GB", "A100-SXM4-40GB", "a100-40"],
    },
    {
        "code": "A100-80G",
        "vendor": "NVIDIA",
        "memory_gb": 80,
        "bf16_tflops": Decimal("312"),
        "interconnect": "NVLink",
        "is_domestic": False,
        "aliases": ["NVIDIA A100 80GB", "A100 80GB", "A100-SXM4-80GB", "a100", "a100-80"],
    },
    {
        "code": "A800-80G",
        "vendor": "NVIDIA",
        "memory_gb": 80,
        "bf16_tflops": Decimal("312"),
        "interconnect": "NVLink",
        "is_domestic": False,
        "aliases": ["NVIDIA A800 80GB", "A800 80GB", "a800"],
        "note": "China-market A100 variant (NVLink 400 GB/s).",
    },
    {
        "code": "H100-SXM5-80G",
        "vendor": "NVIDIA",
        "memory_gb": 80,
        "bf16_tflops": Decimal("989"),
        "interconnect": "NVLink",
        "is_domestic": False,
        "aliases": ["NVIDIA H100 80GB", "NVIDIA H100 SXM5 80GB", "H100 SXM", "H100-SXM", "h100"],
    },
    {
        "code": "H100-PCIe-80G",
        "vendor": "NVIDIA",
        "memory_gb": 80,
        "bf16_tflops": Decimal("756"),
        "interconnect": "PCIe",
        "is_domestic": False,
        "aliases": ["NVIDIA H100 PCIe 80GB", "H100 PCIe", "h100-pcie"],
    },
    {
        "code": "H800-80G",
        "vendor": "NVIDIA",
        "memory_gb": 80,
        "bf16_tflops": Decimal("989"),
        "interconnect": "NVLink",
        "is_domestic": False,
        "aliases": ["NVIDIA H800 80GB", "H800 80GB", "h800"],
        "note": "China-market H100 variant (NVLink 400 GB/s).",
    },
    {
        "code": "H20-96G",
        "vendor": "NVIDIA",
        "memory_gb": 96,
        "bf16_tflops": Decimal("148"),
        "interconnect": "NVLink",
        "is_domestic": False,
        "aliases": ["NVIDIA H20 96GB", "H20 96GB", "h20"],
        "note": "China-market Hopper part; NVIDIA, so not domestic.",
    },
    {
        "code": "H200-141G",
        "vendor": "NVIDIA",
        "memory_gb": 141,
        "bf16_tflops": Decimal("989"),
        "interconnect": "NVLink",
        "is_domestic": False,
        "aliases": ["NVIDIA H200 141GB", "H200 141GB", "h200"],
    },
    {
        "code": "L40S-48G",
        "vendor": "NVIDIA",
        "memory_gb": 48,
        "bf16_tflops": Decimal("362"),
        "interconnect": "PCIe",
        "is_domestic": False,
        "aliases": ["NVIDIA L40S 48GB", "L40S", "L40S 48GB"],
    },
    {
        "code": "L20-48G",
        "vendor": "NVIDIA",
        "memory_gb": 48,
        "bf16_tflops": Decimal("119.5"),
        "interconnect": "PCIe",
        "is_domestic": False,
        "aliases": ["NVIDIA L20 48GB", "L20", "L20 48GB"],
    },
    {
        "code": "RTX4090-24G",
        "vendor": "NVIDIA",
        "memory_gb": 24,
        "bf16_tflops": Decimal("165"),
        "interconnect": "PCIe",
        "is_domestic": False,
        "aliases": ["NVIDIA GeForce RTX 4090", "RTX 4090", "rtx4090", "4090"],
        "note": "165 TFLOPS = dense FP16 with FP32 accumulate.",
    },
    {
        "code": "Ascend910B-64G",
        "vendor": "Huawei",
        "memory_gb": 64,
        "bf16_tflops": Decimal("320"),
        "interconnect": "HCCS",
        "is_domestic": True,
        "aliases": ["Huawei Ascend 910B", "Ascend 910B", "ascend910b", "910b"],
        "note": "≈320 TFLOPS FP16; varies by SKU (910B1 to 910B4).",
    },
    # Models of the Alibaba trace (openb, gpu_spec / node model column).
    {
        "code": "T4",
        "vendor": "NVIDIA",
        "memory_gb": 16,
        "bf16_tflops": Decimal("65"),
        "interconnect": "PCIe",
        "is_domestic": False,
        "aliases": ["NVIDIA T4", "Tesla T4", "T4-16G"],
        "note": "FP16 tensor (no BF16).",
    },
    {
        "code": "P100",
        "vendor": "NVIDIA",
        "memory_gb": 16,
        "bf16_tflops": Decimal("18.7"),
        "interconnect": "PCIe",
        "is_domestic": False,
        "aliases": ["NVIDIA P100", "Tesla P100", "P100-16G"],
        "note": "FP16 (no tensor cores), PCIe 16 GB part.",
    },
    {
        "code": "V100-16G",
        "vendor": "NVIDIA",
        "memory_gb": 16,
        "bf16_tflops": Decimal("125"),
        "interconnect": "NVLink",
        "is_domestic": False,
        "aliases": ["V100M16", "NVIDIA V100 16GB", "Tesla V100 16GB"],
        "note": "FP16 tensor (no BF16), SXM2.",
    },
    {
        "code": "V100-32G",
        "vendor": "NVIDIA",
        "memory_gb": 32,
        "bf16_tflops": Decimal("125"),
        "interconnect": "NVLink",
        "is_domestic": False,
        "aliases": ["V100M32", "NVIDIA V100 32GB", "Tesla V100 32GB"],
        "note": "FP16 tensor (no BF16), SXM2.",
    },
    {
        "code": "A10",
        "vendor": "NVIDIA",
        "memory_gb": 24,
        "bf16_tflops": Decimal("125"),
        "interconnect": "PCIe",
        "is_domestic": False,
        "aliases": ["NVIDIA A10", "A10-24G"],
    },
    *[
        {
            "code": code,
            "vendor": _UNDISCLOSED,
            "memory_gb": None,
            "bf16_tflops": None,
            "interconnect": "",
            "is_domestic": False,
            "aliases": [],
            "note": "Undisclosed internal GPU code of the Alibaba cluster trace v2023; "
            "memory and TFLOPS unknown.",
        }
        for code in ("G1", "G2", "G3")
    ],
]
# Codes PRODUCT.md §2 requires at least.
REQUIRED_ACCELERATOR_CODES = (
    "A100-40G",
    "A100-80G",
    "A800-80G",
    "H100-SXM5-80G",
    "H100-PCIe-80G",
    "H800-80G",
    "H20-96G",
    "H200-141G",
    "L40S-48G",
    "L20-48G",
    "RTX4090-24G",
    "Ascend910B-64G",
    "T4",
    "P100",
    "V100-16G",
    "V100-32G",
    "A10",
)

# --- Voucher programmes (seed rows) ------------------------------------------------------------
# Budgets, shares and caps in CNY from PRODUCT.md §2/§5.6. Region scope: the issuing city's hub
# (codes in ``hubs``), or named sites. ``effective_from`` is set by the loader to 1 January of the
# current year (Asia/Shanghai) when the row is first created and never moved afterwards.
PROGRAMMES: list[dict[str, Any]] = [
    {
        "code": "chengdu-2025",
        "name": "Chengdu compute vouchers 2025",
        "issuer_city": "Chengdu",
        "annual_budget": Decimal("100000000.00"),
        "max_share": Decimal("0.6000"),
        "buyer_annual_cap": Decimal("5000000.00"),
        "min_voucher_amount": Decimal("0.00"),
        "validity_months": 12,
        "hubs": ["chengdu-chongqing"],
        "clusters": [],
        "sites": [],
    },
    # 2023 scheme: ¥10 M a year, redeemable only at the two Chengdu centres (Chengdu
    # Supercomputing Center and Chengdu Intelligent Computing Center), so the scope is those two
    # reference sites, not the whole Tianfu cluster (which also holds other data centres).
    # max_share 30 % and the ¥500,000 cap are assumed (PRODUCT.md does not give them).
    {
        "code": "chengdu-2023",
        "name": "Chengdu compute vouchers 2023",
        "issuer_city": "Chengdu",
        "annual_budget": Decimal("10000000.00"),
        "max_share": Decimal("0.3000"),
        "buyer_annual_cap": Decimal("500000.00"),
        "min_voucher_amount": Decimal("0.00"),
        "validity_months": 12,
        "hubs": [],
        "clusters": [],
        "sites": ["chengdu-tianfu", "chengdu-pidu"],
    },
    # Budget ¥100 M a year is assumed (PRODUCT.md gives only the 20 % share and ¥2 M cap).
    {
        "code": "beijing",
        "name": "Beijing compute vouchers",
        "issuer_city": "Beijing",
        "annual_budget": Decimal("100000000.00"),
        "max_share": Decimal("0.2000"),
        "buyer_annual_cap": Decimal("2000000.00"),
        "min_voucher_amount": Decimal("0.00"),
        "validity_months": 12,
        "hubs": ["beijing-tianjin-hebei"],
        "clusters": [],
        "sites": [],
    },
    {
        "code": "shenzhen",
        "name": "Shenzhen compute vouchers",
        "issuer_city": "Shenzhen",
        "annual_budget": Decimal("500000000.00"),
        "max_share": Decimal("0.5000"),
        "buyer_annual_cap": Decimal("10000000.00"),
        "min_voucher_amount": Decimal("0.00"),
        "validity_months": 12,
        "hubs": ["greater-bay-area"],
        "clusters": [],
        "sites": [],
    },
    {
        "code": "hangzhou",
        "name": "Hangzhou compute vouchers",
        "issuer_city": "Hangzhou",
        "annual_budget": Decimal("250000000.00"),
        "max_share": Decimal("0.3000"),
        "buyer_annual_cap": Decimal("8000000.00"),
        "min_voucher_amount": Decimal("0.00"),
        "validity_months": 12,
        "hubs": ["yangtze-river-delta"],
        "clusters": [],
        "sites": [],
    },
    {
        "code": "qingyang",
        "name": "Qingyang compute vouchers",
        "issuer_city": "Qingyang",
        "annual_budget": Decimal("100000000.00"),
        "max_share": Decimal("0.3000"),
        "buyer_annual_cap": Decimal("2000000.00"),
        "min_voucher_amount": Decimal("5000.00"),
        "validity_months": 12,
        "hubs": ["gansu"],
        "clusters": [],
        "sites": [],
    },
]
