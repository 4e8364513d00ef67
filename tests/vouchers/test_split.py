"""The voucher/cash split (PRODUCT.md §5.4) and proportional refunds (§5.5): properties."""

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from marketplace.money import bill_amount, floor_money, split_proportionally
from vouchers.services import BillLine, split_bill, split_lines

fen = st.decimals(min_value=Decimal("0.00"), max_value=Decimal("10000000"), places=2)
share = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("1"), places=4)


def test_chengdu_2025_caps_the_voucher_at_60_percent():
    split = split_bill(Decimal("100000.00"), Decimal("0.60"), Decimal("1000000.00"))
    assert (split.voucher_part, split.cash_part) == (Decimal("60000.00"), Decimal("40000.00"))


def test_the_smallest_limit_wins():
    split = split_bill(Decimal("1000.00"), Decimal("0.5"), Decimal("300.00"), Decimal("120.55"))
    assert (split.voucher_part, split.cash_part) == (Decimal("120.55"), Decimal("879.45"))


def test_share_is_floored_to_the_fen():
    # 33.33 × 0.3 = 9.999 → 9.99 (never rounded up in the buyer's favour)
    assert split_bill(Decimal("33.33"), Decimal("0.3"), Decimal("100")).voucher_part == Decimal(
        "9.99"
    )


def test_bill_is_rounded_once_half_up():
    assert bill_amount(3, 7, Decimal("0.0005")) == Decimal("0.01")  # 0.0105 → 0.01
    assert bill_amount(1, 1, Decimal("0.0050")) == Decimal("0.01")  # 0.005 → 0.01 (half up)


@given(fen, share, fen, fen, fen)
def test_split_parts_add_up_and_respect_every_limit(bill, max_share, balance, budget, cap):
    split = split_bill(bill, max_share, balance, budget, cap)
    assert split.voucher_part + split.cash_part == bill
    assert Decimal(0) <= split.voucher_part <= floor_money(bill * max_share)
    assert split.voucher_part <= min(balance, budget, cap)
    assert split.cash_part >= 0


@given(fen, fen, st.data())
def test_refund_parts_add_up_and_never_exceed_what_was_paid(voucher, cash, data):
    total = data.draw(st.decimals(min_value=Decimal(0), max_value=voucher + cash, places=2))
    v, c = split_proportionally(total, voucher, cash)
    assert v + c == total
    assert 0 <= v <= voucher
    assert 0 <= c <= cash


CATEGORIES = ("gpu_time", "storage", "network", "software")


@given(
    st.lists(st.tuples(st.sampled_from(CATEGORIES), fen), min_size=1, max_size=6),
    st.sets(st.sampled_from(CATEGORIES)),
    share,
    fen,
)
def test_line_splits_add_up_and_stay_within_each_line(lines, eligible, max_share, balance):
    bill_lines = [BillLine(category, amount) for category, amount in lines]
    split = split_lines(bill_lines, max_share, balance, eligible=eligible)
    base = sum((a for c, a in lines if c in eligible), Decimal(0))
    # the lines add up to the bill and to its parts, exactly
    assert [(x.category, x.amount) for x in split.lines] == lines
    assert sum((x.amount for x in split.lines), Decimal(0)) == split.bill
    assert sum((x.voucher_part for x in split.lines), Decimal(0)) == split.voucher_part
    assert sum((x.cash_part for x in split.lines), Decimal(0)) == split.cash_part
    # the voucher pays only eligible lines, never more than a line, never past the share
    for line in split.lines:
        assert line.eligible == (line.category in eligible)
        assert 0 <= line.voucher_part <= line.amount
        assert line.voucher_part == 0 or line.eligible
        assert line.voucher_part + line.cash_part == line.amount
    assert split.voucher_part == min(floor_money(base * max_share), balance)


def test_the_voucher_part_is_spread_over_eligible_lines_by_largest_remainder():
    # 30 % of (100.01 + 33.33) = 40.002 → 40.00; 30.0015 → 30.00 and 9.9985 → 9.99, and the
    # fen left goes to the larger remainder (storage)
    split = split_lines(
        [BillLine("gpu_time", Decimal("100.01")), BillLine("storage", Decimal("33.33"))],
        Decimal("0.3"),
        Decimal("1000"),
        eligible={"gpu_time", "storage"},
    )
    assert [x.voucher_part for x in split.lines] == [Decimal("30.00"), Decimal("10.00")]
