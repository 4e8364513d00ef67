"""The bench URLconf: the product's URLs plus ``/bench/hello/``, the bare Django baseline (the
same middleware, no database, no DRF). Only ``bench.api_settings`` uses it."""

from django.http import HttpRequest, HttpResponse
from django.urls import path

from marketplace.urls import handler400, handler403, handler404, handler500  # noqa: F401
from marketplace.urls import urlpatterns as product_urlpatterns


def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"hello", content_type="text/plain")


urlpatterns = [path("bench/hello/", hello), *product_urlpatterns]
