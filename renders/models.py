from __future__ import annotations

from django.db import models
from django.db.models import Q

from books.models import BookPage


class RenderAttempt(models.Model):
    """One submission of one page's workflow to ComfyUI."""

    class Outcome(models.TextChoices):
        RUNNING = "running", "Running"
        SUCCESS = "success", "Success"
        FAILED = "failed", "Failed"
        # Replaced by a newer attempt (a regenerate) before it finished.
        SUPERSEDED = "superseded", "Superseded"

    page = models.ForeignKey(BookPage, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField()
    prompt_id = models.UUIDField(unique=True)
    client_id = models.CharField(max_length=64, blank=True, default="")
    instance_url = models.CharField(max_length=255)
    workflow = models.CharField(max_length=64)
    seed = models.BigIntegerField()
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.RUNNING)
    # Set when the worker claims the page, before anything is sent to ComfyUI.
    created_at = models.DateTimeField(auto_now_add=True)
    # Set once ComfyUI accepted the prompt (POST /prompt answered 200).
    submitted_at = models.DateTimeField(null=True, blank=True)
    # ComfyUI's execution_start and its end (from history), and when bookrender finished the page.
    started_at = models.DateTimeField(null=True, blank=True)
    comfy_finished_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    # The telemetry contract (seed 002): VramBeforeMB, VramAfterMB, HistoryAttempts, ...
    telemetry = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["page", "number"]
        constraints = [
            # One row per attempt: a resumed attempt re-attaches to its row instead of adding one.
            models.UniqueConstraint(fields=["page", "number"], name="attempt_unique_number"),
        ]
        indexes = [
            # Reports and metrics: finished attempts in a time window, by outcome.
            models.Index(fields=["finished_at", "outcome"], name="attempt_finished"),
            # Routing: attempts still running on each instance.
            models.Index(
                fields=["instance_url"],
                condition=Q(outcome="running"),
                name="attempt_running",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.page} attempt {self.number}"


class ComfyInstance(models.Model):
    """One ComfyUI server (one per GPU). Seeded from COMFYUI_URLS, editable in the admin."""

    class State(models.TextChoices):
        UP = "up", "Up"
        DOWN = "down", "Down"

    class Source(models.TextChoices):
        SETTINGS = "settings", "COMFYUI_URLS"
        ADMIN = "admin", "Added in the admin"
        FLEET = "fleet", "Registered by a fleet host"

    url = models.CharField(max_length=255, unique=True)
    # Rows from COMFYUI_URLS are retired (disabled, with a reason) once the URL leaves the setting.
    registration_source = models.CharField(max_length=16, choices=Source.choices, default=Source.ADMIN)
    gpu_index = models.PositiveSmallIntegerField(null=True, blank=True)
    # Fleet instances: the host that registered it and when that host last reported it.
    host = models.ForeignKey("fleets.Host", on_delete=models.SET_NULL, null=True, blank=True, related_name="instances")
    last_seen_at = models.DateTimeField(null=True, blank=True)
    # Prompts it may hold at once: 2 = one running and one queued behind it, so ComfyUI starts the
    # next page the moment the last one ends.
    slots = models.PositiveSmallIntegerField(default=2)
    enabled = models.BooleanField(default=True)

    state = models.CharField(max_length=8, choices=State.choices, default=State.UP)
    consecutive_failures = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    down_since = models.DateTimeField(null=True, blank=True)
    last_probe_at = models.DateTimeField(null=True, blank=True)
    next_probe_at = models.DateTimeField(null=True, blank=True)
    probe_backoff_sec = models.FloatField(default=0)

    # The latest readings, refreshed by the prober; the router and the health server read these.
    queue_remaining = models.IntegerField(null=True, blank=True)
    vram_total_mb = models.IntegerField(null=True, blank=True)
    vram_free_mb = models.IntegerField(null=True, blank=True)
    gpu_utilization_pct = models.IntegerField(null=True, blank=True)
    gpu_temperature_c = models.IntegerField(null=True, blank=True)
    gpu_power_w = models.FloatField(null=True, blank=True)
    reading_source = models.CharField(max_length=16, blank=True, default="")
    readings_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["url"]

    def __str__(self) -> str:
        return self.url


class InstanceSlot(models.Model):
    """A lease on one of an instance's slots, held by the page rendering there. The worker renews
    it with the page's heartbeat; one that expires (its worker died) frees the slot by itself."""

    instance = models.ForeignKey(ComfyInstance, on_delete=models.CASCADE, related_name="leases")
    page = models.OneToOneField(BookPage, on_delete=models.CASCADE, related_name="slot")
    attempt = models.PositiveIntegerField()
    # The claim that holds the slot: only that claim renews or releases it.
    claim = models.UUIDField(null=True, blank=True)
    expires_at = models.DateTimeField()

    class Meta:
        # Routing counts each instance's live leases.
        indexes = [models.Index(fields=["instance", "expires_at"], name="slot_instance_live")]

    def __str__(self) -> str:
        return f"{self.instance} slot for {self.page} attempt {self.attempt}"


class RetiredCount(models.Model):
    """What deleted pages and attempts had added to one /metrics counter series. /metrics adds it
    back, so deleting a book never makes a counter go down (Prometheus reads a decrease as a reset
    and would count the whole total again). Written by renders.metrics.counters_retire."""

    # The series as JSON: ["bookrender_render_attempts", outcome, kind], a histogram bucket, ...
    series = models.CharField(max_length=512, unique=True)
    value = models.FloatField(default=0)

    def __str__(self) -> str:
        return f"{self.series} {self.value:g}"
