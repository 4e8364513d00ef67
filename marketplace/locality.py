"""Locality tiers between two sites (PRODUCT.md §2), on plain values (no ORM)."""

TIERS = ("city", "metro", "region", "national")  # nearest first


def tier_between(
    city_a: str, metro_a: str, hub_a: object, city_b: str, metro_b: str, hub_b: object
) -> str:
    """``city`` (same city), ``metro`` (same metro area), ``region`` (same hub) or ``national``."""
    if hub_a != hub_b:
        return "national"
    if city_a == city_b:
        return "city"
    if metro_a == metro_b:
        return "metro"
    return "region"


def tier_rank(tier: str) -> int:
    """0 for city … 3 for national."""
    return TIERS.index(str(tier))
