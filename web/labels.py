"""Translated labels for the stable codes the services use (statuses, tiers, reasons).

Models and services keep English labels and machine codes; the web UI shows these instead,
so every word on a page is in the chosen language. An unknown code is shown as is.
"""

from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _

LABELS: dict[str, Promise] = {
    # demand, reservation, offer, voucher, application, organisation, claim statuses
    "open": _("open"),
    "matched": _("matched, awaiting acceptance"),
    "reserved": _("reserved"),
    "expired": _("expired"),
    "cancelled": _("cancelled"),
    "held": _("held"),
    "confirmed": _("confirmed"),
    "active": _("active"),
    "completed": _("completed"),
    "settled": _("settled"),
    "failed": _("failed"),
    "draft": _("draft"),
    "paused": _("paused"),
    "withdrawn": _("withdrawn"),
    "submitted": _("submitted"),
    "approved": _("approved"),
    "rejected": _("rejected"),
    "pending": _("pending approval"),
    "suspended": _("suspended"),
    "paid": _("paid"),
    "resolved": _("resolved"),
    # locality tiers
    "city": _("same city"),
    "metro": _("same metropolitan area"),
    "region": _("same hub region"),
    "national": _("any hub"),
    # organisation kinds
    "sme": _("SME (buyer)"),
    "provider": _("provider"),
    "both": _("provider and buyer"),
    # why a demand is not matched (engine reasons and refused holds)
    "no_model": _("no active offer of an acceptable accelerator model"),
    "over_price": _("every candidate offer is over your price limit"),
    "outside_locality": _("candidate offers are outside your locality limit"),
    "min_duration": _("candidate offers need a longer minimum duration"),
    "no_free_window": _("no offer has free capacity for the whole duration in your window"),
    "self_trade": _("the only candidate offers are your own"),
    "window_passed": _("the window passed before a match was found"),
    "insufficient_funds": _("funds short: the wallet cannot cover the cash part"),
    "capacity_exhausted": _("capacity was taken by another booking"),
    "offer_not_active": _("the offer is no longer active"),
    "model_mismatch": _("accelerator model not acceptable"),
    # the explain rules (marketplace/matching/explain.py): what blocked how many offers
    "rule_model": _("accelerator model not acceptable"),
    "rule_price": _("over your price limit"),
    "rule_locality": _("outside your locality limit"),
    "rule_self_trade": _("your own organisation's offer"),
    "rule_window": _("availability does not cover your window or duration"),
    "rule_capacity": _("not enough GPUs or GPU-hours free"),
    "rule_fragmentation": _("free capacity cut into pieces too small"),
    "rule_voucher": _("the voucher does not apply and the wallet cannot pay it all"),
    "rule_funds": _("funds short for the cash part"),
    # why a voucher does not apply (PRODUCT.md §5.4)
    "voucher_not_owned": _("the voucher is not yours"),
    "voucher_expired": _("the voucher has expired"),
    "related_party": _("buyer and provider are the same or related organisations"),
    "provider_not_in_catalogue": _("the provider is not in the programme's catalogue this year"),
    "site_outside_region": _("the site is outside the programme's region"),
    # ledger transaction reasons and account kinds
    "deposit": _("wallet deposit"),
    "programme_funding": _("programme budget funded"),
    "voucher_issue": _("voucher issued"),
    "hold": _("reservation hold"),
    "release": _("hold released"),
    "settlement": _("reservation settled"),
    "refund": _("refund of undelivered hours"),
    "cancel_fee": _("cancellation fee"),
    "voucher_lapse": _("expired voucher balance lapsed"),
    "claim_paid": _("reimbursement claim paid"),
    "payout": _("payout"),
    "wallet": _("wallet"),
    "voucher": _("voucher"),
    "payable": _("payable"),
    "claims": _("reimbursement claims"),
}


def label(code: str) -> str | Promise:
    """The translated label of ``code``, or ``code`` itself when unknown."""
    return LABELS.get(str(code), str(code))
