"""Test settings: PostgreSQL and Redis on this machine unless the environment says otherwise.

Celery runs eagerly inside the test process; the real-worker tests switch eager mode off and start
a worker subprocess pointed at the test database (see tests/conftest.py).
"""

from .base import *  # noqa: F403
from .base import env, pg_binding

# The same parameter binding as production (pg_binding), so the suite runs the ORM's queries
# the way production sends them.
DATABASES = {
    "default": pg_binding(
        env.db("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/suanli")
    ),
}
DATABASES["default"]["TEST"] = {"NAME": env("TEST_DATABASE_NAME", default="test_suanli")}
REDIS_URL = env("REDIS_URL", default="redis://127.0.0.1:6379/14")
CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=True)
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
SECRET_KEY = "test-only-not-secret"  # noqa: S105
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        # Parallel runs share this Redis: keep each test database's keys apart.
        "KEY_PREFIX": DATABASES["default"]["TEST"]["NAME"],
    }
}
# The offer search page cache on, as in production (marketplace.search_generation).
OFFER_SEARCH_CACHE_SECONDS = env.int("OFFER_SEARCH_CACHE_SECONDS", default=30)
