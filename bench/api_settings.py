"""Settings of ``bench/bench_api.py``'s gunicorn: the production settings (DEBUG off, the same
middleware, Redis cache and broker) on plain HTTP over loopback, with the bench URLconf (the
API plus a bare ``/bench/hello/``). Not used by the product."""

from marketplace.settings.production import *  # noqa: F403

ROOT_URLCONF = "bench.api_urls"
SECURE_SSL_REDIRECT = False
SECURE_HSTS_SECONDS = 0

# Persistent database connections, as a production deployment runs them (a new PostgreSQL
# connection per request costs more than the offer search itself).
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DJANGO_CONN_MAX_AGE", default=60)  # noqa: F405
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True  # noqa: F405
