"""Health-based job acceptance (seed 003): a worker takes render work only while one of its
ComfyUI instances answers.

1. At start-up the worker waits, before its consumer starts, until one instance answers
   /system_stats.
2. Then a thread probes them every few seconds; when none answers, the worker stops consuming
   the render queue (a remote-control ``cancel_consumer`` to itself, handled in the consumer's own
   thread), and when one answers again it starts consuming again. Messages wait in Redis
   meanwhile, and the pages they name wait as Pending.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import bootsteps
from django.conf import settings
from django.db import DatabaseError, connection

log = logging.getLogger("bookrender.worker_gate")
CHECK_INTERVAL_SEC = 1.0


def worker_instances() -> list[str]:
    return list(settings.BOOKRENDER_WORKER_INSTANCES or settings.COMFYUI_URLS)


def any_instance_healthy(urls: list[str]) -> bool:
    """Whether one of ``urls`` answers (routing.instance_answers: the same definition as the
    prober's and the client's). Each instance seen answering is marked up at once, so work goes to
    a restarted ComfyUI within a second of it answering, not at the prober's next round."""
    from renders.routing import instance_answers, instance_seen_up  # models: not at import time

    healthy = False
    for url in urls:
        if not instance_answers(url):
            continue
        healthy = True
        try:
            instance_seen_up(url=url)
        except DatabaseError:
            pass  # the prober marks it up too
        finally:
            connection.close()  # this thread's own connection; do not keep it between checks
    return healthy


class HealthGate(bootsteps.StartStopStep):
    """A worker bootstep; the Consumer step is always last, so start() runs before consuming."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, worker: Any) -> None:
        queue = worker.app.conf.task_default_queue
        if queue not in worker.app.amqp.queues.consume_from:
            return  # a maintenance-only worker: it must run, above all while ComfyUI is down
        urls = worker_instances()
        waited = 0.0
        while not any_instance_healthy(urls):
            if waited % 10 < CHECK_INTERVAL_SEC:
                log.warning("waiting for ComfyUI", extra={"event": "worker.waiting", "instances": urls})
            time.sleep(CHECK_INTERVAL_SEC)
            waited += CHECK_INTERVAL_SEC
        self._thread = threading.Thread(target=self._watch, args=(worker, urls), name="health-gate", daemon=True)
        self._thread.start()

    def stop(self, worker: Any) -> None:
        self._stop.set()

    def _watch(self, worker: Any, urls: list[str]) -> None:
        queue = worker.app.conf.task_default_queue
        consuming = True
        while not self._stop.wait(CHECK_INTERVAL_SEC):
            healthy = any_instance_healthy(urls)
            if healthy == consuming:
                continue
            try:
                if healthy:
                    worker.app.control.add_consumer(queue, destination=[worker.hostname])
                    log.warning(
                        "ComfyUI back: taking render work", extra={"event": "worker.resumed", "instances": urls}
                    )
                else:
                    worker.app.control.cancel_consumer(queue, destination=[worker.hostname])
                    log.warning(
                        "no ComfyUI answers: not taking render work",
                        extra={"event": "worker.paused", "instances": urls},
                    )
                consuming = healthy
            except Exception:  # the broker may be down too; try again next round
                log.exception("health gate could not switch consuming")
