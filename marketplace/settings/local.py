"""Development and demo settings: the embedded default (SQLite, in-process Celery) unless
``DATABASE_URL`` / ``REDIS_URL`` are set."""

from .base import *  # noqa: F403
from .base import env

DEBUG = env.bool("DJANGO_DEBUG", default=True)
EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
