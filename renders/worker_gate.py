"""Health-based job acceptance (seed 003): a worker takes render work only while one of its
ComfyUI instances answers (``worker_instances``: configured, or in a pure fleet the registered ones).

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
from typing import Any

from celery import bootsteps
from celery.exceptions import WorkerShutdown
from celery.worker import state as worker_state
from django.conf import settings
from django.db import DatabaseError, connection

log = logging.getLogger("bookrender.worker_gate")
CHECK_INTERVAL_SEC = 1.0


def worker_instances() -> list[str]:
    """BOOKRENDER_WORKER_INSTANCES, else COMFYUI_URLS, else (a pure fleet: every instance comes
    from a GPU host's registration) every enabled instance the database knows, read each time."""
    configured = settings.BOOKRENDER_WORKER_INSTANCES or settings.COMFYUI_URLS
    if configured:
        return list(configured)
    from renders.models import ComfyInstance  # models: not at import time

    try:
        return list(ComfyInstance.objects.filter(enabled=True).order_by("pk").values_list("url", flat=True))
    except DatabaseError:
        return []
    finally:
        connection.close()  # this thread's own connection; do not keep it between checks


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
        waited = 0.0
        while not any_instance_healthy(urls := worker_instances()):
            if waited % 10 < CHECK_INTERVAL_SEC:
                log.warning("waiting for ComfyUI", extra={"event": "worker.waiting", "instances": urls})
            if self._stop.wait(CHECK_INTERVAL_SEC) or worker_state.should_stop is not None:
                # SIGTERM while waiting: Celery's handler only sets should_stop; leave at once.
                raise WorkerShutdown(0)
            waited += CHECK_INTERVAL_SEC
        self._thread = threading.Thread(target=self._watch, args=(worker,), name="health-gate", daemon=True)
        self._thread.start()

    def stop(self, worker: Any) -> None:
        self._stop.set()

    def _watch(self, worker: Any) -> None:
        queue = worker.app.conf.task_default_queue
        consuming = True
        while not self._stop.wait(CHECK_INTERVAL_SEC):
            urls = worker_instances()  # a fleet's hosts come and go
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
