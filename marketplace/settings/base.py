"""Settings shared by every environment, read from the environment (django-environ).

No ``DATABASE_URL`` → SQLite in the project folder (the embedded default).
No ``REDIS_URL`` → Celery runs tasks in-process (``task_always_eager``).
With both set → PostgreSQL and Redis with separate worker and beat processes.
"""

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

SECRET_KEY = env("DJANGO_SECRET_KEY", default="dev-insecure-change-me")
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "accounts",
    "marketplace",
    "vouchers",
    "ledger",
    "web",
    "ops",
]

MIDDLEWARE = [
    "ops.middleware.RequestIdMiddleware",
    "ops.middleware.MetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "ops.middleware.DatabaseBusyMiddleware",
]

ROOT_URLCONF = "marketplace.urls"
WSGI_APPLICATION = "marketplace.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Matching and the demo write from one process; wait for the lock instead of failing.
    # WAL with synchronous=NORMAL keeps each durable commit cheap (no fsync per transaction);
    # IMMEDIATE transactions take the write lock up front, so readers never deadlock upgrading.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
LOCALE_PATHS = [BASE_DIR / "locale"]
LOGIN_URL = "web:login"
LOGIN_REDIRECT_URL = "web:dashboard"
LOGOUT_REDIRECT_URL = "web:home"
# Password-reset mail: printed to the console unless an SMTP backend is configured.
EMAIL_BACKEND = env(
    "DJANGO_EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend"
)
DEFAULT_FROM_EMAIL = env("DJANGO_DEFAULT_FROM_EMAIL", default="no-reply@suanli.local")
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.tokens.HashedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "marketplace.api.pagination.StrictPageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PARSER_CLASSES": [
        "marketplace.api.fields.SafeJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "EXCEPTION_HANDLER": "marketplace.api.errors.exception_handler",
    "COERCE_DECIMAL_TO_STRING": True,
    "DEFAULT_THROTTLE_CLASSES": [
        "accounts.throttling.WriteUserRateThrottle",
        "accounts.throttling.WriteIPRateThrottle",
    ],
}

# Rate limits (accounts.throttling): writes per user and per IP, token requests per IP.
API_RATES = {
    "write_user": env("API_RATE_WRITE_USER", default="120/min"),
    "write_ip": env("API_RATE_WRITE_IP", default="600/min"),
    "login_ip": env("API_RATE_LOGIN_IP", default="30/min"),
}
# Login lock-out (accounts.throttling): this many wrong passwords for a username from one IP
# lock that (username, IP) pair, and the larger per-username count from all IPs locks the
# username, for LOGIN_LOCKOUT_SECONDS.
LOGIN_MAX_FAILURES = env.int("LOGIN_MAX_FAILURES", default=5)
LOGIN_MAX_FAILURES_PER_USERNAME = env.int("LOGIN_MAX_FAILURES_PER_USERNAME", default=50)
LOGIN_LOCKOUT_SECONDS = env.int("LOGIN_LOCKOUT_SECONDS", default=900)

SPECTACULAR_SETTINGS = {
    "TITLE": "Suanli Exchange API",
    "DESCRIPTION": "Regional compute market: offers, demands, reservations, compute vouchers.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI and Redoc served from this site (no CDN: the product must work offline).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "OfferStatusEnum": "marketplace.models.Offer.Status",
        "DemandStatusEnum": "marketplace.models.Demand.Status",
        "ReservationStatusEnum": "marketplace.models.Reservation.Status",
        "LocalityTierEnum": "marketplace.models.LocalityTier",
        "SplitEnum": "marketplace.models.SplitScope",
        "OrganisationKindEnum": "accounts.models.Organisation.Kind",
        "OrganisationStatusEnum": "accounts.models.Organisation.Status",
        "StatementStatusEnum": "vouchers.models.Statement.Status",
        "ClaimStatusEnum": "vouchers.models.ReimbursementClaim.Status",
        "ClaimKindEnum": "vouchers.models.ReimbursementClaim.Kind",
        "RedemptionModeEnum": "vouchers.models.Programme.RedemptionMode",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "marketplace.api.schema.postprocess_problem_responses",
        "marketplace.api.schema.postprocess_links",
    ],
}

# --- Cache (throttling, login lock-out): Redis when REDIS_URL is set, else local memory ----
REDIS_URL = env("REDIS_URL", default="")
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

# Rendered offer search pages kept in the cache this many seconds at most (a safety net: every
# write that changes a search answer makes them stale at once; marketplace.search_generation).
# 0 turns the page cache off; off by default without Redis (a per-process memory cache cannot
# see another process's writes).
OFFER_SEARCH_CACHE_SECONDS = env.int("OFFER_SEARCH_CACHE_SECONDS", default=30 if REDIS_URL else 0)

# --- Celery -----------------------------------------------------------------------------
# The in-process broker names its host, or kombu warns "No hostname was supplied" at each eager
# task (Celery acquires a producer even when it runs the task in-process).
CELERY_BROKER_URL = REDIS_URL or "memory://localhost/"
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = not REDIS_URL
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = env("CELERY_TASK_DEFAULT_QUEUE", default="default")
# A single active beat among any number started (PostgreSQL advisory lock; ops/beat.py).
CELERY_BEAT_SCHEDULER = "ops.beat:SingleBeatScheduler"
BEAT_STANDBY_INTERVAL = env.int("BEAT_STANDBY_INTERVAL", default=5)  # seconds
# At-least-once delivery done safely (ops/tasks.py has the base task class). Time limits bound
# every task; the broker's visibility timeout (when an unacknowledged message is delivered
# again) must exceed the hard time limit and the longest countdown/ETA, or a running task
# would be handed to a second worker. Tasks are idempotent, so a redelivery is harmless anyway.
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=240)  # seconds
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=300)  # seconds
CELERY_TASK_MAX_RETRIES = env.int("CELERY_TASK_MAX_RETRIES", default=5)
CELERY_TASK_RETRY_BACKOFF = env.int("CELERY_TASK_RETRY_BACKOFF", default=2)  # seconds, doubled
CELERY_TASK_RETRY_BACKOFF_MAX = env.int("CELERY_TASK_RETRY_BACKOFF_MAX", default=300)
CELERY_TASK_MAX_DELIVERIES = env.int("CELERY_TASK_MAX_DELIVERIES", default=5)
CELERY_VISIBILITY_TIMEOUT = env.int("CELERY_VISIBILITY_TIMEOUT", default=3600)  # seconds
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
    # How often a worker looks for messages past the visibility timeout to hand out again
    # (kombu's default is every 10 × 10 s).
    "unacked_restore_interval": env.int("CELERY_UNACKED_RESTORE_INTERVAL", default=10),
    "unacked_restore_throttle": 1,
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None  # a worker keeps reconnecting to a restarted Redis
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 5,
    "interval_start": 0.2,
    "interval_step": 0.5,
    "interval_max": 2,
}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False  # workers log through LOGGING below (JSON, request id)
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_TIMEZONE = "UTC"

# --- Market rules (PRODUCT.md; "(default)" values are configuration) ---------------------
MATCH_INTERVAL = env.int("MATCH_INTERVAL", default=10)  # seconds between matching cycles
# One matching queue per hub (``match.<hub code>``) whenever Celery is not eager (a broker is
# configured); workers subscribe with ``-Q default,match.<code>,…``. ``MATCH_HUB_QUEUES=0``
# sends every cycle to the default queue instead. Eager (the embedded default) runs in-process.
MATCH_HUB_QUEUES = env.bool("MATCH_HUB_QUEUES", default=True)
MATCH_QUEUE_PREFIX = env("MATCH_QUEUE_PREFIX", default="match")
# A cycle writes its matches this many per transaction (marketplace.matching.bulk): larger
# batches spread each batch's ~25 statements and its COMMIT over more reservations, smaller ones
# hold the batch's demand, offer and wallet row locks for less time (make bench-cycle).
MATCH_WRITE_BATCH = env.int("MATCH_WRITE_BATCH", default=500)
ACCEPT_TTL = timedelta(minutes=env.int("ACCEPT_TTL_MINUTES", default=15))
CANCEL_FEE_WINDOW = timedelta(hours=env.int("CANCEL_FEE_WINDOW_HOURS", default=24))
CANCEL_FEE_RATE = Decimal(env("CANCEL_FEE_RATE", default="0.10"))
PLATFORM_FEE_RATE = Decimal(env("PLATFORM_FEE_RATE", default="0.00"))
PROGRAMME_TIME_ZONE = "Asia/Shanghai"
# Stored Idempotency-Key responses are kept at least this long (never less than 7 days).
IDEMPOTENCY_KEY_TTL = timedelta(days=env.int("IDEMPOTENCY_KEY_TTL_DAYS", default=7))

CELERY_BEAT_SCHEDULE = {
    "matching-cycle": {"task": "marketplace.tasks.match_all_hubs", "schedule": MATCH_INTERVAL},
    "expire-unaccepted": {"task": "marketplace.tasks.expire_unaccepted", "schedule": 60.0},
    "advance-reservations": {"task": "marketplace.tasks.advance_reservations", "schedule": 60.0},
    "settle-completed": {"task": "marketplace.tasks.settle_completed", "schedule": 300.0},
    "expire-demands": {"task": "marketplace.tasks.expire_demands", "schedule": 300.0},
    "expire-offers": {"task": "marketplace.tasks.expire_offers", "schedule": 300.0},
    "lapse-expired-vouchers": {
        "task": "vouchers.tasks.lapse_expired_vouchers",
        "schedule": 86400.0,
    },
    "issue-statements": {"task": "vouchers.tasks.issue_statements", "schedule": 86400.0},
    "prune-idempotency-keys": {
        "task": "ledger.tasks.prune_idempotency_keys",
        "schedule": 86400.0,
    },
}

# Logs: one line per record on stderr, JSON when LOG_FORMAT=json (production's default), each
# with the request id of the HTTP request, carried into the Celery tasks it enqueued.
LOG_FORMAT = env("LOG_FORMAT", default="text")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "ops.context.RequestIdFilter"}},
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(process)d %(request_id)s %(task_id)s "
            "%(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
        "text": {
            "format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s%(task_id)s] %(message)s"
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["request_id"],
            "formatter": "json" if LOG_FORMAT == "json" else "text",
        }
    },
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="WARNING")},
}

# Prometheus scrape and probes (ops/views.py): /healthz, /readyz, /metrics.
# Database timeouts (milliseconds) applied on PostgreSQL by production settings (pg_options).
DB_STATEMENT_TIMEOUT_MS = env.int("DB_STATEMENT_TIMEOUT_MS", default=15000)
DB_LOCK_TIMEOUT_MS = env.int("DB_LOCK_TIMEOUT_MS", default=5000)
DB_CONNECT_TIMEOUT_S = env.int("DB_CONNECT_TIMEOUT_S", default=5)


# Server-side parameter binding and prepared statements on PostgreSQL (pg_binding): a query
# run DB_PREPARE_THRESHOLD times on a connection is prepared, so PostgreSQL stops planning it
# again on every request (planning the API's token lookup and offer search cost more CPU than
# running them). Empty DB_PREPARE_THRESHOLD turns preparing off (a transaction-pooling PgBouncer
# older than 1.21 cannot hold prepared statements).
DB_PREPARE_THRESHOLD = env("DB_PREPARE_THRESHOLD", default="5")


def pg_binding(db: dict) -> dict:  # type: ignore[type-arg]
    """Bind parameters on the server (psycopg's ``Cursor`` instead of Django's default
    client-side binding, which writes every value into the SQL text so no two queries are the
    same) and let psycopg prepare the queries that repeat (``DB_PREPARE_THRESHOLD``). The
    backend is ``marketplace.postgresql`` (Django's, with a ``CONN_HEALTH_CHECKS`` check that
    sends no query while the connection is idle and live)."""
    if "postgresql" in db.get("ENGINE", ""):
        db["ENGINE"] = "marketplace.postgresql"
        options = db.setdefault("OPTIONS", {})
        options["server_side_binding"] = True
        options["prepare_threshold"] = int(DB_PREPARE_THRESHOLD) if DB_PREPARE_THRESHOLD else None
    return db


def pg_options(db: dict) -> dict:  # type: ignore[type-arg]
    """Add statement, lock and connect timeouts to a PostgreSQL database setting, so no request
    or task waits on the database without bound (a timeout is an OperationalError: a 503 for a
    request, a retry with backoff for a task), and server-side binding (``pg_binding``)."""
    if "postgresql" in db.get("ENGINE", ""):
        options = db.setdefault("OPTIONS", {})
        options.setdefault("connect_timeout", DB_CONNECT_TIMEOUT_S)
        options["options"] = (
            f"-c statement_timeout={DB_STATEMENT_TIMEOUT_MS} -c lock_timeout={DB_LOCK_TIMEOUT_MS}"
        )
    return pg_binding(db)
