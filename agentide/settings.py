"""AgentIDE settings: one module, every value from the environment.

Profiles: ``AGENTIDE_PROFILE=development`` (default: DEBUG on, SQLite under var/, local Redis)
or ``production`` (DEBUG off, secure cookies, HSTS; SECRET_KEY and ALLOWED_HOSTS required).
Every variable is documented in compose/.env.example.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from agentide.lib.env import (
    database_from_url,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_prices,
    env_required,
    env_str,
    local_secret,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("AGENTIDE_VAR_DIR", str(BASE_DIR / "var")))

PROFILE = env_str("AGENTIDE_PROFILE", "development")
if PROFILE not in {"development", "production"}:
    raise ImproperlyConfigured(
        f"AGENTIDE_PROFILE={PROFILE!r} is not a profile (use development or production)."
    )
PRODUCTION = PROFILE == "production"

DEBUG = env_bool("DJANGO_DEBUG", not PRODUCTION)
if PRODUCTION:
    SECRET_KEY = env_required("DJANGO_SECRET_KEY", why="a long random string in production")
    if len(SECRET_KEY) < 50:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be at least 50 characters long.")
    ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", [])
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured("DJANGO_ALLOWED_HOSTS must list the host names in production.")
else:
    # Never a public default: it also seals stored API keys. Generated once, kept in var/.
    SECRET_KEY = env_str("DJANGO_SECRET_KEY", "") or local_secret(VAR_DIR / "secret_key")
    ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
# Earlier secret keys (comma-separated), newest first: sessions signed and API keys sealed
# under them stay valid; new ones use SECRET_KEY.
SECRET_KEY_FALLBACKS = env_list("DJANGO_SECRET_KEY_FALLBACKS", [])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_htmx",
    "axes",
    "agentide.accounts",
    "agentide.projects",
    "agentide.events",
    "agentide.sessions",
    "agentide.sandboxes",
    "agentide.agents",
    "agentide.quotas",
    "agentide.transcripts",
    "agentide.api",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    # Before CSRF, which is the first to read a POST body: refuses bodies over their limit.
    "agentide.lib.uploads.UploadLimitMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "agentide.accounts.middleware.ContentSecurityPolicyMiddleware",
    # Axes last: it inspects the response of a failed login.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "agentide.urls"
ASGI_APPLICATION = "agentide.asgi.application"

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
                "agentide.accounts.context_processors.teams",
            ],
        },
    },
]

DATABASES = {
    "default": database_from_url(
        "DATABASE_URL",
        env_str("DATABASE_URL"),
        sqlite_default=VAR_DIR / "agentide.sqlite3",
        # The web process (Daphne) sets it: see Procfile and compose/.env.example.
        pool_size=env_int("AGENTIDE_DB_POOL", 0, minimum=0, maximum=200),
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
if env_bool("AGENTIDE_TEST_FAST_HASHER", False) and not PRODUCTION:
    # The test suite creates many users; PBKDF2's deliberate slowness would dominate its time.
    PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.MD5PasswordHasher",
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    ]
# Who may create teams: "open" (any signed-in user) or "admins" (site staff only), and how
# many teams one person may own (0: no limit; site staff are not limited). Each team gets
# fresh default quotas, so an open site keeps this small.
AGENTIDE_TEAM_CREATION = env_str("AGENTIDE_TEAM_CREATION", "open")
if AGENTIDE_TEAM_CREATION not in {"open", "admins"}:
    raise ImproperlyConfigured(
        f"AGENTIDE_TEAM_CREATION={AGENTIDE_TEAM_CREATION!r} is not open or admins."
    )
AGENTIDE_MAX_TEAMS_PER_USER = env_int("AGENTIDE_MAX_TEAMS_PER_USER", 3, minimum=0)
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# Login rate limiting: a username is locked after repeated failures from any addresses, and
# an address after repeated failures for any usernames (each counted on its own), so neither
# rotating addresses nor spraying usernames gets more guesses.
AXES_FAILURE_LIMIT = env_int("AGENTIDE_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = env_float("AGENTIDE_LOGIN_COOLOFF_HOURS", 0.25, minimum=0.0)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
# How many reverse proxies of this site append to X-Forwarded-For in front of Daphne. 0 (no
# proxy): the client address is the connection's peer and X-Forwarded-For is ignored, since a
# client can write anything in it.
AGENTIDE_TRUSTED_PROXY_COUNT = env_int("AGENTIDE_TRUSTED_PROXY_COUNT", 0, minimum=0, maximum=10)
AXES_CLIENT_IP_CALLABLE = "agentide.lib.http.client_ip"
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_RESET_ON_SUCCESS = True

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("AGENTIDE_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("AGENTIDE_STATIC_ROOT", str(VAR_DIR / "static")))
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
# Outside production, serve straight from the app folders so no collectstatic step is needed.
WHITENOISE_USE_FINDERS = not PRODUCTION
WHITENOISE_AUTOREFRESH = DEBUG

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
if not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured(
        f"REDIS_URL={REDIS_URL!r} must start with redis://, rediss:// or unix://."
    )

# Namespace of everything this installation keeps in Redis (channel-layer keys, the Celery
# queue, presence), so several installations or test runs can share one Redis.
REDIS_PREFIX = env_str("AGENTIDE_REDIS_PREFIX", "agentide")
if not REDIS_PREFIX.replace("-", "").replace("_", "").isalnum():
    raise ImproperlyConfigured(
        f"AGENTIDE_REDIS_PREFIX={REDIS_PREFIX!r} may hold only letters, digits, - and _."
    )

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [REDIS_URL],
            "prefix": REDIS_PREFIX,
            "capacity": env_int("AGENTIDE_CHANNEL_CAPACITY", 1000, minimum=10),
            "expiry": 60,
        },
    }
}

# Celery: tasks run long, I/O-bound commands and agent turns. A task is acknowledged only after
# it finishes and is redelivered if its worker dies; tasks themselves stay idempotent by claiming
# their rows with a conditional update.
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = REDIS_PREFIX
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's Django fixup closes every database connection before and after each task unless this
# is set (then only every this many tasks): a new PostgreSQL connection per cell cost 10-40 ms of
# the round trip. Connections are kept like a request's instead (CONN_MAX_AGE, health checks):
# agentide/celery.py closes unusable or obsolete ones around each task.
CELERY_DB_REUSE_MAX = 1_000_000
CELERY_TASK_SOFT_TIME_LIMIT = env_int("AGENTIDE_TASK_SOFT_TIME_LIMIT", 4 * 3600, minimum=10)
CELERY_TASK_TIME_LIMIT = env_int("AGENTIDE_TASK_TIME_LIMIT", CELERY_TASK_SOFT_TIME_LIMIT + 300)
if CELERY_TASK_TIME_LIMIT <= CELERY_TASK_SOFT_TIME_LIMIT:
    raise ImproperlyConfigured(
        "AGENTIDE_TASK_TIME_LIMIT must be above AGENTIDE_TASK_SOFT_TIME_LIMIT."
    )
# Redis redelivers unacknowledged tasks after the visibility timeout: it must outlast the
# longest task, or a running command would be started a second time.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_TASK_TIME_LIMIT + 600}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_CONCURRENCY = env_int("AGENTIDE_WORKER_CONCURRENCY", 8, minimum=1)
CELERY_TASK_ALWAYS_EAGER = False
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {}

# Sandboxes (agentide/sandboxes): one hardened container per session. Project settings ask,
# these ceilings decide. agentide/sandboxes/conf.py reads them (with the same defaults).
AGENTIDE_SANDBOX_BACKEND = env_str(
    "AGENTIDE_SANDBOX_BACKEND", "agentide.sandboxes.backends.docker.DockerBackend"
)
# Docker engine URL for sandboxes; blank = DOCKER_HOST or the local socket.
AGENTIDE_SANDBOX_DOCKER_HOST = env_str("AGENTIDE_SANDBOX_DOCKER_HOST", "")
# This installation's label on the engine: reconcile only ever touches its own site.
AGENTIDE_SANDBOX_SITE = env_str("AGENTIDE_SANDBOX_SITE", "default")
AGENTIDE_SANDBOX_IMAGE = env_str("AGENTIDE_SANDBOX_IMAGE", "agentide-sandbox:latest")
AGENTIDE_SANDBOX_ALLOWED_IMAGES = env_list("AGENTIDE_SANDBOX_ALLOWED_IMAGES", [])
AGENTIDE_SANDBOX_RUNTIME = env_str("AGENTIDE_SANDBOX_RUNTIME", "")
AGENTIDE_SANDBOX_MAX_MEMORY_MB = env_int("AGENTIDE_SANDBOX_MAX_MEMORY_MB", 4096, minimum=64)
AGENTIDE_SANDBOX_MAX_CPUS = env_float("AGENTIDE_SANDBOX_MAX_CPUS", 2.0, minimum=0.1)
AGENTIDE_SANDBOX_MAX_PIDS = env_int("AGENTIDE_SANDBOX_MAX_PIDS", 1024, minimum=16)
AGENTIDE_SANDBOX_MAX_TMP_MB = env_int("AGENTIDE_SANDBOX_MAX_TMP_MB", 1024, minimum=16)
AGENTIDE_SANDBOX_NOFILE = env_int("AGENTIDE_SANDBOX_NOFILE", 4096, minimum=64)
AGENTIDE_SANDBOX_FSIZE_MB = env_int("AGENTIDE_SANDBOX_FSIZE_MB", 2048, minimum=1)
AGENTIDE_SANDBOX_DEFAULT_TIMEOUT_S = env_int("AGENTIDE_SANDBOX_DEFAULT_TIMEOUT_S", 600, minimum=1)
AGENTIDE_SANDBOX_MAX_TIMEOUT_S = env_int("AGENTIDE_SANDBOX_MAX_TIMEOUT_S", 3600, minimum=1)
AGENTIDE_SANDBOX_IDLE_STOP_S = env_int("AGENTIDE_SANDBOX_IDLE_STOP_S", 1800, minimum=10)
AGENTIDE_SANDBOX_MAX_AGE_S = env_int("AGENTIDE_SANDBOX_MAX_AGE_S", 30 * 86400, minimum=60)
AGENTIDE_SANDBOX_ORPHAN_GRACE_S = env_int("AGENTIDE_SANDBOX_ORPHAN_GRACE_S", 600, minimum=0)
AGENTIDE_SANDBOX_WARM_POOL_SIZE = env_int("AGENTIDE_SANDBOX_WARM_POOL_SIZE", 2, minimum=0)
AGENTIDE_SANDBOX_MAX_READ_BYTES = env_int(
    "AGENTIDE_SANDBOX_MAX_READ_BYTES", 25 * 1024 * 1024, minimum=1024
)
AGENTIDE_SANDBOX_MAX_WRITE_BYTES = env_int(
    "AGENTIDE_SANDBOX_MAX_WRITE_BYTES", 25 * 1024 * 1024, minimum=1024
)
# Largest file the file panel downloads (streamed from the sandbox, never held in memory).
AGENTIDE_MAX_DOWNLOAD_MB = env_int("AGENTIDE_MAX_DOWNLOAD_MB", 1024, minimum=1)
# Request bodies: forms take at most DATA_UPLOAD_MAX_MEMORY_SIZE (views that take files
# declare their own limit, agentide/lib/uploads.py); uploaded files above
# FILE_UPLOAD_MAX_MEMORY_SIZE are spooled to a temporary file instead of memory.
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
# Workspace size limits (README, "Workspace disk"): auto | ext4 (required) | volume (none).
AGENTIDE_SANDBOX_WORKSPACE_DISK = env_str("AGENTIDE_SANDBOX_WORKSPACE_DISK", "auto")
if AGENTIDE_SANDBOX_WORKSPACE_DISK not in ("auto", "ext4", "volume"):
    raise ImproperlyConfigured("AGENTIDE_SANDBOX_WORKSPACE_DISK must be auto, ext4 or volume.")
AGENTIDE_SANDBOX_WORKSPACE_DIR = env_str("AGENTIDE_SANDBOX_WORKSPACE_DIR") or str(
    VAR_DIR / "workspaces"
)
# Host directory of the workspace checkpoint store (content-addressed blobs and manifests;
# agentide/sandboxes/checkpoints.py). Every worker that takes or restores checkpoints
# must see the same directory.
AGENTIDE_CHECKPOINT_DIR = env_str("AGENTIDE_CHECKPOINT_DIR") or str(VAR_DIR / "checkpoints")
# The largest checkpoint bundle an import may carry (it is also held to the importing
# project's checkpoint storage limit).
AGENTIDE_CHECKPOINT_MAX_BUNDLE_MB = env_int(
    "AGENTIDE_CHECKPOINT_MAX_BUNDLE_MB", 2048, minimum=1, maximum=16 * 1024
)
# The workspace disk service's socket ("" = the worker mounts workspace images itself).
AGENTIDE_SANDBOX_WORKSPACE_DISK_SOCKET = env_str("AGENTIDE_SANDBOX_WORKSPACE_DISK_SOCKET", "")
AGENTIDE_SANDBOX_MAX_DISK_MB = env_int("AGENTIDE_SANDBOX_MAX_DISK_MB", 10240, minimum=16)
AGENTIDE_SANDBOX_MAX_LIST_ENTRIES = env_int("AGENTIDE_SANDBOX_MAX_LIST_ENTRIES", 2000, minimum=10)
AGENTIDE_SANDBOX_MAX_LIST_BYTES = env_int(
    "AGENTIDE_SANDBOX_MAX_LIST_BYTES", 1024 * 1024, minimum=4096
)
if AGENTIDE_SANDBOX_MAX_TIMEOUT_S >= CELERY_TASK_SOFT_TIME_LIMIT:
    raise ImproperlyConfigured(
        "AGENTIDE_SANDBOX_MAX_TIMEOUT_S must be below AGENTIDE_TASK_SOFT_TIME_LIMIT, "
        "or a long command would be cut off by the worker's time limit."
    )
CELERY_BEAT_SCHEDULE["sandboxes-reconcile"] = {
    "task": "agentide.sandboxes.tasks.reconcile_sandboxes",
    "schedule": 60.0,
}
CELERY_BEAT_SCHEDULE["sandboxes-prune-checkpoints"] = {
    "task": "agentide.sandboxes.tasks.prune_checkpoints",
    "schedule": 3600.0,
}
CELERY_BEAT_SCHEDULE["sandboxes-stop-idle"] = {
    "task": "agentide.sandboxes.tasks.stop_idle_sandboxes",
    "schedule": 60.0,
}
CELERY_BEAT_SCHEDULE["sandboxes-refill-warm-pool"] = {
    "task": "agentide.sandboxes.tasks.refill_warm_pool",
    "schedule": 30.0,
}

# Security headers. The CSP allows only this origin; htmx and the app's JS are served locally.
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from the page, not the cookie
if PRODUCTION:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", True)

EMAIL_BACKEND = env_str(
    "DJANGO_EMAIL_BACKEND",
    "django.core.mail.backends.smtp.EmailBackend"
    if PRODUCTION
    else "django.core.mail.backends.console.EmailBackend",
)
DEFAULT_FROM_EMAIL = env_str("DJANGO_DEFAULT_FROM_EMAIL", "agentide@localhost")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("AGENTIDE_LOG_LEVEL", "INFO")},
    "loggers": {"axes": {"level": "WARNING"}},
}

# Agents (agentide/agents): how turns reach model providers.
# Environment variables a project may name as its API key source: anything else (the database
# URL, the secret key...) could otherwise be sent to a base_url of the project's choosing.
AGENTIDE_MODEL_KEY_VARS = env_list("AGENTIDE_MODEL_KEY_VARS", ["OPENAI_API_KEY"])
# Hosts a project's base_url may point at (comma-separated; blank: any public host).
AGENTIDE_MODEL_ALLOWED_HOSTS = env_list("AGENTIDE_MODEL_ALLOWED_HOSTS", [])
# Hosts the site's own keys (AGENTIDE_MODEL_KEY_VARS) may be sent to; a project with another
# base_url must bring its own key. A blank base_url means api.openai.com.
AGENTIDE_MODEL_KEY_HOSTS = env_list("AGENTIDE_MODEL_KEY_HOSTS", ["api.openai.com"])
# Model requests reach public addresses only (checked after DNS resolution, at request time).
# Exceptions for local model servers: CIDR networks (e.g. 127.0.0.1/32 for a vLLM on the
# worker's host) and host names that may resolve to private addresses (e.g. vllm in compose).
AGENTIDE_MODEL_PRIVATE_NETWORKS = env_list("AGENTIDE_MODEL_PRIVATE_NETWORKS", [])
for _network in AGENTIDE_MODEL_PRIVATE_NETWORKS:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError:
        raise ImproperlyConfigured(
            f"AGENTIDE_MODEL_PRIVATE_NETWORKS: {_network!r} is not a CIDR network."
        ) from None
AGENTIDE_MODEL_PRIVATE_HOSTS = env_list("AGENTIDE_MODEL_PRIVATE_HOSTS", [])
# Secret for API keys stored sealed at rest (blank: DJANGO_SECRET_KEY), and earlier ones
# (comma-separated) that still open values sealed under them.
AGENTIDE_SEALING_KEY = env_str("AGENTIDE_SEALING_KEY", "")
AGENTIDE_SEALING_KEY_FALLBACKS = env_list("AGENTIDE_SEALING_KEY_FALLBACKS", [])
# Prices ($ per million tokens: input/cached input/output) of calls made with the site's own
# keys; they feed the cost quota. "*" prices every model not listed. A project's own price
# fields apply only to the API key its team stored.
AGENTIDE_MODEL_PRICES = env_prices(
    "AGENTIDE_MODEL_PRICES",
    "gpt-5.1=1.25/0.125/10,gpt-5=1.25/0.125/10,gpt-5-mini=0.25/0.025/2,*=15/1.5/60",
)
AGENTIDE_MODEL_TIMEOUT_S = env_float("AGENTIDE_MODEL_TIMEOUT_S", 600.0, minimum=1.0)
# Retries with exponential backoff of 429 / 5xx / timeouts inside one model call.
AGENTIDE_MODEL_MAX_RETRIES = env_int("AGENTIDE_MODEL_MAX_RETRIES", 4, minimum=0, maximum=20)
# Characters of one command's output the model sees (head + tail, with a truncation note).
AGENTIDE_AGENT_OUTPUT_CHARS = env_int("AGENTIDE_AGENT_OUTPUT_CHARS", 16_000, minimum=200)
# Characters an old tool output is shortened to when the context fills.
AGENTIDE_AGENT_SHORT_OUTPUT_CHARS = env_int("AGENTIDE_AGENT_SHORT_OUTPUT_CHARS", 1_000, minimum=100)
# Timeout of one agent command when the model asks for none (capped by the project's timeout).
AGENTIDE_AGENT_COMMAND_TIMEOUT_S = env_int("AGENTIDE_AGENT_COMMAND_TIMEOUT_S", 300, minimum=1)

# Notebook (agentide/sessions): cells, output streaming, leases, presence.
NOTEBOOK_MAX_SOURCE_BYTES = env_int("AGENTIDE_MAX_CELL_BYTES", 64 * 1024, minimum=1024)
# Cells waiting to run (queued): at most this many per session, and per user across sessions.
AGENTIDE_MAX_QUEUED_CELLS_PER_SESSION = env_int(
    "AGENTIDE_MAX_QUEUED_CELLS_PER_SESSION", 50, minimum=1
)
AGENTIDE_MAX_QUEUED_CELLS_PER_USER = env_int("AGENTIDE_MAX_QUEUED_CELLS_PER_USER", 20, minimum=1)
# Output is coalesced into events every FLUSH_MS or FLUSH_CHARS, whichever comes first.
NOTEBOOK_OUTPUT_FLUSH_MS = env_int("AGENTIDE_OUTPUT_FLUSH_MS", 40, minimum=1)
NOTEBOOK_OUTPUT_FLUSH_CHARS = env_int("AGENTIDE_OUTPUT_FLUSH_CHARS", 16 * 1024, minimum=256)
# Per command: the first HEAD chars stream live; the last TAIL chars are added at the end.
NOTEBOOK_OUTPUT_HEAD_CHARS = env_int("AGENTIDE_OUTPUT_HEAD_CHARS", 256 * 1024, minimum=1024)
NOTEBOOK_OUTPUT_TAIL_CHARS = env_int("AGENTIDE_OUTPUT_TAIL_CHARS", 64 * 1024, minimum=0)
# How much output one cell keeps in the browser's DOM before hiding the oldest part.
NOTEBOOK_DOM_OUTPUT_CHARS = env_int("AGENTIDE_DOM_OUTPUT_CHARS", 100 * 1024, minimum=1024)
# A running cell's worker renews its lease; a cell whose lease expired ends "interrupted".
NOTEBOOK_LEASE_S = env_int("AGENTIDE_CELL_LEASE_S", 30, minimum=2)
NOTEBOOK_CANCEL_POLL_S = env_float("AGENTIDE_CANCEL_POLL_S", 0.5, minimum=0.05)
NOTEBOOK_MAX_COMMAND_S = CELERY_TASK_SOFT_TIME_LIMIT - 5
NOTEBOOK_PRESENCE_TTL_S = env_int("AGENTIDE_PRESENCE_TTL_S", 45, minimum=5)
CELERY_BEAT_SCHEDULE["notebook-expire-stale-cells"] = {
    "task": "agentide.sessions.tasks.expire_stale_cells",
    "schedule": env_float("AGENTIDE_EXPIRE_CELLS_EVERY_S", 10.0, minimum=1.0),
}
# redis-py 8 defaults socket_timeout to 5 s, which breaks the channel layer's blocking
# BZPOPMIN receive: every consumer crashed with "Timeout reading" after ~5 idle seconds
# (django/channels_redis#422). Blocking reads must wait as long as the server says.
CHANNEL_LAYERS["default"]["CONFIG"]["hosts"] = [  # type: ignore[index]
    {"address": REDIS_URL, "socket_timeout": None}
]

# Transcripts (agentide/transcripts): the reviewer's view, export/import, search.
# Characters of one command's output the transcript page shows (the rest: "full output").
TRANSCRIPT_OUTPUT_CHARS = env_int("AGENTIDE_TRANSCRIPT_OUTPUT_CHARS", 64 * 1024, minimum=1024)
TRANSCRIPT_MAX_COMMENT_CHARS = env_int("AGENTIDE_TRANSCRIPT_COMMENT_CHARS", 10_000, minimum=100)
# Limits of one imported JSONL transcript.
TRANSCRIPT_IMPORT_MAX_BYTES = env_int(
    "AGENTIDE_TRANSCRIPT_IMPORT_MAX_BYTES", 50 * 1024 * 1024, minimum=1024
)
TRANSCRIPT_IMPORT_MAX_EVENTS = env_int("AGENTIDE_TRANSCRIPT_IMPORT_MAX_EVENTS", 100_000, minimum=10)
# PostgreSQL text search configuration for transcript search (simple, english, german...).
TRANSCRIPT_SEARCH_CONFIG = env_str("AGENTIDE_TRANSCRIPT_SEARCH_CONFIG", "simple")
# Searches index what is new themselves; beat keeps the index warm in between.
CELERY_BEAT_SCHEDULE["transcripts-refresh-search-index"] = {
    "task": "agentide.transcripts.tasks.refresh_search_index",
    "schedule": env_float("AGENTIDE_TRANSCRIPT_INDEX_EVERY_S", 60.0, minimum=1.0),
}

# Quotas (agentide/quotas): the limits a team's quota starts with (blank = unlimited; an
# admin changes them per team in Django admin), and how often running sandboxes are charged.
def _quota_default(name: str, convert: type[int] | type[float]) -> int | float | None:
    raw = env_str(name, "")
    if not raw:
        return None
    try:
        value = convert(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number.") from None
    if value < 0:
        raise ImproperlyConfigured(f"{name}={raw!r} must not be negative.")
    return value


AGENTIDE_QUOTA_DEFAULTS = {
    "max_running_sandboxes": _quota_default("AGENTIDE_QUOTA_MAX_RUNNING_SANDBOXES", int),
    "max_sessions": _quota_default("AGENTIDE_QUOTA_MAX_SESSIONS", int),
    "max_sandbox_memory_mb": _quota_default("AGENTIDE_QUOTA_MAX_SANDBOX_MEMORY_MB", int),
    "max_sandbox_cpus": _quota_default("AGENTIDE_QUOTA_MAX_SANDBOX_CPUS", float),
    "max_command_timeout_s": _quota_default("AGENTIDE_QUOTA_MAX_COMMAND_TIMEOUT_S", int),
    "max_workspace_disk_mb": _quota_default("AGENTIDE_QUOTA_MAX_WORKSPACE_DISK_MB", int),
    "sandbox_hours_per_month": _quota_default("AGENTIDE_QUOTA_SANDBOX_HOURS_PER_MONTH", float),
    "tokens_per_month": _quota_default("AGENTIDE_QUOTA_TOKENS_PER_MONTH", int),
    "cost_per_month": _quota_default("AGENTIDE_QUOTA_COST_PER_MONTH", float),
    "max_agent_steps": _quota_default("AGENTIDE_QUOTA_MAX_AGENT_STEPS", int),
}
TEMPLATES[0]["OPTIONS"]["context_processors"].append(  # type: ignore[index]
    "agentide.quotas.context_processors.quota_banners"
)
CELERY_BEAT_SCHEDULE["quotas-charge-running-sandboxes"] = {
    "task": "agentide.quotas.tasks.charge_running_sandboxes",
    "schedule": env_float("AGENTIDE_QUOTA_CHARGE_EVERY_S", 60.0, minimum=5.0),
}

# --- hosted runtime API (/v1/) ----------------------------------------------------------------
# Requests per minute one API key may make (0 = no limit); past it, 429 with Retry-After.
AGENTIDE_API_RATE_PER_MINUTE = env_int("AGENTIDE_API_RATE_PER_MINUTE", 600, minimum=0)
# Containers idle past their expires_after end (their sandbox stops); also checked on use.
CELERY_BEAT_SCHEDULE["api-expire-idle-containers"] = {
    "task": "agentide.api.tasks.expire_idle_containers",
    "schedule": 30.0,
}
