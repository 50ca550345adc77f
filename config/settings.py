"""IterComp Studio settings: everything comes from the environment (see README, "Configuration")."""

from __future__ import annotations

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config.env import (
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_optional,
    env_path,
    env_redis_url,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)

_DEV_SECRET = "dev-only-insecure-key-never-used-when-DEBUG-is-off"
SECRET_KEY = env_str("SECRET_KEY", _DEV_SECRET) if DEBUG else env_str("SECRET_KEY")
if not DEBUG and (len(SECRET_KEY) < 50 or SECRET_KEY == _DEV_SECRET):
    raise ImproperlyConfigured("SECRET_KEY must be at least 50 random characters when DEBUG is off.")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG else "")
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must name at least one host when DEBUG is off.")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "django_filters",
    "django_tables2",
    "template_partials",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_results",
    "django_celery_beat",
    "jobs",
    "gallery",
    "annotation",
    "training",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "config.middleware.SecurityHeadersMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

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
                "annotation.context_processors.roles",
            ],
        },
    },
]

# --- Database: PostgreSQL only (psycopg 3). The run/test commands start an embedded one when none is given.
_database_url = env_optional("DATABASE_URL")
if _database_url is None:
    raise ImproperlyConfigured(
        "DATABASE_URL is not set. `make run` and `make test` start an embedded PostgreSQL and set it; "
        "otherwise point it at your server, e.g. postgresql://user:pass@host:5432/itercomp."
    )
if not _database_url.startswith(("postgres://", "postgresql://", "pgsql://")):
    raise ImproperlyConfigured(
        f"DATABASE_URL must be a PostgreSQL URL, got {_database_url.split(':', 1)[0]}://…"
    )
DATABASES = {
    "default": dj_database_url.parse(
        _database_url,
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0),
        conn_health_checks=True,
    )
}
DATABASES["default"]["ENGINE"] = "django.db.backends.postgresql"
_test_db_name = env_optional("DATABASE_TEST_NAME")
if _test_db_name:
    DATABASES["default"]["TEST"] = {"NAME": _test_db_name}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Files: only through Django's storage API so object storage is a setting away.
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = env_path("STATIC_ROOT", BASE_DIR / "var" / "static")
MEDIA_ROOT = env_path("MEDIA_ROOT", BASE_DIR / "var" / "media")
MEDIA_URL = env_str("MEDIA_URL", "/media/")
STORAGE_BACKEND = env_choice("STORAGE_BACKEND", "filesystem", ("filesystem", "s3"))
if STORAGE_BACKEND == "s3":
    _default_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env_str("S3_BUCKET"),
            "endpoint_url": env_optional("S3_ENDPOINT_URL"),
            "region_name": env_optional("S3_REGION"),
            "access_key": env_optional("S3_ACCESS_KEY_ID"),
            "secret_key": env_optional("S3_SECRET_ACCESS_KEY"),
            "default_acl": None,
            "file_overwrite": False,
            "querystring_auth": True,
        },
    }
else:
    _default_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(MEDIA_ROOT), "base_url": MEDIA_URL},
    }
STORAGES = {
    "default": _default_storage,
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
# GPU workers on other machines keep a local copy of what they read from storage.
WORKER_CACHE_DIR = env_path("WORKER_CACHE_DIR", BASE_DIR / "var" / "cache")
SERVE_MEDIA = env_bool("SERVE_MEDIA", STORAGE_BACKEND == "filesystem")

# --- Celery (Redis broker, results in PostgreSQL so the UI can show them).
CELERY_BROKER_URL = env_redis_url("CELERY_BROKER_URL")
CELERY_QUEUE_PREFIX = env_str("CELERY_QUEUE_PREFIX", "")
CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = True
CELERY_CACHE_BACKEND = "default"
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE
# Late acks + reject on worker loss: a task whose worker dies is redelivered, not dropped.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Redis redelivers an unacknowledged task after this long; GPU stages heartbeat and are idempotent.
CELERY_VISIBILITY_TIMEOUT_S = env_int("CELERY_VISIBILITY_TIMEOUT_S", 600, minimum=30)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT_S,
    "queue_order_strategy": "priority",
}
CELERY_DEFAULT_SOFT_TIME_LIMIT_S = env_int("CELERY_DEFAULT_SOFT_TIME_LIMIT_S", 300, minimum=1)
CELERY_GPU_SOFT_TIME_LIMIT_S = env_int("CELERY_GPU_SOFT_TIME_LIMIT_S", 6 * 3600, minimum=1)
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"

CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    # Shared by every web process (config/login_throttle.py): the broker's Redis under its own key prefix.
    "throttle": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": CELERY_BROKER_URL.replace("redis+socket://", "unix://", 1),
        "KEY_PREFIX": f"{CELERY_QUEUE_PREFIX}studio-throttle",
        "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
    },
}
# Login throttling: this many failures for one username from one address within the window → 429.
LOGIN_FAILURES_LIMIT = env_int("LOGIN_FAILURES_LIMIT", 5, minimum=1)
LOGIN_FAILURES_WINDOW_S = env_int("LOGIN_FAILURES_WINDOW_S", 900, minimum=1)

# --- API
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "config.pagination.BoundedLimitOffsetPagination",
    "PAGE_SIZE": 100,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "IterComp Studio API",
    "DESCRIPTION": "Rankings, consensus, image-rank pairs, exports and training rounds.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "config.api_schema.document_refusals",
    ],
    # Swagger UI and Redoc from the app's own static files (drf-spectacular-sidecar), never a CDN: the CSP
    # allows scripts from 'self' only, and many deployments have no internet.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Domain knobs
ANNOTATOR_ID_SALT = env_str("ANNOTATOR_ID_SALT", SECRET_KEY)
RANKINGS_PER_TASK = env_int("RANKINGS_PER_TASK", 3, minimum=1, maximum=20)
TASK_LEASE_SECONDS = env_int("TASK_LEASE_SECONDS", 900, minimum=10)
GOLD_TASK_RATE = env_float("GOLD_TASK_RATE", 0.1, minimum=0.0, maximum=1.0)
# A local HuggingFace BLIP folder (e.g. an image-text-matching checkpoint) the reward models start from.
REWARD_BLIP_PATH = env_str("REWARD_BLIP_PATH", "")
# The synthetic world's base model folder; empty means the committed checkpoint.
WORLD_BASE_MODEL_PATH = env_str("WORLD_BASE_MODEL_PATH", "")
# The synthetic world's pretrained reward encoder (a local BLIP folder); empty: the committed one.
WORLD_ENCODER_PATH = env_str("WORLD_ENCODER_PATH", "")
# Processes (one per GPU) a worker's training stages run on: 1 trains inside the worker process; more
# runs each training step under `accelerate launch --num_processes N` (README "Multi-GPU training").
TRAINING_NUM_PROCESSES = env_int("TRAINING_NUM_PROCESSES", 1, minimum=1, maximum=64)
ROUND_STALE_AFTER_S = env_int("ROUND_STALE_AFTER_S", 120, minimum=5)
ROUND_AUTO_RESUME_ATTEMPTS = env_int("ROUND_AUTO_RESUME_ATTEMPTS", 0, minimum=0, maximum=10)
RECONCILE_AFTER_S = env_int("RECONCILE_AFTER_S", 300, minimum=5)
# Consensus, agreement and exports (annotation.services.consensus / export).
CONSENSUS_METHOD = env_choice("CONSENSUS_METHOD", "borda", ("borda", "kemeny", "plackett_luce"))
# Tasks whose Kendall's W falls below this get one more ranking, up to CONSENSUS_MAX_RANKINGS.
CONSENSUS_AGREEMENT_THRESHOLD = env_float("CONSENSUS_AGREEMENT_THRESHOLD", 0.5, minimum=0.0, maximum=1.0)
CONSENSUS_MAX_RANKINGS = env_int("CONSENSUS_MAX_RANKINGS", 5, minimum=2, maximum=20)
# Pairs the weighted consensus cannot separate: "half" keeps them with label 0.5, "skip" drops them.
PAIR_TIES = env_choice("PAIR_TIES", "half", ("half", "skip"))
# Above this many rows a non-streaming export (Parquet, JSON formats) runs as a Celery job instead.
EXPORT_INLINE_MAX_ROWS = env_int("EXPORT_INLINE_MAX_ROWS", 100_000, minimum=1)
EXPORT_CHUNK_SIZE = env_int("EXPORT_CHUNK_SIZE", 5_000, minimum=100, maximum=100_000)
IMAGE_MAX_PIXELS = env_int("IMAGE_MAX_PIXELS", 4096 * 4096, minimum=1)
IMAGE_MAX_BYTES = env_int("IMAGE_MAX_BYTES", 50 * 1024 * 1024, minimum=1)

# --- Security: strict by default whenever DEBUG is off (README: production variables).
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_TLS_PROXY", False) else None
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_HTTPONLY = True
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = SECURE_HSTS_SECONDS > 0
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}
