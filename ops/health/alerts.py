"""Alerts: a JSON POST to BOOKRENDER_ALERT_WEBHOOK_URL, retried, in a background thread so that a
slow or dead webhook never holds up the check that raised it. Every alert is also a log line,
whether or not a webhook is configured and whether or not it answered."""

from __future__ import annotations

import logging
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any

import requests

from ops.health.logs import OPS_LOGGER

log = logging.getLogger(OPS_LOGGER)

TRIES = 3
BACKOFF_SEC = (1.0, 3.0)  # before the second and third tries
TIMEOUT_SEC = 5.0
# The longest a check waits for delivery after printing its report; then it exits anyway (the
# thread is a daemon) and the log line says the alert may not have gone out.
DEADLINE_SEC = TRIES * TIMEOUT_SEC + sum(BACKOFF_SEC)


def alert_payload(*, title: str, problems: list[dict[str, Any]]) -> dict[str, Any]:
    host = socket.gethostname()
    lines = [f"- {p.get('service')} {p.get('check', '')}: {p.get('message', '')}".rstrip() for p in problems]
    return {
        # "text" is what Slack, Mattermost and most chat webhooks display.
        "text": f"bookrender on {host}: {title}\n" + "\n".join(lines),
        "host": host,
        "title": title,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "problems": problems,
    }


def alert_post(url: str, payload: dict[str, Any], *, tries: int = TRIES) -> bool:
    """POST with retries on network errors, 429 and 5xx. True when the webhook took it."""
    for attempt in range(1, tries + 1):
        retryable = True
        try:
            response = requests.post(url, json=payload, timeout=TIMEOUT_SEC)
        except requests.RequestException as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code < 300:
                log.info("alert sent", extra={"event": "alert.sent", "attempt": attempt, "title": payload["title"]})
                return True
            problem = f"answered {response.status_code}"
            # Any other 4xx refuses this payload: sending it again changes nothing.
            retryable = response.status_code >= 500 or response.status_code == 429
        log.warning("alert not delivered", extra={"event": "alert.retry", "attempt": attempt, "problem": problem})
        if not retryable or attempt == tries:
            break
        time.sleep(BACKOFF_SEC[attempt - 1])
    log.error("alert failed", extra={"event": "alert.failed", "title": payload["title"]})
    return False


def alert_start(*, url: str, title: str, problems: list[dict[str, Any]], dry_run: bool) -> threading.Thread | None:
    """Log the alert and start delivering it. Returns the delivering thread, if any."""
    payload = alert_payload(title=title, problems=problems)
    sending = bool(url) and not dry_run
    log.critical(
        title,
        extra={
            "event": "alert",
            "problems": problems,
            "delivery": "webhook" if sending else ("dry run: not sent" if dry_run else "no webhook configured"),
        },
    )
    if not sending:
        return None
    thread = threading.Thread(target=alert_post, args=(url, payload), name="alert", daemon=True)
    thread.start()
    return thread


def alert_wait(thread: threading.Thread | None) -> None:
    if thread is None:
        return
    thread.join(DEADLINE_SEC)
    if thread.is_alive():
        log.error("alert still not delivered; giving up", extra={"event": "alert.abandoned"})
