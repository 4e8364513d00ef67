"""``explain`` on plain data: the money rules (voucher, funds) and the near misses."""

from decimal import Decimal

from marketplace.matching.engine import VoucherSnap
from marketplace.matching.explain import explain
from tests.marketplace.test_engine_optimal import QINGYANG, demand, offer


def voucher(providers: set[str]) -> VoucherSnap:
    return VoucherSnap(
        id="v", max_share=Decimal("0.5"), available=Decimal("1000"), providers=frozenset(providers)
    )


def test_voucher_blocks_when_only_the_voucher_share_would_have_made_the_wallet_enough():
    # 4 GPUs × 4 h × CNY 10 = CNY 160; the wallet holds 100, a 50 % voucher would make it 80
    d = demand("d", voucher=voucher({"p2"}))
    result = explain(d, [offer("p1-offer", provider="p1")], wallet=Decimal("100"))
    assert result.first_rule == {"p1-offer": "voucher"}


def test_funds_block_when_even_the_voucher_share_is_not_enough():
    d = demand("d", voucher=voucher({"p1"}))
    result = explain(d, [offer("o", provider="p1")], wallet=Decimal("79.99"))
    assert result.first_rule == {"o": "funds"}
    assert explain(d, [offer("o", provider="p1")], wallet=Decimal("80")).fits == 1


def test_rules_apply_in_order_and_the_cheapest_over_limit_is_named():
    d = demand("d", price="12", limit="region")
    offers = [
        offer("far-and-dear", price="13", site=QINGYANG),  # price comes before locality
        offer("dearer", price="19"),
        offer("far", price="9", site=QINGYANG, listed=1),
    ]
    result = explain(d, offers, wallet=Decimal("1000"))
    assert result.first_rule == {"far-and-dear": "price", "dearer": "price", "far": "locality"}
    assert result.cheapest_over_limit is not None
    assert (result.cheapest_over_limit.offer_id, result.cheapest_over_limit.price) == (
        "far-and-dear",
        Decimal("13"),
    )
    assert result.earliest_fit is None
