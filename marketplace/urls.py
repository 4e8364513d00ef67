from django.contrib import admin
from django.urls import include, path

from marketplace.console import console_site

urlpatterns = [
    path("admin/", admin.site.urls),
    path("console/", console_site.urls),
    path("api/v1/", include("marketplace.api.urls")),
]
