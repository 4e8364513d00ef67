"""Hand-made engine snapshots for the tests on plain data (no database): sites at the
Chengdu–Chongqing and Gansu hubs, and one builder each for an offer and a demand with
keyword defaults (A100, hours ``[0, 48)``, ¥10 offered, ¥20 limit, national reach).

The test modules keep their own short positional signatures as thin wrappers over these."""

from decimal import Decimal

from marketplace.matching.engine import DemandSnap, OfferSnap, SiteRef, VoucherSnap

CHENGDU = SiteRef("s-cd", "Chengdu", "Chengdu", "cc")
DEYANG = SiteRef("s-dy", "Deyang", "Chengdu", "cc")
CHONGQING = SiteRef("s-cq", "Chongqing", "Chongqing", "cc")
QINGYANG = SiteRef("s-qy", "Qingyang", "Qingyang", "gansu")
GUIYANG = SiteRef("s-gy", "Guiyang", "Guiyang", "guizhou")


def make_offer(
    id: str,
    *,
    site: SiteRef = CHENGDU,
    price: str = "10",
    gpus: int = 8,
    start: int = 0,
    end: int = 48,
    provider: str = "p1",
    model: str = "A100",
    used: list[int] | None = None,
    listed: int = 0,
    min_duration: int = 1,
) -> OfferSnap:
    """``gpus`` GPUs of ``model`` at ``site`` over hours ``[start, end)`` at ``price`` CNY per
    GPU-hour, for at least ``min_duration`` hours; ``used`` is the per-hour count already
    booked."""
    return OfferSnap(
        id=id,
        provider=provider,
        model=model,
        site=site,
        price=Decimal(price),
        gpu_count=gpus,
        start=start,
        end=end,
        min_duration=min_duration,
        used=list(used) if used else [],
        listed=listed,
    )


def make_demand(
    id: str,
    *,
    gpus: int = 4,
    duration: int = 4,
    start: int = 0,
    end: int = 48,
    price: str = "20",
    limit: str = "national",
    posted: int = 0,
    origin: SiteRef = CHENGDU,
    voucher: VoucherSnap | None = None,
    split: str = "none",
    min_part: int = 1,
    model: str = "A100",
    related: frozenset[str] = frozenset(),
) -> DemandSnap:
    """Buyer ``b1`` (related to the organisations in ``related``) asking ``gpus`` GPUs of
    ``model`` for ``duration`` hours within ``[start, end)`` at up to ``price`` CNY per
    GPU-hour, from ``origin`` within ``limit``."""
    return DemandSnap(
        id=id,
        buyer="b1",
        related=related,
        models=frozenset({model}),
        gpu_count=gpus,
        duration=duration,
        start=start,
        end=end,
        max_price=Decimal(price),
        origin=origin,
        limit=limit,
        posted=posted,
        voucher=voucher,
        split=split,
        min_part=min_part,
    )
