"""JSON-lines log records for journald and log shippers: one object per line, with the render
context (book, page, attempt, instance, event) that callers pass through ``extra=``."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

# Seed 000: never log secrets or the full filesystem paths of models. Credentials in URLs
# (redis://:password@host) become ***; a model's path keeps only its folder kind and file name.
_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s:@]*:[^/\s@]+@", re.IGNORECASE)
_MODEL_PATH = re.compile(
    r"(?:/[^\s/'\"]+)+/((?:models|checkpoints|loras|vae|unet|clip|controlnet|upscale_models|embeddings)/[^\s'\"]+)"
)


def redact(text: str) -> str:
    return _MODEL_PATH.sub(r"…/\1", _CREDENTIALS.sub(r"\1***@", text))


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
