"""Prometheus metrics, read from PostgreSQL and Redis at scrape time.

Counting from the database rather than in process memory means every web process reports the
same truth, restarts lose nothing, and a page's history is counted once however many workers
touched it. Names are what ops/monitoring/ (alert rules and the Grafana dashboard) refer to; a
test checks that every name used there is exported here.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Case, Count, DurationField, ExpressionWrapper, F, Model, Q, QuerySet, Sum, Value, When
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from books.models import Book, BookPage
from renders.models import ComfyInstance, RenderAttempt, RetiredCount

# Seconds; a render takes from under a second (the simulator) to minutes (SDXL on a small GPU).
RENDER_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600)
# Seconds from ComfyUI finishing a prompt to the page being Done (target p95 <= 50 ms).
DETECTION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5)


class BookrenderCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from self._pages()
        yield from self._counters()
        yield from self._running()
        yield from self._queue()
        yield from self._instances()
        yield from self._disks()
        from fleets.metrics import fleet_metrics  # fleets depends on renders, not the other way round

        yield from fleet_metrics()

    def _pages(self) -> Iterator[Metric]:
        pages = GaugeMetricFamily("bookrender_pages", "Pages by status", labels=["status"])
        counts = dict(BookPage.objects.values_list("status").annotate(n=Count("pk")))
        for status in BookPage.Status:
            pages.add_metric([status.value], counts.get(status.value, 0))
        yield pages
        flagged = GaugeMetricFamily("bookrender_pages_needing_regeneration", "Pages flagged needs_regeneration")
        flagged.add_metric([], BookPage.objects.filter(needs_regeneration=True).count())
        yield flagged

    def _counters(self) -> Iterator[Metric]:
        totals = counter_series(pages=BookPage.objects.all(), attempts=RenderAttempt.objects.all())
        for row in RetiredCount.objects.all():
            key = tuple(json.loads(row.series))
            totals[key] = totals.get(key, 0.0) + row.value
        retries = CounterMetricFamily(
            "bookrender_page_retries", "Failed attempts that were retried or gave up (sum of retry_count)"
        )
        retries.add_metric([], totals.get(("bookrender_page_retries",), 0.0))
        yield retries
        attempts = CounterMetricFamily(
            "bookrender_render_attempts",
            "Finished render attempts by outcome and error kind",
            labels=["outcome", "kind"],
        )
        for key in sorted(key for key in totals if key[0] == "bookrender_render_attempts"):
            attempts.add_metric([str(label) for label in key[1:]], totals[key])
        yield attempts
        yield _histogram(
            totals,
            "bookrender_render_duration_seconds",
            "ComfyUI execution time of successful attempts",
            ["workflow", "instance"],
            RENDER_BUCKETS,
        )
        yield _histogram(
            totals,
            "bookrender_completion_detection_seconds",
            "From ComfyUI finishing a prompt to the page being Done",
            ["instance"],
            DETECTION_BUCKETS,
        )

    def _running(self) -> Iterator[Metric]:
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
    # With the page files in a bucket, this host's media folder holds nothing worth watching.
    paths = [] if settings.BOOKRENDER_STORAGE == "s3" else [Path(settings.MEDIA_ROOT)]
    if settings.BOOKRENDER_MODEL_DIR:
        paths.append(Path(settings.BOOKRENDER_MODEL_DIR))
    return paths


def path_label(path: Path) -> str:
    # Seed 000: never expose full filesystem paths of models; a role name is enough for alerts.
    return "models" if settings.BOOKRENDER_MODEL_DIR and path == Path(settings.BOOKRENDER_MODEL_DIR) else "media"


Series = tuple[str | float, ...]


def counter_series(*, pages: QuerySet[BookPage], attempts: QuerySet[RenderAttempt]) -> dict[Series, float]:
    """Every counter and histogram series that these pages and attempts add up to, keyed by
    (family, *labels) and, for histograms, (family, *labels, "le", bound) and (family, *labels,
    "sum"). Each is one SQL aggregation: a scrape's cost does not grow with Python lists of every
    attempt ever made, only with the database's scan."""
    series: dict[Series, float] = {("bookrender_page_retries",): float(pages.aggregate(n=Sum("retry_count"))["n"] or 0)}
    finished = attempts.exclude(outcome=RenderAttempt.Outcome.RUNNING)
    for outcome, kind, n in finished.values_list("outcome", "error__kind").annotate(n=Count("pk")).order_by():
        series[("bookrender_render_attempts", outcome, kind or "")] = float(n)
    timed = attempts.filter(
        outcome=RenderAttempt.Outcome.SUCCESS, started_at__isnull=False, comfy_finished_at__isnull=False
    )
    render = ExpressionWrapper(F("comfy_finished_at") - F("started_at"), output_field=DurationField())
    series.update(
        _bucket_series(
            timed,
            ["workflow", "instance_url"],
            "bookrender_render_duration_seconds",
            RENDER_BUCKETS,
            end="comfy_finished_at",
            start="started_at",
            seconds=render,
        )
    )
    # A page finished before ComfyUI's own end time (clocks a few ms apart) counts as 0 s.
    detection = Case(
        When(finished_at__gt=F("comfy_finished_at"), then=F("finished_at") - F("comfy_finished_at")),
        default=Value(timedelta(0)),
        output_field=DurationField(),
    )
    series.update(
        _bucket_series(
            timed.filter(finished_at__isnull=False),
            ["instance_url"],
            "bookrender_completion_detection_seconds",
            DETECTION_BUCKETS,
            end="finished_at",
            start="comfy_finished_at",
            seconds=detection,
        )
    )
    return series


def _bucket_series(
    attempts: QuerySet[RenderAttempt],
    group: list[str],
    family: str,
    bounds: tuple[float, ...],
    *,
    end: str,
    start: str,
    seconds: Any,
) -> dict[Series, float]:
    """Cumulative bucket counts, the count and the sum of (end - start) per group, in one query."""
    buckets = {
        f"le{i}": Count("pk", filter=Q(**{f"{end}__lte": F(start) + timedelta(seconds=bound)}))
        for i, bound in enumerate(bounds)
    }
    series: dict[Series, float] = {}
    for row in attempts.values(*group).annotate(n=Count("pk"), total=Sum(seconds), **buckets).order_by():
        labels = tuple(row[field] for field in group)
        for i, bound in enumerate(bounds):
            series[(family, *labels, "le", bound)] = float(row[f"le{i}"])
        series[(family, *labels, "le", math.inf)] = float(row["n"])
        series[(family, *labels, "sum")] = row["total"].total_seconds() if row["total"] else 0.0
    return series


def _histogram(
    totals: dict[Series, float], family: str, documentation: str, labels: list[str], bounds: tuple[float, ...]
) -> HistogramMetricFamily:
    histogram = HistogramMetricFamily(family, documentation, labels=labels)
    width = len(labels)
    groups = sorted({key[1 : 1 + width] for key in totals if key[0] == family}, key=str)
    for group in groups:
        buckets = [
            ("+Inf" if math.isinf(bound) else str(bound), totals.get((family, *group, "le", bound), 0.0))
            for bound in (*bounds, math.inf)
        ]
        histogram.add_metric([str(label) for label in group], buckets, totals.get((family, *group, "sum"), 0.0))
    return histogram


def counters_retire(*, pages: QuerySet[BookPage], attempts: QuerySet[RenderAttempt]) -> None:
    """Add what these pages and attempts count in /metrics to RetiredCount, before they are deleted,
    in the deleting transaction."""
    for key, value in counter_series(pages=pages, attempts=attempts).items():
        if not value:
            continue
        series = json.dumps(key)
        RetiredCount.objects.get_or_create(series=series)
        RetiredCount.objects.filter(series=series).update(value=F("value") + value)


def _deleted_by(origin: object, model: type[Model]) -> bool:
    return isinstance(origin, model) or (isinstance(origin, QuerySet) and origin.model is model)


def retire_on_delete(sender: type[Model], instance: Model, origin: object = None, **kwargs: Any) -> None:
    """pre_delete: a book retires all its pages and attempts at once; a page or an attempt deleted
    on its own (not as part of a book) retires itself."""
    if isinstance(instance, Book):
        counters_retire(
            pages=BookPage.objects.filter(book=instance), attempts=RenderAttempt.objects.filter(page__book=instance)
        )
    elif isinstance(instance, BookPage) and _deleted_by(origin, BookPage):
        counters_retire(
            pages=BookPage.objects.filter(pk=instance.pk), attempts=RenderAttempt.objects.filter(page=instance)
        )
    elif isinstance(instance, RenderAttempt) and _deleted_by(origin, RenderAttempt):
        counters_retire(pages=BookPage.objects.none(), attempts=RenderAttempt.objects.filter(pk=instance.pk))
