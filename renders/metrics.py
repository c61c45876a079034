"""Prometheus metrics, read from PostgreSQL and Redis at scrape time.

Counting from the database rather than in process memory means every web process reports the
same truth, restarts lose nothing, and a page's history is counted once however many workers
touched it. Names are what ops/monitoring/ (alert rules and the Grafana dashboard) refer to; a
test checks that every name used there is exported here.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings
from django.db.models import Count, Sum
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from books.models import BookPage
from renders.models import ComfyInstance, RenderAttempt

# Seconds; a render takes from under a second (the simulator) to minutes (SDXL on a small GPU).
RENDER_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600)
# Seconds from ComfyUI finishing a prompt to the page being Done (target p95 <= 50 ms).
DETECTION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5)


class BookrenderCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from self._pages()
        yield from self._attempts()
        yield from self._histograms()
        yield from self._queue()
        yield from self._instances()
        yield from self._disks()

    def _pages(self) -> Iterator[Metric]:
        pages = GaugeMetricFamily("bookrender_pages", "Pages by status", labels=["status"])
        counts = dict(BookPage.objects.values_list("status").annotate(n=Count("pk")))
        for status in BookPage.Status:
            pages.add_metric([status.value], counts.get(status.value, 0))
        yield pages
        retries = CounterMetricFamily(
            "bookrender_page_retries", "Failed attempts that were retried or gave up (sum of retry_count)"
        )
        retries.add_metric([], BookPage.objects.aggregate(n=Sum("retry_count"))["n"] or 0)
        yield retries
        flagged = GaugeMetricFamily("bookrender_pages_needing_regeneration", "Pages flagged needs_regeneration")
        flagged.add_metric([], BookPage.objects.filter(needs_regeneration=True).count())
        yield flagged

    def _attempts(self) -> Iterator[Metric]:
        attempts = CounterMetricFamily(
            "bookrender_render_attempts",
            "Finished render attempts by outcome and error kind",
            labels=["outcome", "kind"],
        )
        rows = (
            RenderAttempt.objects.exclude(outcome=RenderAttempt.Outcome.RUNNING)
            .values_list("outcome", "error__kind")
            .annotate(n=Count("pk"))
        )
        for outcome, kind, n in rows:
            attempts.add_metric([outcome, kind or ""], n)
        yield attempts
        running = GaugeMetricFamily(
            "bookrender_render_attempts_running", "Attempts submitted and not finished", labels=["instance"]
        )
        for url, n in (
            RenderAttempt.objects.filter(outcome=RenderAttempt.Outcome.RUNNING)
            .values_list("instance_url")
            .annotate(n=Count("pk"))
        ):
            running.add_metric([url], n)
        yield running

    def _histograms(self) -> Iterator[Metric]:
        rows = RenderAttempt.objects.filter(
            outcome=RenderAttempt.Outcome.SUCCESS, started_at__isnull=False, comfy_finished_at__isnull=False
        ).values_list("workflow", "instance_url", "started_at", "comfy_finished_at", "finished_at")
        render: dict[tuple[str, str], list[float]] = {}
        detection: dict[str, list[float]] = {}
        for workflow, instance, started, comfy_finished, finished in rows.iterator():
            if started is None or comfy_finished is None:
                continue  # excluded by the query; mypy cannot know
            render.setdefault((workflow, instance), []).append((comfy_finished - started).total_seconds())
            if finished is not None:
                detection.setdefault(instance, []).append(max(0.0, (finished - comfy_finished).total_seconds()))
        family = HistogramMetricFamily(
            "bookrender_render_duration_seconds",
            "ComfyUI execution time of successful attempts",
            labels=["workflow", "instance"],
        )
        for (workflow, instance), values in render.items():
            family.add_metric([workflow, instance], *_buckets(values, RENDER_BUCKETS))
        yield family
        family = HistogramMetricFamily(
            "bookrender_completion_detection_seconds",
            "From ComfyUI finishing a prompt to the page being Done",
            labels=["instance"],
        )
        for instance, values in detection.items():
            family.add_metric([instance], *_buckets(values, DETECTION_BUCKETS))
        yield family

    def _queue(self) -> Iterator[Metric]:
        from renders.services import broker_queue_length

        depth = GaugeMetricFamily("bookrender_celery_queue_length", "Messages waiting in Redis", labels=["queue"])
        for queue in ("celery", "maintenance"):
            try:
                depth.add_metric([queue], broker_queue_length(queue))
            except Exception:  # Redis down: the metric is absent, and the instance-down alert fires
                pass
        yield depth

    def _instances(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "bookrender_instance_up", "1 while the ComfyUI instance answers its probe", labels=["instance", "gpu"]
        )
        queue = GaugeMetricFamily(
            "bookrender_instance_queue_length",
            "ComfyUI queue_remaining (pending + running)",
            labels=["instance", "gpu"],
        )
        slots = GaugeMetricFamily("bookrender_instance_slots", "Slots of the instance", labels=["instance", "gpu"])
        vram_free = GaugeMetricFamily(
            "bookrender_gpu_vram_free_mb", "Free GPU memory in MB", labels=["instance", "gpu", "source"]
        )
        vram_total = GaugeMetricFamily(
            "bookrender_gpu_vram_total_mb", "GPU memory in MB", labels=["instance", "gpu", "source"]
        )
        util = GaugeMetricFamily(
            "bookrender_gpu_utilization_percent", "GPU utilisation (NVML)", labels=["instance", "gpu"]
        )
        temp = GaugeMetricFamily(
            "bookrender_gpu_temperature_celsius", "GPU temperature (NVML)", labels=["instance", "gpu"]
        )
        for instance in ComfyInstance.objects.filter(enabled=True):
            labels = [instance.url, "" if instance.gpu_index is None else str(instance.gpu_index)]
            up.add_metric(labels, 1 if instance.state == ComfyInstance.State.UP else 0)
            slots.add_metric(labels, instance.slots)
            if instance.queue_remaining is not None:
                queue.add_metric(labels, instance.queue_remaining)
            if instance.vram_free_mb is not None:
                vram_free.add_metric([*labels, instance.reading_source], instance.vram_free_mb)
            if instance.vram_total_mb is not None:
                vram_total.add_metric([*labels, instance.reading_source], instance.vram_total_mb)
            if instance.gpu_utilization_pct is not None:
                util.add_metric(labels, instance.gpu_utilization_pct)
            if instance.gpu_temperature_c is not None:
                temp.add_metric(labels, instance.gpu_temperature_c)
        yield from (up, queue, slots, vram_free, vram_total, util, temp)

    def _disks(self) -> Iterator[Metric]:
        free = GaugeMetricFamily(
            "bookrender_disk_free_ratio", "Free fraction of the storage holding this path", labels=["path"]
        )
        for path in disk_paths():
            try:
                usage = shutil.disk_usage(path)
            except OSError:
                continue
            free.add_metric([path_label(path)], usage.free / usage.total)
        yield free


def disk_paths() -> list[Path]:
    paths = [Path(settings.MEDIA_ROOT)]
    if settings.BOOKRENDER_MODEL_DIR:
        paths.append(Path(settings.BOOKRENDER_MODEL_DIR))
    return paths


def path_label(path: Path) -> str:
    # Seed 000: never expose full filesystem paths of models; a role name is enough for alerts.
    return "models" if settings.BOOKRENDER_MODEL_DIR and path == Path(settings.BOOKRENDER_MODEL_DIR) else "media"


def _buckets(values: list[float], bounds: tuple[float, ...]) -> tuple[list[tuple[str, float]], float]:
    cumulative = [(str(bound), float(sum(1 for v in values if v <= bound))) for bound in bounds]
    cumulative.append(("+Inf", float(len(values))))
    return cumulative, sum(values)
