"""Marketplace API views: reference data, offers, demands, quotes, reservations.

Thin views: input serializer → service → output serializer; reads go through
``marketplace.selectors``. Errors are the one shape of ``marketplace.api.errors``: 400 bad input
(naming the field), 401 anonymous, 403 no organisation or wrong kind of organisation, 404 an id
the caller cannot see (including another organisation's), 409 an illegal transition, 422 a rule
the input breaks (funds, reused Idempotency-Key).
"""

from typing import Any

from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Organisation
from marketplace import selectors, services
from marketplace.errors import Conflict, NotFound, PermissionDenied
from marketplace.matching.explain import demand_explain
from marketplace.models import Demand, InterHubTrade, Offer, Reservation
from vouchers.models import Voucher
from vouchers.selectors import voucher_get
from web.selectors import inter_hub_trade_matrix

from .base import (
    ERRORS,
    ID_PATH,
    IDEMPOTENCY_HEADER,
    OrgMixin,
    caller,
    idempotent,
    object_id,
    operator_permissions,
)
from .filters import (
    DemandFilter,
    InterHubTradeFilter,
    MatrixFilterBackend,
    OfferFilter,
    ReservationFilter,
    SiteFilter,
    StrictFilterBackend,
    query_problems,
)
from .search_cache import SearchPage
from .serializers import (
    OFFER_VALUES,
    RESERVATION_VALUES,
    AcceleratorSerializer,
    DemandCreateInputSerializer,
    DemandDetailSerializer,
    DemandExplainSerializer,
    DemandSerializer,
    HubSerializer,
    InterHubTradeMatrixSerializer,
    OfferCreateInputSerializer,
    OfferSerializer,
    OfferUpdateInputSerializer,
    QuoteInputSerializer,
    QuoteSerializer,
    ReservationSerializer,
    SiteSerializer,
    UsageInputSerializer,
    offer_values_representation,
    reservation_values_representation,
)

# --- Reference data (any authenticated caller) ----------------------------------------------


class PublicListApi(OrgMixin, generics.ListAPIView):
    """Base of the public, paginated, strictly filtered lists."""

    organisation_required = False
    filter_backends = [StrictFilterBackend]


class HubListApi(PublicListApi):
    """The national hub nodes, by code."""

    serializer_class = HubSerializer

    def get_queryset(self) -> QuerySet:
        return selectors.hub_list()


class SiteListApi(PublicListApi):
    """Sites (data centres and home locations). Filters: ``hub`` (code), ``city``."""

    serializer_class = SiteSerializer
    filterset_class = SiteFilter

    def get_queryset(self) -> QuerySet:
        return selectors.site_list()


class AcceleratorListApi(PublicListApi):
    """The accelerator catalogue: memory in GB, dense BF16/FP16 TFLOPS."""

    serializer_class = AcceleratorSerializer

    def get_queryset(self) -> QuerySet:
        return selectors.accelerator_list()


# --- Offers ---------------------------------------------------------------------------------


class OfferListCreateApi(PublicListApi):
    """``GET``: search active offers (filters in ``OfferFilter``: accelerator, hub, tier,
    max_price CNY/GPU-hour, min_gpus, window_start/window_end UTC, ordering).
    ``POST``: a provider lists capacity (403 ``not_a_provider`` for a buyer)."""

    serializer_class = OfferSerializer
    filterset_class = OfferFilter

    def get_queryset(self) -> QuerySet:
        return selectors.offer_search(related=False)  # list() reads values(), not instances

    # ``If-None-Match`` is HTTP's own conditional request header (RFC 9110 §13.1.2), not a
    # parameter of this operation; the 304 it can lead to is documented.
    @extend_schema(
        responses={
            200: OfferSerializer(many=True),
            304: OpenApiResponse(
                description="Not Modified: the request's `If-None-Match` names this page's "
                "`ETag` (or is `*`); no body. Every search answer carries a strong `ETag` and "
                "`Cache-Control: private, no-cache`."
            ),
        },
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.list(request, *args, **kwargs)

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """The search's read path, kept lean because it is the API's busiest call: the
        filtered page and its total in one query of plain values (site, hub, provider and
        accelerator joined), written out as ``OfferSerializer`` would without its per-row
        field machinery (``offer_values_representation``).

        Plain JSON pages go through the shared page cache and answer ``If-None-Match``
        (``marketplace.api.search_cache``): a hit costs the token query only."""
        cached = SearchPage.for_request(request, self, self.organisation)
        if cached is not None:
            hit = cached.lookup()  # notes the generation before the rows are read
            if hit is not None:
                return hit  # type: ignore[return-value]  # rendered already
        queryset = self.filter_queryset(self.get_queryset()).values(*OFFER_VALUES)
        page = self.paginate_queryset(queryset)
        assert page is not None  # the API always paginates
        response = self.get_paginated_response(offer_values_representation(page))
        if cached is None:
            return response
        return cached.respond(response.data)  # type: ignore[return-value]

    @extend_schema(request=OfferCreateInputSerializer, responses={201: OfferSerializer, **ERRORS})
    def post(self, request: Request) -> Response:
        if self.organisation is None:
            self.permission_denied(
                request, "you do not belong to an organisation", "no_organisation"
            )
        _require_provider(self.org)
        data = _valid(OfferCreateInputSerializer, request)
        activate = data.pop("activate")
        accelerator = services.accelerators_resolve([data.pop("accelerator")], field="accelerator")[
            0
        ]
        offer = services.offer_create(
            provider=self.org, accelerator=accelerator, activate=activate, **data
        )
        return Response(
            OfferSerializer(_offer(self, offer.pk)).data, status=status.HTTP_201_CREATED
        )


def _require_provider(organisation: Organisation) -> None:
    """Provider actions refuse a buyer-only organisation up front (403 ``not_a_provider``),
    before any id in the request is looked at."""
    if not organisation.is_provider:
        raise PermissionDenied("only providers can do this", code="not_a_provider")


def _require_buyer(organisation: Organisation) -> None:
    """Buyer actions refuse a provider-only organisation up front (403 ``not_a_buyer``)."""
    if not organisation.is_buyer:
        raise PermissionDenied("only buyers can do this", code="not_a_buyer")


def _valid(serializer_class: type, request: Request) -> dict[str, Any]:
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _offer(view: OrgMixin, offer_id: object) -> Offer:
    offer = selectors.offer_get_visible(organisation=view.organisation, offer_id=offer_id)
    if offer is None:
        raise NotFound("no such offer", field="offer")
    return offer


@extend_schema(parameters=[ID_PATH])
class OfferDetailApi(OrgMixin, APIView):
    """``GET``: an active offer, or one of the caller's own in any status.
    ``PATCH``: the owning provider edits it (404 for anyone else; 409 ``below_reserved`` when
    ``gpu_count`` would drop below GPUs already reserved)."""

    organisation_required = False

    @extend_schema(responses={200: OfferSerializer, **ERRORS})
    def get(self, request: Request, id: str) -> Response:
        return Response(OfferSerializer(_offer(self, object_id(id, "offer"))).data)

    @extend_schema(
        request=OfferUpdateInputSerializer,
        responses={200: OfferSerializer, 409: ERRORS[400], **ERRORS},
    )
    def patch(self, request: Request, id: str) -> Response:
        if self.organisation is None:
            raise NotFound("no such offer", field="offer")
        serializer = OfferUpdateInputSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        offer = services.offer_update(
            offer_id=object_id(id, "offer"), provider=self.org, **serializer.validated_data
        )
        return Response(OfferSerializer(_offer(self, offer.pk)).data)


@extend_schema(parameters=[ID_PATH])
class OfferStatusApi(OrgMixin, APIView):
    """The owning provider pauses, activates or withdraws an offer (409 when the status
    cannot change that way; 404 for another organisation's offer)."""

    target_status: str = ""

    @extend_schema(request=None, responses={200: OfferSerializer, 409: ERRORS[400], **ERRORS})
    def post(self, request: Request, id: str) -> Response:
        offer = services.offer_set_status(
            offer_id=object_id(id, "offer"), provider=self.org, status=self.target_status
        )
        return Response(OfferSerializer(_offer(self, offer.pk)).data)


class OfferPauseApi(OfferStatusApi):
    """Pause an active offer (it stops being matched)."""

    target_status = Offer.Status.PAUSED


class OfferActivateApi(OfferStatusApi):
    """Activate a draft or paused offer."""

    target_status = Offer.Status.ACTIVE


class OfferWithdrawApi(OfferStatusApi):
    """Withdraw an offer for good (reservations already made stay)."""

    target_status = Offer.Status.WITHDRAWN


# --- Demands --------------------------------------------------------------------------------


def _own_voucher(view: OrgMixin, voucher_id: object) -> Voucher | None:
    if voucher_id is None:
        return None
    voucher = voucher_get(owner=view.org, voucher_id=voucher_id)
    if voucher is None:
        raise NotFound("no such voucher", field="voucher")
    return voucher


class DemandListCreateApi(OrgMixin, generics.ListAPIView):
    """``GET``: the caller's demands (filter ``status``). ``POST``: post a demand (times UTC,
    price CNY per GPU-hour ≤ 4 places); 400 naming the field for a window in the past, an end
    before the start, a duration longer than the window or an unknown accelerator; 404
    ``voucher`` for a voucher that is not the caller's. Accepts ``Idempotency-Key``."""

    serializer_class = DemandSerializer
    filterset_class = DemandFilter
    queryset = Demand.objects.none()  # schema introspection only; see get_queryset
    filter_backends = [StrictFilterBackend]

    def get_queryset(self) -> QuerySet:
        return selectors.demand_list(buyer=self.org)

    @extend_schema(
        request=DemandCreateInputSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={201: DemandSerializer, 422: ERRORS[400], **ERRORS},
    )
    @idempotent
    def post(self, request: Request) -> Response:
        _require_buyer(self.org)
        data = _valid(DemandCreateInputSerializer, request)
        voucher = _own_voucher(self, data.pop("voucher", None))
        demand = services.demand_create(
            buyer=self.org, user=caller(request), voucher=voucher, **data
        )
        return Response(
            DemandSerializer(_demand(self, demand.pk)).data, status=status.HTTP_201_CREATED
        )


def _demand(view: OrgMixin, demand_id: object) -> Demand:
    demand = selectors.demand_get(buyer=view.org, demand_id=demand_id)
    if demand is None:
        raise NotFound("no such demand", field="demand")
    return demand


@extend_schema(parameters=[ID_PATH])
class DemandDetailApi(OrgMixin, APIView):
    """One of the caller's demands (404 for anyone else's), with its reservations (``parts``:
    one per offer when the demand was split across offers)."""

    @extend_schema(responses={200: DemandDetailSerializer, **ERRORS})
    def get(self, request: Request, id: str) -> Response:
        return Response(DemandDetailSerializer(_demand(self, id)).data)


@extend_schema(parameters=[ID_PATH])
class DemandCancelApi(OrgMixin, APIView):
    """Cancel an open demand (409 once matched or closed)."""

    @extend_schema(request=None, responses={200: DemandSerializer, 409: ERRORS[400], **ERRORS})
    def post(self, request: Request, id: str) -> Response:
        demand = services.demand_cancel(demand_id=object_id(id, "demand"), buyer=self.org)
        return Response(DemandSerializer(_demand(self, demand.pk)).data)


# --- Quotes ---------------------------------------------------------------------------------


class QuoteApi(OrgMixin, APIView):
    """The bill (CNY) for ``gpu_count`` GPUs x ``hours`` on an offer (plus any ``extra_lines``
    of other categories) and its voucher/cash split, line by line, without holding anything.
    404 for an offer or voucher the caller cannot see."""

    @extend_schema(request=QuoteInputSerializer, responses={200: QuoteSerializer, **ERRORS})
    def post(self, request: Request) -> Response:
        _require_buyer(self.org)
        data = _valid(QuoteInputSerializer, request)
        split = services.quote(
            buyer=self.org,
            offer=_offer(self, data["offer"]),
            gpu_count=data["gpu_count"],
            hours=data["hours"],
            voucher=_own_voucher(self, data.get("voucher")),
            extra_lines=[
                (line["category"], line["amount"]) for line in data.get("extra_lines", [])
            ],
        )
        return Response(QuoteSerializer(split).data)


# --- Reservations ---------------------------------------------------------------------------


class ReservationListApi(OrgMixin, generics.ListAPIView):
    """Reservations the caller buys or sells, by start. Filters: ``status``, ``role``
    (``buyer`` or ``provider``)."""

    serializer_class = ReservationSerializer
    filterset_class = ReservationFilter
    queryset = Reservation.objects.none()  # schema introspection only; see get_queryset
    filter_backends = [StrictFilterBackend]

    def get_queryset(self) -> QuerySet:
        return selectors.reservation_list(organisation=self.org)

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """As the offer search: the page and its total in one query of plain values, written
        out as ``ReservationSerializer`` would (``reservation_values_representation``; the
        voucher shown to the buyer only)."""
        queryset = self.filter_queryset(self.get_queryset()).values(*RESERVATION_VALUES)
        page = self.paginate_queryset(queryset)
        assert page is not None  # the API always paginates
        return self.get_paginated_response(
            reservation_values_representation(page, organisation=self.org)
        )


def _reservation(view: OrgMixin, reservation_id: object) -> Reservation:
    reservation = selectors.reservation_get(organisation=view.org, reservation_id=reservation_id)
    if reservation is None:
        raise NotFound("no such reservation", field="reservation")
    return reservation


@extend_schema(parameters=[ID_PATH])
class ReservationDetailApi(OrgMixin, APIView):
    """A reservation the caller buys or sells (404 otherwise)."""

    @extend_schema(responses={200: ReservationSerializer, **ERRORS})
    def get(self, request: Request, id: str) -> Response:
        return Response(
            ReservationSerializer(_reservation(self, id), context={"organisation": self.org}).data
        )


@extend_schema(parameters=[ID_PATH, IDEMPOTENCY_HEADER])
class ReservationAcceptApi(OrgMixin, APIView):
    """The buyer accepts a held reservation (``held → confirmed``; 409 otherwise).
    Accepts ``Idempotency-Key``."""

    @extend_schema(
        request=None,
        responses={200: ReservationSerializer, 409: ERRORS[400], 422: ERRORS[400], **ERRORS},
    )
    @idempotent
    def post(self, request: Request, id: str) -> Response:
        reservation = services.reservation_accept(
            reservation_id=object_id(id, "reservation"), buyer=self.org, actor=caller(request)
        )
        return Response(
            ReservationSerializer(
                _reservation(self, reservation.pk), context={"organisation": self.org}
            ).data
        )


@extend_schema(parameters=[ID_PATH, IDEMPOTENCY_HEADER])
class ReservationCancelApi(OrgMixin, APIView):
    """The buyer cancels before the start; held CNY returns to voucher and wallet, less the
    cancellation fee inside the fee window. 409 once started. Accepts ``Idempotency-Key``."""

    @extend_schema(
        request=None,
        responses={200: ReservationSerializer, 409: ERRORS[400], 422: ERRORS[400], **ERRORS},
    )
    @idempotent
    def post(self, request: Request, id: str) -> Response:
        reservation = services.reservation_cancel(
            reservation_id=object_id(id, "reservation"), buyer=self.org, actor=caller(request)
        )
        return Response(
            ReservationSerializer(
                _reservation(self, reservation.pk), context={"organisation": self.org}
            ).data
        )


@extend_schema(parameters=[ID_PATH, IDEMPOTENCY_HEADER])
class ReservationUsageApi(OrgMixin, APIView):
    """The provider reports delivered GPU-hours of an active reservation, completing it
    (409 unless active; 404 for a reservation it does not sell). Accepts ``Idempotency-Key``."""

    @extend_schema(
        request=UsageInputSerializer,
        responses={200: ReservationSerializer, 409: ERRORS[400], 422: ERRORS[400], **ERRORS},
    )
    @idempotent
    def post(self, request: Request, id: str) -> Response:
        data = _valid(UsageInputSerializer, request)
        reservation = services.reservation_report_usage(
            reservation_id=object_id(id, "reservation"),
            provider=self.org,
            actor=caller(request),
            delivered_gpu_hours=data["delivered_gpu_hours"],
        )
        return Response(
            ReservationSerializer(
                _reservation(self, reservation.pk), context={"organisation": self.org}
            ).data
        )


# --- Matching: "why no match" (appended by issue 4) ----------------------------------------


@extend_schema(parameters=[ID_PATH])
class DemandExplainApi(OrgMixin, APIView):
    """Why one of the caller's open demands is not matched (PRODUCT.md §4, "asked why"): every
    active offer counted by the first rule that blocks it, and the nearest misses, prices in
    CNY per GPU-hour and times in UTC (``demand_explain``). 404 for anyone else's demand or a
    malformed id; then 400 ``invalid`` naming any query parameter (it takes none, so a filter
    a client hoped would narrow the answer is refused, not ignored); then 409
    ``demand_not_open`` once the demand is no longer open. Reads only."""

    @extend_schema(responses={200: DemandExplainSerializer, 409: ERRORS[400], **ERRORS})
    def get(self, request: Request, id: str) -> Response:
        with selectors.one_snapshot():  # the demand and every count from one snapshot
            demand = _demand(self, id)
            problems = query_problems(request.query_params, set())
            if problems:
                raise ValidationError(problems)
            if demand.status != Demand.Status.OPEN:
                raise Conflict(f"demand is {demand.status}", code="demand_not_open", field="demand")
            data = demand_explain(demand, now=timezone.now())
        return Response(DemandExplainSerializer(data).data)


# --- Inter-hub trade matrix (appended by issue 4) ------------------------------------------


class InterHubTradeMatrixApi(generics.GenericAPIView):
    """What was traded between hubs (PRODUCT.md §4.3 hub docking, §6.4 operator admin), by
    exporting hub × importing hub: trades, GPU-hours, value CNY (booked for
    held/confirmed/active reservations, delivered and billable for completed/settled ones,
    less refunds decided after settlement; cancelled, expired and failed ones left out;
    ``inter_hub_trade_matrix``).
    Filters (``InterHubTradeFilter``): ``exporting_hub``, ``importing_hub`` (hub codes),
    ``booked_after`` (inclusive), ``booked_before`` (exclusive), UTC. 400 ``invalid`` naming
    the parameter for a bad value, an unknown hub code, ``booked_before`` not after
    ``booked_after``, a parameter given twice or empty, or any other parameter (``page``
    included: the matrix is one object). Operators only — staff with the view permission on
    inter-hub trades, as the admin's matrix page and dashboard section: 401 anonymous, 403
    ``not_operator`` for everyone else (checked before the parameters)."""

    filter_backends = [MatrixFilterBackend]
    filterset_class = InterHubTradeFilter
    pagination_class = None
    permission_classes = operator_permissions("marketplace.view_interhubtrade")

    def get_queryset(self) -> QuerySet[InterHubTrade]:
        return InterHubTrade.objects.all()

    @extend_schema(filters=True, responses={200: InterHubTradeMatrixSerializer, **ERRORS})
    def get(self, request: Request) -> Response:
        trades = self.filter_queryset(self.get_queryset())
        return Response(InterHubTradeMatrixSerializer(inter_hub_trade_matrix(trades)).data)
