"""Translated messages for the refusals the services raise (``DomainError``).

Services keep English messages and stable ``code``s (the API answers with those). The web UI
and the provider console show ``domain_message(exc)`` instead: each known message shape of a
code is matched against the service's English text and rendered from a ``gettext_lazy``
template, with the variable parts (limits, statuses, names) carried over, so an English page
shows exactly the service's (and the API's) message and a zh-hans page shows Chinese. A shape
not listed falls back to a translated message for the code alone, and an unknown code to the
service's message as is.
"""

import re
from typing import Any

from django.utils.functional import Promise
from django.utils.translation import get_language
from django.utils.translation import gettext_lazy as _

from marketplace.errors import DomainError

from .labels import label

# Nouns the services name in "no such …" and "… is <status>" messages.
NOUNS: dict[str, Promise] = {
    "demand": _("demand"),
    "reservation": _("reservation"),
    "offer": _("offer"),
    "voucher": _("voucher"),
    "site": _("site"),
    "application": _("application"),
    "organisation": _("organisation"),
}

# (code, the service's English message as a regular expression, the translatable template).
# Group names are the template's placeholders; ``status``/``to`` are translated status codes
# and ``what`` a translated noun.
SHAPES: list[tuple[str, str, Promise]] = [
    # numbers (marketplace.services._money_input, _positive_int; vouchers.services)
    ("invalid", r"not a decimal number", _("not a decimal number")),
    ("invalid", r"must be a finite number", _("must be a finite number")),
    ("invalid", r"must be positive", _("must be positive")),
    ("invalid", r"must be at most (?P<maximum>\S+)", _("must be at most %(maximum)s")),
    (
        "invalid",
        r"at most (?P<places>\d+) decimal places",
        _("at most %(places)s decimal places"),
    ),
    ("invalid", r"must be an integer", _("must be an integer")),
    (
        "invalid",
        r"must be between (?P<low>\d+) and (?P<high>\d+)",
        _("must be between %(low)s and %(high)s"),
    ),
    ("invalid", r"unknown locality tier", _("unknown locality tier")),
    ("invalid", r"must not be blank", _("must not be blank")),
    (
        "invalid",
        r"amount must be positive CNY to the fen",
        _("amount must be positive CNY to the fen"),
    ),
    # times (demand_check, offer checks)
    (
        "not_whole_hour",
        r"must be a whole UTC hour \(reservations use whole-hour intervals\)",
        _("must be a whole UTC hour (reservations use whole-hour intervals)"),
    ),
    ("not_whole_hour", r"must be a whole UTC hour", _("must be a whole UTC hour")),
    (
        "window_invalid",
        r"must be after (?P<field>\w+)",
        _("must be after %(field)s"),
    ),
    ("window_in_past", r"window already passed", _("window already passed")),
    ("window_in_past", r"window already over", _("window already over")),
    ("window_too_far", r"ends more than 366 days ahead", _("ends more than 366 days ahead")),
    ("window_too_short", r"window cannot hold the duration", _("window cannot hold the duration")),
    # accelerators (accelerators_resolve)
    (
        "unknown_accelerator",
        r"unknown accelerator (?P<name>.+); known codes: (?P<known>.*)",
        _("unknown accelerator %(name)s; known codes: %(known)s"),
    ),
    # states
    (
        "illegal_transition",
        r"(?P<what>\w+) is (?P<status>\w+), cannot become (?P<to>\w+)",
        _("%(what)s is %(status)s, cannot become %(to)s"),
    ),
    (
        "illegal_transition",
        r"cannot go from (?P<status>\w+) to (?P<to>\w+)",
        _("cannot go from %(status)s to %(to)s"),
    ),
    (
        "illegal_transition",
        r"organisation is already (?P<status>\w+)",
        _("organisation is already %(status)s"),
    ),
    ("illegal_transition", r"(?P<what>\w+) is (?P<status>\w+)", _("%(what)s is %(status)s")),
    ("not_found", r"no such (?P<what>\w+)", _("no such %(what)s")),
    ("already_started", r"reservation has started", _("reservation has started")),
    (
        "accept_ttl_passed",
        r"the time to accept has passed",
        _("the time to accept has passed"),
    ),
    (
        "capacity_exhausted",
        r"no free capacity for the whole window",
        _("no free capacity for the whole window"),
    ),
    ("capacity_exhausted", r"offer too small", _("offer too small")),
    (
        "bill_too_large",
        r"the bill would be more than ¥(?P<limit>[\d,.]+), the most a bill can hold",
        _("the bill would be more than ¥%(limit)s, the most a bill can hold"),
    ),
    (
        "more_than_offered",
        r"the offer lists (?P<count>\d+) GPUs",
        _("the offer lists %(count)s GPUs"),
    ),
    (
        "below_reserved",
        r"capacity below what is already reserved",
        _("capacity below what is already reserved"),
    ),
    (
        "offer_has_reservations",
        r"the offer has reservations; its site cannot change",
        _("the offer has reservations; its site cannot change"),
    ),
    (
        "offer_has_reservations",
        r"the offer has reservations; its accelerator cannot change",
        _("the offer has reservations; its accelerator cannot change"),
    ),
    (
        "site_has_reservations",
        r"the site has reservations; its (?P<field>\w+) cannot change",
        _("the site has reservations; its %(field)s cannot change"),
    ),
    # who may do what
    ("not_a_buyer", r"only buyers post demands", _("only buyers post demands")),
    ("not_a_buyer", r"only buyers have a wallet", _("only buyers have a wallet")),
    (
        "not_a_buyer",
        r"only SMEs \(buyers\) can apply for vouchers",
        _("only SMEs (buyers) can apply for vouchers"),
    ),
    ("not_a_provider", r"only providers list offers", _("only providers list offers")),
    (
        "organisation_not_approved",
        r"organisation is not approved",
        _("organisation is not approved"),
    ),
    ("no_home_site", r"organisation has no home site", _("organisation has no home site")),
    # money
    (
        "insufficient_funds",
        r"(?P<account>.+) balance would go below zero",
        _("%(account)s balance would go below zero"),
    ),
    # sign-up (accounts.services.organisation_register, accounts.credit_code)
    ("invalid_credit_code", r"must be 18 characters", _("must be 18 characters")),
    (
        "invalid_credit_code",
        r"contains characters outside the GB 32100-2015 alphabet: (?P<char>.+)",
        _("contains characters outside the GB 32100-2015 alphabet: %(char)s"),
    ),
    (
        "invalid_credit_code",
        r"check character does not match \(GB 32100-2015\)",
        _("check character does not match (GB 32100-2015)"),
    ),
    ("duplicate_credit_code", r"already registered", _("already registered")),
    # vouchers (vouchers.services.voucher_application_submit, voucher_issue)
    (
        "programme_not_in_effect",
        r"the programme is not in effect",
        _("the programme is not in effect"),
    ),
    (
        "below_minimum",
        r"below the programme's minimum voucher amount ¥(?P<minimum>\S+)",
        _("below the programme's minimum voucher amount ¥%(minimum)s"),
    ),
    (
        "below_minimum",
        r"below the programme's minimum voucher amount",
        _("below the programme's minimum voucher amount"),
    ),
    (
        "buyer_cap_exceeded",
        r"above the programme's per-buyer annual cap ¥(?P<cap>\S+)",
        _("above the programme's per-buyer annual cap ¥%(cap)s"),
    ),
    (
        "buyer_cap_exceeded",
        r"buyer's annual cap ¥(?P<cap>\S+) would be passed \(already ¥(?P<issued>\S+)\)",
        _("buyer's annual cap ¥%(cap)s would be passed (already ¥%(issued)s)"),
    ),
    (
        "programme_budget_exhausted",
        r"programme budget exhausted",
        _("programme budget exhausted"),
    ),
]

# The message of a code when its text has a shape not listed above.
CODES: dict[str, Promise] = {
    "not_whole_hour": _("must be a whole hour"),
    "window_invalid": _("the window ends before it starts"),
    "window_in_past": _("the window has passed"),
    "window_too_short": _("window cannot hold the duration"),
    "unknown_accelerator": _("unknown accelerator"),
    "illegal_transition": _("not possible in the current state"),
    "not_found": _("not found"),
    "already_started": _("reservation has started"),
    "accept_ttl_passed": _("the time to accept has passed"),
    "capacity_exhausted": _("capacity was taken by another booking"),
    "below_reserved": _("capacity below what is already reserved"),
    "bill_too_large": _("the bill would be larger than the ledger can hold"),
    "more_than_offered": _("more GPUs than the offer lists"),
    "site_has_reservations": _("the site has reservations; where it is cannot change"),
    "not_a_buyer": _("only buyers can do this"),
    "not_a_provider": _("only providers can do this"),
    "organisation_not_approved": _("organisation is not approved"),
    "no_home_site": _("organisation has no home site"),
    "insufficient_funds": _("funds short: the wallet cannot cover the cash part"),
    "invalid_credit_code": _("not a valid unified social credit code"),
    "duplicate_credit_code": _("already registered"),
    "programme_not_in_effect": _("the programme is not in effect"),
    "below_minimum": _("below the programme's minimum voucher amount"),
    "buyer_cap_exceeded": _("above the programme's per-buyer annual cap"),
    "programme_budget_exhausted": _("programme budget exhausted"),
    "not_disputable": _("this reservation cannot be disputed now"),
    "dispute_open": _("a dispute is already open"),
}

_COMPILED = [(code, re.compile(pattern), template) for code, pattern, template in SHAPES]
_FIELDS: dict[str, Promise] = {
    "earliest_start": _("the earliest start"),
    "available_from": _("available from"),
    "hub": _("hub"),
    "city": _("city"),
    "metro_area": _("metro area"),
}
_ACCOUNTS: dict[str, Promise] = {
    "Buyer cash wallet": _("wallet"),
    "Voucher balance": _("voucher"),
    "Provider payable": _("payable"),
}


def _value(name: str, raw: str) -> Any:
    if (get_language() or "en").startswith("en"):
        return raw  # English keeps the service's own words (statuses, field names)
    if name in ("status", "to"):
        return label(raw)
    if name == "what":
        return NOUNS.get(raw, raw)
    if name == "field":
        return _FIELDS.get(raw, raw)
    if name == "account":
        return _ACCOUNTS.get(raw, raw)
    return raw


def domain_message(exc: DomainError) -> str:
    """The refusal ``exc`` in the active language (see the module docstring)."""
    for code, pattern, template in _COMPILED:
        if code != exc.code:
            continue
        match = pattern.fullmatch(exc.message)
        if match is not None:
            values = {k: _value(k, v) for k, v in match.groupdict().items()}
            return str(template) % values if values else str(template)
    if exc.code in CODES:
        return str(CODES[exc.code])
    return exc.message
