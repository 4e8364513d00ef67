from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from marketplace.console import console_site
from ops import views as ops_views

urlpatterns = [
    # The API first: Django tries the patterns in order, and the web UI's are many (about 35
    # failed matches on every API request when they came first; no web path starts with api/).
    path("api/v1/", include("marketplace.api.urls")),
    path("", include("web.urls")),  # the SME web UI (and the operator dashboard in the admin)
    path("i18n/", include("django.conf.urls.i18n")),
    path("admin/", admin.site.urls),
    path("console/", console_site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
]

# Errors under /api/ are problem details (JSON), never HTML pages (marketplace.api.errors).
handler400 = "marketplace.api.errors.handler400"
handler403 = "marketplace.api.errors.handler403"
handler404 = "marketplace.api.errors.handler404"
handler500 = "marketplace.api.errors.handler500"

# Operations: liveness, readiness, Prometheus metrics (ops/views.py).
urlpatterns += [
    path("healthz", ops_views.healthz, name="healthz"),
    path("readyz", ops_views.readyz, name="readyz"),
    path("metrics", ops_views.metrics_view, name="metrics"),
]
