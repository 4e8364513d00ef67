"""Provider console: a second admin site at /console/ scoped to the provider's organisation."""

from django.contrib.admin import AdminSite


class ProviderConsoleSite(AdminSite):
    site_header = "Suanli Exchange — provider console"
    site_title = "Provider console"
    index_title = "Your capacity"


console_site = ProviderConsoleSite(name="console")
