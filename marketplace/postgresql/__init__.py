"""The project's PostgreSQL database backend (``ENGINE = "marketplace.postgresql"``): Django's,
with a health check that costs no round trip (see ``base.DatabaseWrapper.is_usable``)."""
