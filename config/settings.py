"""The one settings module. Every value comes from the environment, with defaults that let a fresh
checkout run on SQLite with no configuration. The README's configuration table lists them all."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
import django_stubs_ext
from kombu import Queue

from config.env import env_bool, env_float, env_float_list, env_int, env_list, env_str, error

# Lets admin classes be written ModelAdmin[Book] for mypy, as django-stubs documents.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("BOOKRENDER_VAR_DIR", str(BASE_DIR / "var")))

# --- Django ---------------------------------------------------------------------------------------

DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = env_str("DJANGO_SECRET_KEY", "dev-only-insecure-key-change-me")
if not SECRET_KEY.strip():
    error("DJANGO_SECRET_KEY", SECRET_KEY, "is empty: set 50 or more random characters")
    SECRET_KEY = "dev-only-insecure-key-change-me"  # lets Django start far enough to say so
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])
# A stale tab's button gets a page that says nothing changed and leads back, not a bare 403.
CSRF_FAILURE_VIEW = "books.errorviews.csrf_failure"

# HTTPS, for `manage.py check --deploy`. Off by default so that a fresh checkout works on plain
# http://localhost; the production env file (ops/default/bookrender.env) turns each on.
# TLS ends at the reverse proxy, which must set X-Forwarded-Proto (and strip a client's own).
if env_bool("DJANGO_SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", False)
# Asked over plain HTTP on loopback by the health server and Prometheus, never by a browser.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", False)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "books",
    "renders",
    "workflows",
    "fleets",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves the admin's CSS and JS under gunicorn (collected into STATIC_ROOT by collectstatic).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
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

_database_url = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'bookrender.sqlite3'}")
try:
    # Connections are kept for a minute and checked (one cheap query) before each request or task
    # reuses them, so a PostgreSQL restart costs a reconnect, not an error.
    DATABASES = {"default": dj_database_url.parse(_database_url, conn_max_age=60, conn_health_checks=True)}
except Exception as exc:  # dj_database_url raises several types; all mean "malformed"
    error("DATABASE_URL", _database_url, f"not a database URL ({exc})")
    DATABASES = {"default": dj_database_url.parse(f"sqlite:///{VAR_DIR / 'bookrender.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Workers and the web process write concurrently: take the write lock when a transaction
    # begins (a read that later upgrades fails at once with "database is locked" instead of
    # waiting), wait for it up to 20 s, and let readers work beside the writer (WAL).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        timeout=20, transaction_mode="IMMEDIATE", init_command="PRAGMA journal_mode=WAL;"
    )
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # Tests share the database with real worker processes, so it must be a file, not :memory:.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-bookrender.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "books:list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Collected once per install (ops/install.sh, the Dockerfile), beside the code, which every
# deployment treats as read-only; WhiteNoise serves it.
STATIC_ROOT = BASE_DIR / "staticfiles"
# Uploads are streamed to a temporary file, never held whole in the web process's memory: an asset
# (fleets/) may be gigabytes.
FILE_UPLOAD_HANDLERS = ["django.core.files.uploadhandler.TemporaryFileUploadHandler"]
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env_str("BOOKRENDER_MEDIA_ROOT", str(VAR_DIR / "media")))

# Page files (inputs, renders, versions, thumbnails): the local disk, or an S3-compatible object
# store shared by the web host and the GPU hosts (books/storage.py). Never a public bucket: objects
# are private and browsers get presigned URLs that expire.
BOOKRENDER_STORAGE = env_str("BOOKRENDER_STORAGE", "local")
BOOKRENDER_ASSETS_ROOT = env_str("BOOKRENDER_ASSETS_ROOT", str(VAR_DIR / "objects"))
BOOKRENDER_S3_BUCKET = env_str("BOOKRENDER_S3_BUCKET", "")
BOOKRENDER_S3_ENDPOINT_URL = env_str("BOOKRENDER_S3_ENDPOINT_URL", "")
BOOKRENDER_S3_REGION = env_str("BOOKRENDER_S3_REGION", "us-east-1")
BOOKRENDER_S3_ACCESS_KEY_ID = env_str("BOOKRENDER_S3_ACCESS_KEY_ID", "")
BOOKRENDER_S3_SECRET_ACCESS_KEY = env_str("BOOKRENDER_S3_SECRET_ACCESS_KEY", "")
# Presigned URLs are for one page view: short, so a copied link stops working soon.
BOOKRENDER_S3_URL_EXPIRY_SEC = env_int("BOOKRENDER_S3_URL_EXPIRY_SEC", 300, minimum=1)
if BOOKRENDER_STORAGE not in ("local", "s3"):
    error("BOOKRENDER_STORAGE", BOOKRENDER_STORAGE, "expected local or s3")
if BOOKRENDER_STORAGE == "s3" and not BOOKRENDER_S3_BUCKET:
    error("BOOKRENDER_S3_BUCKET", "", "is empty, but BOOKRENDER_STORAGE=s3 needs a bucket")
if BOOKRENDER_STORAGE != "s3" and BOOKRENDER_S3_BUCKET:
    error("BOOKRENDER_S3_BUCKET", BOOKRENDER_S3_BUCKET, "is set, but BOOKRENDER_STORAGE is not s3: set both or neither")
if bool(BOOKRENDER_S3_ACCESS_KEY_ID) != bool(BOOKRENDER_S3_SECRET_ACCESS_KEY):
    error("BOOKRENDER_S3_ACCESS_KEY_ID", "", "and BOOKRENDER_S3_SECRET_ACCESS_KEY go together: set both or neither")
if BOOKRENDER_S3_ENDPOINT_URL and urlsplit(BOOKRENDER_S3_ENDPOINT_URL).scheme not in ("http", "https"):
    error("BOOKRENDER_S3_ENDPOINT_URL", BOOKRENDER_S3_ENDPOINT_URL, "expected an http(s) URL")
# The bucket, as both S3 storages (page files, fleet assets) reach it.
_S3_OPTIONS: dict[str, object] = {
    "bucket_name": BOOKRENDER_S3_BUCKET,
    "endpoint_url": BOOKRENDER_S3_ENDPOINT_URL or None,
    "region_name": BOOKRENDER_S3_REGION,
    # Empty: boto3 finds credentials itself (instance role, AWS_* variables, ~/.aws).
    "access_key": BOOKRENDER_S3_ACCESS_KEY_ID or None,
    "secret_key": BOOKRENDER_S3_SECRET_ACCESS_KEY or None,
    "default_acl": None,
    "querystring_auth": True,
    "signature_version": "s3v4",
    # Path-style addressing works with every S3-compatible server (MinIO, moto, Ceph).
    "addressing_style": "path" if BOOKRENDER_S3_ENDPOINT_URL else None,
    # Names never collide: page files carry their claim or content, assets are content addresses
    # (ObjectStorage also refuses to overwrite).
    "file_overwrite": True,
}
_DEFAULT_STORAGE: dict[str, object] = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
if BOOKRENDER_STORAGE == "s3":
    _DEFAULT_STORAGE = {
        "BACKEND": "books.storage.ObjectStorage",
        "OPTIONS": {**_S3_OPTIONS, "querystring_expire": BOOKRENDER_S3_URL_EXPIRY_SEC},
    }
STORAGES = {
    "default": _DEFAULT_STORAGE,
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# Input images a page may carry (img2img, a sketch to colour in): checked by decoding them.
BOOKRENDER_INPUT_MAX_MB = env_int("BOOKRENDER_INPUT_MAX_MB", 10, minimum=1)
BOOKRENDER_INPUT_MAX_PIXELS = env_int("BOOKRENDER_INPUT_MAX_PIXELS", 16_777_216, minimum=1)

# --- Fleets: assets, bundles, hosts (fleets/) -----------------------------------------------------

# Assets (assets/<kind>/<sha256>) and bundle manifests (bundles/<id>/manifest.json): the folder
# BOOKRENDER_ASSETS_ROOT, or the same bucket as the page files when BOOKRENDER_STORAGE=s3.
if BOOKRENDER_STORAGE == "s3":
    STORAGES["assets"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        # Hosts download through presigned URLs this long-lived (an apply of a large bundle).
        "OPTIONS": {**_S3_OPTIONS, "querystring_expire": 6 * 3600},
    }
else:
    STORAGES["assets"] = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": BOOKRENDER_ASSETS_ROOT},
    }
# Signed host requests (registration, heartbeats) older or newer than this are refused.
BOOKRENDER_FLEET_CLOCK_SKEW_SEC = env_int("BOOKRENDER_FLEET_CLOCK_SKEW_SEC", 300, minimum=1)
# A host silent this long is stale (gets no new work); this long, offline (its work resumes elsewhere).
# A host's heartbeat is its asset sync, which comfyui-asset-sync.timer runs every 2 minutes (give or
# take 10 s): stale only after more than two missed runs, or every healthy host would be stale, and
# get no work, for half of each interval.
BOOKRENDER_FLEET_HOST_STALE_SEC = env_float("BOOKRENDER_FLEET_HOST_STALE_SEC", 300, minimum=1)
BOOKRENDER_FLEET_HOST_OFFLINE_SEC = env_float("BOOKRENDER_FLEET_HOST_OFFLINE_SEC", 600, minimum=1)

# --- Redis and Celery -----------------------------------------------------------------------------

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
if urlsplit(REDIS_URL).scheme not in ("redis", "rediss", "unix"):
    error("REDIS_URL", REDIS_URL, "expected a redis://, rediss:// or unix:// URL")

# Shared by every web process: the regenerate rate limit counts here.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "bookrender-cache",
    }
}

# --- ComfyUI and the render pipeline --------------------------------------------------------------

COMFYUI_URLS = env_list("COMFYUI_URLS", ["http://127.0.0.1:8188"])
for _url in COMFYUI_URLS:
    _parts = urlsplit(_url)
    if _parts.scheme not in ("http", "https") or not _parts.netloc:
        error("COMFYUI_URLS", ",".join(COMFYUI_URLS), f"{_url!r} is not an http(s) base URL")
# Empty (COMFYUI_URLS=): a pure fleet, whose instances all come from GPU hosts' registrations.
COMFYUI_URLS = [_url.rstrip("/") for _url in COMFYUI_URLS]

# Retries after the first attempt; a page gets COMFY_MAX_RETRIES + 1 attempts before Needs attention.
COMFY_MAX_RETRIES = env_int("COMFY_MAX_RETRIES", 3, minimum=0)
# Seconds to wait before retry 1, 2, 3, ...; the last value repeats. ±10% jitter is added.
COMFY_RETRY_BACKOFF_SEC = env_float_list("COMFY_RETRY_BACKOFF_SEC", [15, 45, 90])
COMFY_ALLOW_PARALLEL_PAGES = env_bool("COMFY_ALLOW_PARALLEL_PAGES", True)
# Fair scheduling: at most this many of one owner's pages are rendering or have a due message in
# the queue; the rest wait in the database and are published as those finish (renders.services
# pages_publish_fair). 0: twice the slots of the enabled instances (at least 4).
BOOKRENDER_OWNER_WINDOW = env_int("BOOKRENDER_OWNER_WINDOW", 0, minimum=0)
# A render that has not finished after this long is cancelled on ComfyUI and retried.
COMFY_RENDER_TIMEOUT_SEC = env_float("COMFY_RENDER_TIMEOUT_SEC", 600, minimum=1)
# Below this much free VRAM the worker frees memory and waits instead of submitting (seed 002's
# critical threshold is 1000 MB).
COMFY_MIN_VRAM_FREE_MB = env_int("COMFY_MIN_VRAM_FREE_MB", 1000, minimum=0)
# Every HTTP call to ComfyUI has an explicit timeout; ComfyUI answers in milliseconds when healthy.
COMFY_HTTP_TIMEOUT_SEC = env_float("COMFY_HTTP_TIMEOUT_SEC", 10, minimum=0.1)
# While the WebSocket is quiet, /history is polled this often as a fallback (API.md §11.3).
COMFY_POLL_INTERVAL_SEC = env_float("COMFY_POLL_INTERVAL_SEC", 2, minimum=0.05)
# How long a rendering page's lease lasts without a heartbeat before the sweeper resumes it.
COMFY_LEASE_SEC = env_float("COMFY_LEASE_SEC", 8, minimum=1)
# How long a page may wait for free VRAM (without using a retry) before it needs attention.
COMFY_VRAM_WAIT_MAX_SEC = env_float("COMFY_VRAM_WAIT_MAX_SEC", 300, minimum=1)
# Successful renders kept per page (the chosen one is always kept, whatever this says).
BOOKRENDER_PAGE_VERSIONS_KEPT = env_int("BOOKRENDER_PAGE_VERSIONS_KEPT", 10, minimum=1)
# The most a worker reads from /view for one image; a larger answer is a protocol error.
COMFY_MAX_IMAGE_MB = env_int("COMFY_MAX_IMAGE_MB", 128, minimum=1)
# Retired (workflows live in the database): read only so that renders.E004 can say what to do.
BOOKRENDER_WORKFLOWS_DIR = env_str("BOOKRENDER_WORKFLOWS_DIR", "")
# Where ComfyUI's models live, for the disk-space metric and alert (empty: not watched).
BOOKRENDER_MODEL_DIR = env_str("BOOKRENDER_MODEL_DIR", "")
# /metrics answers requests bearing this token; without one, only loopback and private addresses.
BOOKRENDER_METRICS_TOKEN = env_str("BOOKRENDER_METRICS_TOKEN", "")
# The instances a worker serves (it takes render work only while one answers); default: all.
BOOKRENDER_WORKER_INSTANCES = [u.rstrip("/") for u in env_list("BOOKRENDER_WORKER_INSTANCES", [])]

# New books a user may create an hour (a book is up to 500 renders); 0: no limit (the load test).
BOOKRENDER_NEW_BOOKS_PER_HOUR = env_int("BOOKRENDER_NEW_BOOKS_PER_HOUR", 20, minimum=0)

# --- The dev stack (ops/devstack.py) and CI -------------------------------------------------------

# 0: not run on this machine (the health server then reports it not_configured).
BOOKRENDER_WEB_PORT = env_int("BOOKRENDER_WEB_PORT", 8000, minimum=0)
BOOKRENDER_FLOWER_PORT = env_int("BOOKRENDER_FLOWER_PORT", 5555, minimum=0)
# The machine health server (ops/healthserver.py).
BOOKRENDER_HEALTH_PORT = env_int("BOOKRENDER_HEALTH_PORT", 9090, minimum=1)
# For this long after a process appears, a failing probe reads "starting", not "unhealthy".
BOOKRENDER_HEALTH_GRACE_SEC = env_float("BOOKRENDER_HEALTH_GRACE_SEC", 30, minimum=0)
# With a token, every request to the health server needs "Authorization: Bearer <token>".
BOOKRENDER_HEALTH_TOKEN = env_str("BOOKRENDER_HEALTH_TOKEN", "")
# Host names the health server answers to besides localhost, 127.0.0.1 and [::1] (DNS rebinding).
BOOKRENDER_HEALTH_ALLOWED_HOSTS = env_list("BOOKRENDER_HEALTH_ALLOWED_HOSTS", [])
# ComfyUI's own folder on this machine: a local instance without main.py there is not_installed.
BOOKRENDER_COMFYUI_DIR = env_str("BOOKRENDER_COMFYUI_DIR", "")
# The ComfyUI installer's home (python -m ops.comfyui): installs/, current, and the record
# (install.json) that tells the health server whether ComfyUI is installed here.
BOOKRENDER_COMFYUI_HOME = env_str("BOOKRENDER_COMFYUI_HOME", "")
# make run: "sim" runs the simulator; "installed" runs BOOKRENDER_COMFYUI_HOME's current install on CPU.
BOOKRENDER_DEV_COMFYUI = env_str("BOOKRENDER_DEV_COMFYUI", "sim")
if BOOKRENDER_DEV_COMFYUI not in ("sim", "installed"):
    error("BOOKRENDER_DEV_COMFYUI", BOOKRENDER_DEV_COMFYUI, "expected sim or installed")
BOOKRENDER_LOG_DIR = env_str("BOOKRENDER_LOG_DIR", str(VAR_DIR / "logs"))
# Set by .ci/run on machines with PostgreSQL: start-up fails (renders.E005) if another database is used.
BOOKRENDER_REQUIRE_POSTGRES = env_bool("BOOKRENDER_REQUIRE_POSTGRES", False)
# Set by .ci/run: the browser tests fail, instead of skipping, when Chromium is missing.
BOOKRENDER_REQUIRE_BROWSER = env_bool("BOOKRENDER_REQUIRE_BROWSER", False)

# The real-ComfyUI tests: a ComfyUI git source (URL, path or bundle) and ref for the installer,
# and the cache the install is kept in between runs. Set by .ci/run.
BOOKRENDER_TEST_COMFYUI_SOURCE = env_str("BOOKRENDER_TEST_COMFYUI_SOURCE", "")
BOOKRENDER_TEST_COMFYUI_REF = env_str("BOOKRENDER_TEST_COMFYUI_REF", "v0.3.64")
BOOKRENDER_TEST_COMFYUI_CACHE = env_str("BOOKRENDER_TEST_COMFYUI_CACHE", "~/.cache/bookrender/comfyui")
# Set by .ci/run: the real-ComfyUI tests fail, instead of skipping, without a source.
BOOKRENDER_REQUIRE_COMFYUI = env_bool("BOOKRENDER_REQUIRE_COMFYUI", False)

# --- Celery (loaded by config/celery.py with namespace="CELERY") ---------------------------------

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
# kombu's Redis transport with one redis-py client per channel (config/broker.py), for redis://
# brokers; any other URL keeps the transport its scheme names.
CELERY_BROKER_TRANSPORT = "config.broker:Transport" if CELERY_BROKER_URL.startswith("redis://") else None
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
# Long tasks (see the Celery docs on acks_late and the Redis visibility timeout): a message is
# acknowledged only after the task ends, one at a time per process, and requeued if its process dies.
CELERY_TASK_ACKS_LATE = env_bool("CELERY_TASK_ACKS_LATE", True)
CELERY_TASK_REJECT_ON_WORKER_LOST = env_bool("CELERY_TASK_REJECT_ON_WORKER_LOST", True)
CELERY_WORKER_PREFETCH_MULTIPLIER = env_int("CELERY_WORKER_PREFETCH_MULTIPLIER", 1, minimum=1)
# One process per ComfyUI slot (2 per instance): each holds its page for the whole render, and a
# process more than there are slots would only find none free and put its page back.
CELERY_WORKER_CONCURRENCY = env_int("CELERY_WORKER_CONCURRENCY", 2 * max(1, len(COMFYUI_URLS)), minimum=1)
# The soft limit raises inside the task so it can record the failure; the hard limit kills it.
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", int(COMFY_RENDER_TIMEOUT_SEC) + 120, minimum=1)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", CELERY_TASK_SOFT_TIME_LIMIT + 60, minimum=1)
# Must outlast the hard time limit, or Redis redelivers a message whose task is still running.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", max(3600, CELERY_TASK_TIME_LIMIT * 2), minimum=1),
}
# Workers log through Django's LOGGING (JSON lines on stdout) instead of Celery's own format.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Celery's Django fixup otherwise closes the database connection after every task, and a fresh
# PostgreSQL connection per page costs both sides several milliseconds of CPU. It closes them every
# this many tasks instead; config/celery.py applies CONN_MAX_AGE and the health check per task.
CELERY_DB_REUSE_MAX = 1000
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
# Render work goes to "celery", which a worker stops consuming while its ComfyUI is down (see
# renders/worker_gate.py); the sweeper and the prober go to "maintenance", which never pauses,
# or nobody would notice the instance come back.
CELERY_TASK_QUEUES = [Queue("celery"), Queue("maintenance")]
CELERY_TASK_ROUTES = {
    "renders.tasks.sweep": {"queue": "maintenance"},
    "renders.tasks.probe_instances": {"queue": "maintenance"},
    # Emails when a book settles: never behind the render work, nor held up while ComfyUI is down.
    "books.tasks.notify_book": {"queue": "maintenance"},
    "books.tasks.send_webhook": {"queue": "maintenance"},
}
# The maintenance tasks run every second or so: no task events for them, so Flower lists the render
# tasks people ask about (see also config/celery.py, which stops beat's task-sent events).
CELERY_TASK_ANNOTATIONS = {
    "renders.tasks.sweep": {"send_events": False},
    "renders.tasks.probe_instances": {"send_events": False},
}
CELERY_BEAT_SCHEDULE = {
    "sweep-pages": {
        "task": "renders.tasks.sweep",
        "schedule": env_float("BOOKRENDER_SWEEP_INTERVAL_SEC", 3, minimum=0.5),
        # Stale runs are dropped, not piled up while no worker is there to take them.
        "options": {"expires": 10},
    },
    # Each instance is probed when due (every 5 s while up, backing off while down).
    "probe-instances": {"task": "renders.tasks.probe_instances", "schedule": 1.0, "options": {"expires": 10}},
}

# --- Notifications (books/notifications.py) ---------------------------------------------------------
# When a book finishes or needs attention its owner gets one email. The console backend prints it to
# the maintenance worker's log; set BOOKRENDER_EMAIL_BACKEND=django.core.mail.backends.smtp.EmailBackend
# and the host for real mail.
EMAIL_BACKEND = env_str("BOOKRENDER_EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env_str("BOOKRENDER_EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("BOOKRENDER_EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("BOOKRENDER_EMAIL_USER", "")
EMAIL_HOST_PASSWORD = env_str("BOOKRENDER_EMAIL_PASSWORD", "")
EMAIL_USE_TLS = env_bool("BOOKRENDER_EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = env_str("BOOKRENDER_FROM_EMAIL", "bookrender@localhost")
# The address people reach the site at, for the links in emails.
BOOKRENDER_SITE_URL = env_str("BOOKRENDER_SITE_URL", "http://127.0.0.1:8000")
# Users' webhooks may point at loopback and private addresses only when this is on (a webhook is a
# request the server makes for a user: left open, it reaches whatever the server can reach).
BOOKRENDER_WEBHOOK_ALLOW_PRIVATE = env_bool("BOOKRENDER_WEBHOOK_ALLOW_PRIVATE", False)

# --- Health checks and auto-repair (ops/health, ops/repair) --------------------------------------
# Read where they are used; registered here so the env file may set them (renders.E002) and a
# malformed one stops start-up like any other setting (renders.E001).
from ops.health.thresholds import alert_webhook_url, repair_policy_from_env, thresholds_from_env  # noqa: E402

BOOKRENDER_HEALTH_THRESHOLDS = thresholds_from_env()
BOOKRENDER_REPAIR_POLICY = repair_policy_from_env()
BOOKRENDER_ALERT_WEBHOOK_URL = alert_webhook_url()

# --- Logging --------------------------------------------------------------------------------------

LOG_LEVEL = env_str("BOOKRENDER_LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
    error("BOOKRENDER_LOG_LEVEL", LOG_LEVEL, "expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    LOG_LEVEL = "INFO"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "config.logging.JsonFormatter"}},
    "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "json"}},
    "root": {"handlers": ["stdout"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "urllib3": {"level": "WARNING"},
        "websocket": {"level": "WARNING"},
        "matplotlib": {"level": "WARNING"},
        # Beat logs "Sending due task" at INFO for each maintenance run, one a second: about 80 MB
        # a day. Its warnings and errors still show.
        "celery.beat": {"level": "WARNING"},
    },
}
