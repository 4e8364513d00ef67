from django.contrib.auth import views as auth_views
from django.urls import path, reverse_lazy

from marketplace.admin_dashboard import operator_dashboard

from . import views

app_name = "web"

urlpatterns = [
    path("", views.home, name="home"),
    path("signup/", views.signup, name="signup"),
    path(
        "login/",
        auth_views.LoginView.as_view(template_name="web/login.html"),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "password-reset/",
        auth_views.PasswordResetView.as_view(
            template_name="web/password_reset.html",
            email_template_name="web/password_reset_email.txt",
            subject_template_name="web/password_reset_subject.txt",
            success_url=reverse_lazy("web:password_reset_done"),
        ),
        name="password_reset",
    ),
    path(
        "password-reset/sent/",
        auth_views.PasswordResetDoneView.as_view(template_name="web/password_reset_done.html"),
        name="password_reset_done",
    ),
    path(
        "password-reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(
            template_name="web/password_reset_confirm.html",
            success_url=reverse_lazy("web:password_reset_complete"),
        ),
        name="password_reset_confirm",
    ),
    path(
        "password-reset/done/",
        auth_views.PasswordResetCompleteView.as_view(
            template_name="web/password_reset_complete.html"
        ),
        name="password_reset_complete",
    ),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("dashboard/demands/", views.demand_status, name="demand-status"),
    path("wallet/deposit/", views.deposit, name="deposit"),
    path("offers/", views.offers, name="offers"),
    path("demands/new/", views.demand_new, name="demand-new"),
    path("demands/quote/", views.demand_quote, name="demand-quote"),
    path("demands/<str:demand_id>/", views.demand_detail, name="demand"),
    path("demands/<str:demand_id>/cancel/", views.demand_cancel, name="demand-cancel"),
    path("reservations/", views.reservations, name="reservations"),
    path("reservations/<str:reservation_id>/", views.reservation_detail, name="reservation"),
    path(
        "reservations/<str:reservation_id>/cancel/",
        views.reservation_cancel,
        name="reservation-cancel",
    ),
    path(
        "reservations/<str:reservation_id>/dispute/",
        views.reservation_dispute,
        name="reservation-dispute",
    ),
    path(
        "reservations/<str:reservation_id>/accept/",
        views.reservation_accept,
        name="reservation-accept",
    ),
    path("vouchers/", views.vouchers, name="vouchers"),
    path("statement/", views.statement, name="statement"),
    path("statement.csv", views.statement_csv, name="statement-csv"),
    # The operator dashboard lives in the admin (staff only), routed here so that it resolves
    # before the admin's catch-all.
    path("admin/dashboard/", operator_dashboard, name="operator-dashboard"),
]
