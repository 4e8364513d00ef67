"""Routes of the REST API under ``/api/v1/`` (PRODUCT.md §6.1). Ids are UUIDs; a malformed id
is a JSON 404 from the view, so paths take any segment."""

from django.urls import path

from accounts.api import views as accounts
from ledger.api import views as ledger
from vouchers.api import views as vouchers

from . import provider
from . import views as market
from .search_cache import lean_offer_search

urlpatterns = [
    path("auth/token/", accounts.TokenObtainApi.as_view(), name="auth-token"),
    path("auth/tokens/", accounts.TokenListApi.as_view(), name="auth-tokens"),
    path("auth/tokens/<str:id>/", accounts.TokenRevokeApi.as_view(), name="auth-token-revoke"),
    path("organisations/", accounts.OrganisationRegisterApi.as_view(), name="organisations"),
    path("organisations/me/", accounts.OrganisationMeApi.as_view(), name="organisation-me"),
    path("hubs/", market.HubListApi.as_view(), name="hubs"),
    path("sites/", market.SiteListApi.as_view(), name="sites"),
    path("accelerators/", market.AcceleratorListApi.as_view(), name="accelerators"),
    path("offers/", lean_offer_search(market.OfferListCreateApi.as_view()), name="offers"),
    path("offers/<str:id>/", market.OfferDetailApi.as_view(), name="offer-detail"),
    path("offers/<str:id>/pause/", market.OfferPauseApi.as_view(), name="offer-pause"),
    path("offers/<str:id>/activate/", market.OfferActivateApi.as_view(), name="offer-activate"),
    path("offers/<str:id>/withdraw/", market.OfferWithdrawApi.as_view(), name="offer-withdraw"),
    path("demands/", market.DemandListCreateApi.as_view(), name="demands"),
    path("demands/<str:id>/", market.DemandDetailApi.as_view(), name="demand-detail"),
    path("demands/<str:id>/cancel/", market.DemandCancelApi.as_view(), name="demand-cancel"),
    path("demands/<str:id>/explain/", market.DemandExplainApi.as_view(), name="demand-explain"),
    path("quotes/", market.QuoteApi.as_view(), name="quotes"),
    path("reservations/", market.ReservationListApi.as_view(), name="reservations"),
    path(
        "reservations/<str:id>/", market.ReservationDetailApi.as_view(), name="reservation-detail"
    ),
    path(
        "reservations/<str:id>/accept/",
        market.ReservationAcceptApi.as_view(),
        name="reservation-accept",
    ),
    path(
        "reservations/<str:id>/cancel/",
        market.ReservationCancelApi.as_view(),
        name="reservation-cancel",
    ),
    path(
        "reservations/<str:id>/usage/",
        market.ReservationUsageApi.as_view(),
        name="reservation-usage",
    ),
    path("provider/sites/", provider.ProviderSiteListApi.as_view(), name="provider-sites"),
    path(
        "provider/usage-reports/",
        provider.UsageReportListApi.as_view(),
        name="provider-usage-reports",
    ),
    path("provider/payouts/", provider.PayoutListApi.as_view(), name="provider-payouts"),
    path(
        "provider/reimbursement-claims/",
        provider.ReimbursementClaimListApi.as_view(),
        name="provider-reimbursement-claims",
    ),
    path("programmes/", vouchers.ProgrammeListApi.as_view(), name="programmes"),
    path("programmes/<str:id>/", vouchers.ProgrammeDetailApi.as_view(), name="programme-detail"),
    path("vouchers/", vouchers.VoucherListApi.as_view(), name="vouchers"),
    path("vouchers/<str:id>/", vouchers.VoucherDetailApi.as_view(), name="voucher-detail"),
    path(
        "voucher-applications/",
        vouchers.VoucherApplicationListCreateApi.as_view(),
        name="voucher-applications",
    ),
    path(
        "voucher-applications/<str:id>/",
        vouchers.VoucherApplicationDetailApi.as_view(),
        name="voucher-application-detail",
    ),
    path("statements/", vouchers.StatementListApi.as_view(), name="statements"),
    path("statements/<str:id>/", vouchers.StatementDetailApi.as_view(), name="statement-detail"),
    path("statements/<str:id>/csv/", vouchers.StatementCsvApi.as_view(), name="statement-csv"),
    path(
        "statements/<str:id>/mark-paid/",
        vouchers.StatementMarkPaidApi.as_view(),
        name="statement-mark-paid",
    ),
    path("wallet/", ledger.WalletApi.as_view(), name="wallet"),
    path(
        "inter-hub-trades/matrix/",
        market.InterHubTradeMatrixApi.as_view(),
        name="inter-hub-trade-matrix",
    ),
    path("wallet/deposits/", ledger.DepositApi.as_view(), name="wallet-deposits"),
    path("ledger/", ledger.EntryListApi.as_view(), name="ledger"),
]
