"""Pages of the SME web UI (PRODUCT.md §6.2).

Every write goes through the same service as the API (``demand_create``, ``quote``,
``reservation_cancel``, …); a ``DomainError`` becomes a form error or an error message with the
service's own message, never a 500. Pages render times in Asia/Shanghai (``shanghai_time``) and
work without JavaScript; htmx only refreshes the live quote and the demand status in place.
"""

import csv
import uuid
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any
from zoneinfo import ZoneInfo

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db import IntegrityError, transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from accounts.models import Organisation
from accounts.selectors import organisation_of
from accounts.services import organisation_register
from ledger.models import IdempotencyKey
from ledger.selectors import organisation_balances
from marketplace import selectors as market
from marketplace import services
from marketplace.errors import DomainError
from marketplace.models import Demand
from marketplace.selectors import as_uuid
from marketplace.spreadsheet import cell_text
from vouchers import selectors as voucher_selectors
from vouchers.services import voucher_application_submit

from . import selectors
from .charts import bar_chart
from .errors import domain_message
from .forms import (
    DemandForm,
    DemandQuoteForm,
    DepositForm,
    OfferSearchForm,
    SignupForm,
    VoucherApplicationForm,
    add_domain_error,
)
from .labels import label

SHANGHAI = ZoneInfo("Asia/Shanghai")
PAGE_SIZE = 50

View = Callable[..., HttpResponseBase]


def shanghai_time(view: View) -> View:
    """Render and parse times in Asia/Shanghai for this view (stored times stay UTC)."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        with timezone.override(SHANGHAI):
            return view(request, *args, **kwargs)

    return wrapped


def buyer_page(view: View) -> View:
    """Logged in, acting for a buyer organisation (SME or both): passes it as ``org``; without
    an organisation the sign-up page, a provider-only organisation the provider console."""

    @login_required
    @shanghai_time
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        organisation = organisation_of(request.user)  # type: ignore[arg-type]
        if organisation is None:
            messages.info(request, _("Register your organisation first."))
            return redirect("web:signup")
        if not organisation.is_buyer:
            messages.info(request, _("Your organisation is a provider: this is your console."))
            return redirect("console:index")
        return view(request, organisation, *args, **kwargs)

    return wrapped


# --- Landing, sign-up ----------------------------------------------------------------------


def home(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated and organisation_of(request.user) is not None:  # type: ignore[arg-type]
        return redirect("web:dashboard")
    return render(request, "home.html")


@shanghai_time
def signup(request: HttpRequest) -> HttpResponse:
    """Create a user and register their organisation (``organisation_register``): pending
    until an operator approves it in the admin."""
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            with transaction.atomic():
                user = form.save()
                organisation_register(
                    user=user,
                    name=form.cleaned_data["organisation_name"],
                    credit_code=form.cleaned_data["credit_code"],
                    kind=form.cleaned_data["kind"],
                    home_site=form.cleaned_data["home_site"],
                )
        except DomainError as exc:
            add_domain_error(form, exc, {"name": "organisation_name"})
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            messages.success(
                request, _("Organisation registered. An operator will approve it shortly.")
            )
            return redirect("web:dashboard")
    status = 400 if form.errors else 200
    return render(request, "web/signup.html", {"form": form}, status=status)


# --- Dashboard -----------------------------------------------------------------------------


@buyer_page
def dashboard(request: HttpRequest, org: Organisation) -> HttpResponse:
    balances = organisation_balances(organisation=org)
    spend = selectors.spend_by_month(buyer=org)
    chart = bar_chart(
        _("Spend by month"),
        [m for m, _v, _c in spend],
        [
            (_("voucher"), "voucher", [v for _m, v, _c in spend]),
            (_("cash"), "cash", [c for _m, _v, c in spend]),
        ],
        unit="CNY",
    )
    context = {
        "org": org,
        "wallet": balances["wallet"],
        "vouchers": voucher_selectors.voucher_list(owner=org),
        "demands": selectors.open_demands(buyer=org)[:20],
        "reservations": selectors.current_reservations(buyer=org)[:20],
        "chart": chart,
        "deposit_form": DepositForm(),
    }
    return render(request, "web/dashboard.html", context)


@buyer_page
def demand_status(request: HttpRequest, org: Organisation) -> HttpResponse:
    """The open-demands table alone, polled by htmx on the dashboard (live status)."""
    return render(
        request,
        "web/_demand_rows.html",
        {"demands": selectors.open_demands(buyer=org)[:20]},
    )


@require_POST
@buyer_page
def deposit(request: HttpRequest, org: Organisation) -> HttpResponse:
    """Fund the wallet (test/demo funding, ``wallet_deposit``)."""
    form = DepositForm(request.POST)
    if form.is_valid():
        try:
            services.wallet_deposit(organisation=org, amount=form.cleaned_data["amount"])
        except DomainError as exc:
            messages.error(request, domain_message(exc))
        else:
            messages.success(request, _("Wallet funded."))
    else:
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, str(error))
    return redirect("web:dashboard")


# --- Offers --------------------------------------------------------------------------------


@buyer_page
def offers(request: HttpRequest, org: Organisation) -> HttpResponse:
    form = OfferSearchForm(request.GET or None)
    page = None
    status = 200
    if not request.GET or form.is_valid():
        data = form.cleaned_data if request.GET else {}
        qs = selectors.offers_filtered(
            home=org.home_site,
            accelerator=data.get("accelerator"),
            hub=data.get("hub"),
            tier=data.get("tier") or "",
            max_price=data.get("max_price"),
            min_gpus=data.get("min_gpus"),
            start=data.get("start"),
            end=data.get("end"),
            sort=data.get("sort") or "price",
        )
        page = Paginator(qs, PAGE_SIZE).get_page(request.GET.get("page"))
    else:
        status = 400
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "web/offers.html",
        {"form": form, "page": page, "query": query.urlencode()},
        status=status,
    )


# --- Demands -------------------------------------------------------------------------------


def _quote_context(org: Organisation, form: DemandQuoteForm) -> dict[str, Any]:
    """What the live quote shows: the cheapest fitting offer and the service's quote on it,
    or the first rule that refuses the input (same message as the API)."""
    if not form.is_valid():
        return {"quote_form": form}
    data = form.cleaned_data
    needed = ("gpu_count", "duration_hours", "max_price_per_gpu_hour", "earliest_start")
    if not all(data.get(name) for name in (*needed, "latest_end")):
        return {"incomplete": True}
    # The rules posting applies (``demand_check``): never price a demand posting refuses.
    probe = Demand(
        gpu_count=data["gpu_count"],
        duration_hours=data["duration_hours"],
        earliest_start=data["earliest_start"],
        latest_end=data["latest_end"],
        max_price_per_gpu_hour=data["max_price_per_gpu_hour"],
        locality_limit=data.get("locality_limit") or "national",
    )
    try:
        services.demand_check(probe, now=timezone.now())
    except DomainError as exc:
        return {"error": exc, "message": domain_message(exc)}
    offer = selectors.quote_candidate(
        buyer=org,
        accelerators=list(data.get("accelerators") or []),
        gpu_count=data["gpu_count"],
        max_price=data["max_price_per_gpu_hour"],
        locality_limit=data.get("locality_limit") or "national",
    )
    if offer is None:
        return {"no_offer": True}
    try:
        split = services.quote(
            buyer=org,
            offer=offer,
            gpu_count=data["gpu_count"],
            hours=data["duration_hours"],
            voucher=data.get("voucher"),
        )
    except DomainError as exc:
        return {"error": exc, "message": domain_message(exc)}
    return {"offer": offer, "split": split, "note": label(split.note) if split.note else ""}


DEMAND_FORM_KEY = "web:demand-new"


def _form_token_claim(
    request: HttpRequest, org: Organisation, token: uuid.UUID
) -> tuple[IdempotencyKey | None, HttpResponse | None]:
    """Claim the demand form's one-time token (an ``IdempotencyKey`` of the organisation and
    user, the same store the API's ``Idempotency-Key`` uses). Returns ``(claim, None)`` for the
    first post, or ``(None, redirect)`` for a repeat: to the demand the first post created, or
    to the dashboard while the first post is still running."""
    owner = f"org:{org.pk}/user:{request.user.pk}"
    key = f"{DEMAND_FORM_KEY}:{token}"
    try:
        with transaction.atomic():
            claim = IdempotencyKey.objects.create(owner=owner, key=key, fingerprint=DEMAND_FORM_KEY)
        return claim, None
    except IntegrityError:
        first = IdempotencyKey.objects.filter(owner=owner, key=key).first()
    demand_id = (first.response_body or {}).get("demand") if first is not None else None
    if demand_id:
        messages.info(request, _("This demand was already posted."))
        return None, redirect("web:demand", demand_id=demand_id)
    messages.info(request, _("This demand is being posted; it appears in your open demands."))
    return None, redirect("web:dashboard")


@buyer_page
def demand_new(request: HttpRequest, org: Organisation) -> HttpResponse:
    """The demand form. Without JavaScript the "Show quote" button posts the form back with
    the quote; "Post demand" calls ``demand_create``. The form carries a one-time token, so a
    second submit of the same form (double click, reload) leads to the demand the first one
    created instead of posting it twice."""
    initial: dict[str, Any] = {}
    if request.method != "POST":
        start = timezone.localtime(timezone.now() + timedelta(hours=2), SHANGHAI).replace(
            minute=0, second=0, microsecond=0
        )
        initial = {
            "earliest_start": start,
            "latest_end": start + timedelta(hours=24),
            "form_token": uuid.uuid4(),
        }
    form = DemandForm(request.POST or None, buyer=org, initial=initial)
    context: dict[str, Any] = {"form": form, "org": org}
    status = 200
    if request.method == "POST":
        if request.POST.get("action") == "quote":
            context["quote"] = _quote_context(org, DemandQuoteForm(request.POST, buyer=org))
        elif form.is_valid():
            claim = None
            token = form.cleaned_data.get("form_token")
            if token is not None:
                claim, repeat = _form_token_claim(request, org, token)
                if repeat is not None:
                    return repeat
            try:
                demand = services.demand_create(
                    buyer=org,
                    user=request.user,  # type: ignore[arg-type]
                    **form.service_fields(),
                )
            except BaseException as exc:
                if claim is not None:  # refused: the same form may be corrected and sent again
                    IdempotencyKey.objects.filter(pk=claim.pk).delete()
                if not isinstance(exc, DomainError):
                    raise
                add_domain_error(form, exc)
            else:
                if claim is not None:
                    IdempotencyKey.objects.filter(pk=claim.pk).update(
                        status_code=302, response_body={"demand": str(demand.pk)}
                    )
                messages.success(request, _("Demand posted. Matching runs within seconds."))
                return redirect("web:demand", demand_id=demand.pk)
        if form.errors:
            status = 400
    return render(request, "web/demand_form.html", context, status=status)


@buyer_page
def demand_quote(request: HttpRequest, org: Organisation) -> HttpResponse:
    """The live quote fragment (htmx) for the demand form's current values."""
    data = request.POST if request.method == "POST" else request.GET
    form = DemandQuoteForm(data, buyer=org)
    return render(request, "web/_quote.html", {"quote": _quote_context(org, form)})


def _explain(demand: Any) -> dict[str, Any]:
    """The matching engine's explanation of an open demand (``demand_explain``), with the rules
    that blocked at least one offer listed as ``(label, count)`` pairs for the page."""
    from marketplace.matching.explain import demand_explain

    shown = demand_explain(demand, now=timezone.now())
    shown["blocked_rows"] = [
        (label(f"rule_{rule}"), count) for rule, count in shown["blocked"].items() if count
    ]
    return shown


@buyer_page
def demand_detail(request: HttpRequest, org: Organisation, demand_id: str) -> HttpResponse:
    # the demand, its reservations and the explanation as of one moment (one snapshot)
    with market.one_snapshot():
        demand = market.demand_get(buyer=org, demand_id=demand_id)
        if demand is None:
            raise Http404
        reservations = list(selectors.buyer_reservations(buyer=org).filter(demand=demand))
        context = {
            "demand": demand,
            "reservations": reservations,
            "reason": label(demand.unmatched_reason) if demand.unmatched_reason else "",
            "explanation": _explain(demand) if demand.status == "open" else None,
        }
    template = (
        "web/_demand_status.html" if request.headers.get("HX-Request") else "web/demand_detail.html"
    )
    return render(request, template, context)


@require_POST
@buyer_page
def demand_cancel(request: HttpRequest, org: Organisation, demand_id: str) -> HttpResponse:
    pk = as_uuid(demand_id)
    if pk is None:
        raise Http404
    try:
        services.demand_cancel(demand_id=pk, buyer=org)
    except DomainError as exc:
        if exc.status == 404:
            raise Http404 from exc
        messages.error(request, domain_message(exc))
    else:
        messages.success(request, _("Demand cancelled."))
    return redirect("web:demand", demand_id=pk)


# --- Reservations --------------------------------------------------------------------------


@buyer_page
def reservations(request: HttpRequest, org: Organisation) -> HttpResponse:
    page = Paginator(selectors.buyer_reservations(buyer=org), PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    return render(request, "web/reservations.html", {"page": page})


def _reservation(org: Organisation, reservation_id: str) -> Any:
    reservation = selectors.buyer_reservation_get(buyer=org, reservation_id=reservation_id)
    if reservation is None:
        raise Http404
    return reservation


@buyer_page
def reservation_detail(
    request: HttpRequest, org: Organisation, reservation_id: str
) -> HttpResponse:
    reservation = _reservation(org, reservation_id)
    delivered = reservation.delivered_gpu_hours
    refund = None
    if delivered is not None and delivered < reservation.gpu_hours:
        from marketplace.money import bill_amount

        refund = reservation.bill - bill_amount(1, delivered, reservation.price_per_gpu_hour)
    context = {
        "r": reservation,
        "events": selectors.reservation_events(reservation),
        "refund": refund,
        "money": selectors.reservation_money(reservation),
        "can_cancel": _can_cancel(reservation),
        "disputes": selectors.reservation_disputes(reservation),
        "can_dispute": reservation.status in services.DISPUTABLE,
    }
    return render(request, "web/reservation_detail.html", context)


def _can_cancel(reservation: Any) -> bool:
    """Whether the buyer may still cancel (``reservation_cancel``'s own rules decide at POST)."""
    return reservation.status in ("held", "confirmed") and reservation.start > timezone.now()


@buyer_page
def reservation_cancel(
    request: HttpRequest, org: Organisation, reservation_id: str
) -> HttpResponse:
    """GET: the fee that cancelling now would cost (``cancellation_fee``), to confirm.
    POST: ``reservation_cancel``."""
    reservation = _reservation(org, reservation_id)
    if request.method == "POST":
        try:
            services.reservation_cancel(
                reservation_id=reservation.pk,
                buyer=org,
                actor=request.user,  # type: ignore[arg-type]
            )
        except DomainError as exc:
            messages.error(request, domain_message(exc))
        else:
            messages.success(request, _("Reservation cancelled."))
        return redirect("web:reservation", reservation_id=reservation.pk)
    if not _can_cancel(reservation):
        # Already cancelled (or started, settled, …): say so, offer nothing to confirm.
        return render(request, "web/reservation_cancel.html", {"r": reservation, "closed": True})
    fee = services.cancellation_fee(reservation, timezone.now())
    context = {
        "r": reservation,
        "fee": fee,
        "back_to_wallet": reservation.cash_part - fee,
        "back_to_voucher": reservation.voucher_part,
    }
    return render(request, "web/reservation_cancel.html", context)


@require_POST
@buyer_page
def reservation_accept(
    request: HttpRequest, org: Organisation, reservation_id: str
) -> HttpResponse:
    reservation = _reservation(org, reservation_id)
    try:
        services.reservation_accept(
            reservation_id=reservation.pk,
            buyer=org,
            actor=request.user,  # type: ignore[arg-type]
        )
    except DomainError as exc:
        messages.error(request, domain_message(exc))
    else:
        messages.success(request, _("Reservation accepted."))
    return redirect("web:reservation", reservation_id=reservation.pk)


@require_POST
@buyer_page
def reservation_dispute(
    request: HttpRequest, org: Organisation, reservation_id: str
) -> HttpResponse:
    """POST: ``dispute_open`` on one of the buyer's reservations (reason from the form)."""
    reservation = _reservation(org, reservation_id)
    try:
        services.dispute_open(
            reservation_id=reservation.pk,
            organisation=org,
            reason=request.POST.get("reason", ""),
            user=request.user,  # type: ignore[arg-type]
        )
    except DomainError as exc:
        messages.error(request, domain_message(exc))
    else:
        messages.success(request, _("Dispute opened: an operator will look at it."))
    return redirect("web:reservation", reservation_id=reservation.pk)


# --- Vouchers ------------------------------------------------------------------------------


@buyer_page
def vouchers(request: HttpRequest, org: Organisation) -> HttpResponse:
    form = VoucherApplicationForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                voucher_application_submit(buyer=org, **form.cleaned_data)
            except DomainError as exc:
                add_domain_error(form, exc)
            else:
                messages.success(request, _("Application submitted."))
                return redirect("web:vouchers")
        status = 400
    context = {
        "form": form,
        "vouchers": voucher_selectors.voucher_list(owner=org),
        "applications": voucher_selectors.voucher_application_list(buyer=org),
    }
    return render(request, "web/vouchers.html", context, status=status)


# --- Statement -----------------------------------------------------------------------------


@buyer_page
def statement(request: HttpRequest, org: Organisation) -> HttpResponse:
    page = Paginator(selectors.statement(organisation=org), PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    balances = organisation_balances(organisation=org)
    return render(request, "web/statement.html", {"page": page, "balances": balances})


@buyer_page
def statement_csv(request: HttpRequest, org: Organisation) -> HttpResponse:
    """Every ledger entry of the organisation as CSV (UTF-8 with BOM for spreadsheet apps);
    times ISO 8601 in Asia/Shanghai, amounts CNY with 2 places, memos through ``cell_text``."""
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="statement.csv"'
    response.write("\ufeff")
    writer = csv.writer(response)
    writer.writerow(
        [
            "time_asia_shanghai",
            "transaction",
            "reason",
            "account",
            "voucher",
            "reservation",
            "amount_cny",
            "memo",
        ]
    )
    for entry in selectors.statement(organisation=org).iterator(chunk_size=2000):
        txn = entry.transaction
        writer.writerow(
            [
                timezone.localtime(txn.created_at, SHANGHAI).isoformat(timespec="seconds"),
                txn.pk,
                txn.reason,
                entry.account.kind,
                entry.account.voucher_id or "",
                txn.reservation_id or "",
                f"{entry.amount:.2f}",
                cell_text(txn.memo),
            ]
        )
    return response
