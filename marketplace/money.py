"""Money in CNY: ``Decimal`` to the fen, one rounding rule, one pricing function (§5.1)."""

from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal

FEN = Decimal("0.01")
ZERO = Decimal("0.00")
# The largest bill the ledger and the reservations store (``DecimalField(max_digits=14,
# decimal_places=2)``): a demand or quote whose bill could pass it is refused when it is made,
# not at every matching cycle that tries to write it.
MAX_BILL = Decimal("999999999999.99")


def quantize_money(amount: Decimal) -> Decimal:
    """Round a CNY amount half-up to the fen."""
    return Decimal(amount).quantize(FEN, rounding=ROUND_HALF_UP)


def floor_money(amount: Decimal) -> Decimal:
    """Round a non-negative CNY amount down to the fen (``floor_fen`` of §5.4)."""
    return Decimal(amount).quantize(FEN, rounding=ROUND_DOWN)


def bill_amount(gpu_count: int, hours: int, price_per_gpu_hour: Decimal) -> Decimal:
    """Bill in CNY = ``gpu_count × hours × price_per_gpu_hour``, rounded once, half-up (§5.1).

    The single pricing function used by quote, matcher, reservation, settlement and reports.
    """
    return quantize_money(Decimal(gpu_count) * Decimal(hours) * Decimal(price_per_gpu_hour))


def split_proportionally(
    total: Decimal, voucher_part: Decimal, cash_part: Decimal
) -> tuple[Decimal, Decimal]:
    """Split ``total`` CNY between voucher and cash in the proportion ``voucher_part:cash_part``.

    The voucher share is floored to the fen and cash takes the rest, so the two parts add up to
    ``total`` exactly and neither exceeds its original part when ``total ≤ voucher + cash``.
    """
    whole = voucher_part + cash_part
    if whole == 0:
        return ZERO, ZERO
    v = floor_money(total * voucher_part / whole)
    c = total - v
    if c > cash_part:  # rounding pushed a fen onto cash beyond what cash paid
        v, c = v + (c - cash_part), cash_part
    return v, c
