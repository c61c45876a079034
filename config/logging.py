"""JSON-lines log records for journald and log shippers: one object per line, with the render
context (book, page, attempt, instance, event) that callers pass through ``extra=``."""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from datetime import UTC, datetime
from urllib.parse import urlsplit

# Seed 000: never log secrets or the full filesystem paths of models. Credentials in URLs
# (redis://:password@host, https://token@host) become ***; so do token-like query parameters and
# bearer tokens, and every secret this process was configured with wherever it appears: a failed
# webhook's error repeats its URL's path ("Max retries exceeded with url: /services/T0/B0/XXXX"),
# which is its secret. A model's path keeps only its folder kind and file name.
_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@'\"]+@", re.IGNORECASE)
_TOKEN_PARAMS = re.compile(
    r"\b((?:access_)?token|key|secret|password|passwd|sig|signature|api_key|apikey)=[^&\s'\"]+", re.IGNORECASE
)
_BEARER = re.compile(r"\b(Bearer|Basic|Token)\s+[A-Za-z0-9._~+/=-]{8,}")
_MODEL_PATH = re.compile(
    r"(?:/[^\s/'\"]+)+/((?:models|checkpoints|loras|vae|unet|clip|controlnet|upscale_models|embeddings)/[^\s'\"]+)"
)
# Environment variables whose whole value is a secret, and URLs whose password or path is one.
SECRET_VARIABLES = ("DJANGO_SECRET_KEY", "BOOKRENDER_METRICS_TOKEN", "BOOKRENDER_HEALTH_TOKEN")
SECRET_URL_VARIABLES = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "BOOKRENDER_ALERT_WEBHOOK_URL")


@functools.lru_cache(maxsize=8)
def _known_secrets(environment: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    found: list[str] = []
    for name, value in environment:
        if name in SECRET_VARIABLES or name == "FLOWER_BASIC_AUTH":
            found.append(value.partition(":")[2] if name == "FLOWER_BASIC_AUTH" else value)
            continue
        parts = urlsplit(value)
        found.append(parts.password or "")
        if name == "BOOKRENDER_ALERT_WEBHOOK_URL":
            # The whole path and query: webhook services put their secret there.
            found.append(value.split(parts.netloc, 1)[-1] if parts.netloc else value)
    # Longest first, so that a secret containing another is replaced whole; short values (an
    # empty password, "/") would redact everything and protect nothing.
    return tuple(sorted({secret for secret in found if len(secret) >= 6}, key=len, reverse=True))


def redact(text: str) -> str:
    """The text with credentials, tokens and this process's configured secrets replaced by ***."""
    environment = tuple(
        (name, os.environ[name])
        for name in (*SECRET_VARIABLES, *SECRET_URL_VARIABLES, "FLOWER_BASIC_AUTH")
        if os.environ.get(name)
    )
    for secret in _known_secrets(environment):
        text = text.replace(secret, "***")
    text = _CREDENTIALS.sub(r"\1***@", text)
    text = _TOKEN_PARAMS.sub(r"\1=***", text)
    text = _BEARER.sub(r"\1 ***", text)
    return _MODEL_PATH.sub(r"…/\1", text)


# Attributes every LogRecord has; anything else was passed by the caller through ``extra``.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str))
