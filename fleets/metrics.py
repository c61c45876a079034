"""Per-fleet autoscaling signals for /metrics (renders/metrics.py yields them): jobs queued and
running, the age of the oldest queued job, hosts by state, hosts behind the active bundle, and
each host's last apply duration."""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import Count, F, Min
from django.db.models.functions import Coalesce
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily, Metric

from books.models import BookPage
from fleets.models import Fleet, FleetWorkflow, Host
from renders.models import ComfyInstance, RenderAttempt


def fleet_metrics() -> Iterator[Metric]:
    queued = GaugeMetricFamily(
        "bookrender_fleet_jobs_queued", "Pages waiting for a workflow the fleet runs", labels=["fleet"]
    )
    running = GaugeMetricFamily(
        "bookrender_fleet_jobs_running", "Attempts running on the fleet's hosts", labels=["fleet"]
    )
    oldest = GaugeMetricFamily(
        "bookrender_fleet_oldest_queued_seconds", "Age of the fleet's oldest waiting page (0: none)", labels=["fleet"]
    )
    hosts = GaugeMetricFamily("bookrender_fleet_hosts", "The fleet's hosts by state", labels=["fleet", "state"])
    behind = GaugeMetricFamily(
        "bookrender_fleet_hosts_behind",
        "Hosts, not offline, without the active bundle",
        labels=["fleet"],
    )
    apply = GaugeMetricFamily(
        "bookrender_fleet_apply_seconds", "How long the host's last successful apply took", labels=["fleet", "host"]
    )
    now = timezone.now()
    for fleet in Fleet.objects.all():
        slugs = FleetWorkflow.objects.filter(fleet=fleet).values("workflow_slug")
        waiting = BookPage.objects.filter(
            status=BookPage.Status.QUEUED, book__workflow_version__workflow__slug__in=slugs
        )
        summary = waiting.aggregate(n=Count("pk"), since=Min(Coalesce("published_at", "created_at")))
        queued.add_metric([fleet.slug], summary["n"])
        since = summary["since"]
        oldest.add_metric([fleet.slug], (now - since).total_seconds() if since else 0.0)
        urls = ComfyInstance.objects.filter(host__fleet=fleet).values("url")
        running.add_metric(
            [fleet.slug],
            RenderAttempt.objects.filter(outcome=RenderAttempt.Outcome.RUNNING, instance_url__in=urls).count(),
        )
        by_state = dict(Host.objects.filter(fleet=fleet).values_list("state").annotate(n=Count("pk")))
        for state in Host.State.values:
            hosts.add_metric([fleet.slug, state], by_state.get(state, 0))
        live = Host.objects.filter(fleet=fleet).exclude(state=Host.State.OFFLINE)
        lagging = live.exclude(applied_bundle_id=F("fleet__active_bundle_id")).count()
        behind.add_metric([fleet.slug], lagging if fleet.active_bundle_id else 0)
        for host in live.filter(last_apply_seconds__isnull=False):
            apply.add_metric([fleet.slug, host.name], host.last_apply_seconds or 0.0)
    yield from (queued, running, oldest, hosts, behind, apply)
