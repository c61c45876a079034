"""Render attempts in the admin: what support reads to see why a page failed without the logs."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from books.models import BookPage
from renders.models import ComfyInstance, RenderAttempt

Outcome = RenderAttempt.Outcome
# Outcomes drawn with the page badges' colours (templates/books/_components_css.html).
_OUTCOME_BADGE = {
    Outcome.RUNNING: "rendering",
    Outcome.SUCCESS: "done",
    Outcome.FAILED: "failed",
    Outcome.SUPERSEDED: "queued",
}


def pretty_json(value: Any) -> SafeString:
    if value in (None, {}, []):
        return format_html('<span class="quiet">{}</span>', "none")
    return format_html('<pre class="json">{}</pre>', json.dumps(value, indent=2, sort_keys=True))


def _seconds(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "-"
    return f"{(end - start).total_seconds():.1f} s"


class RenderAttemptDisplay:
    """Read-only columns shared by the attempts list and the attempts inline on a page."""

    @admin.display(description="Outcome", ordering="outcome")
    def outcome_badge(self, attempt: RenderAttempt) -> SafeString:
        return format_html(
            '<span class="badge badge-{}">{}</span>',
            _OUTCOME_BADGE.get(Outcome(attempt.outcome), "queued"),
            attempt.get_outcome_display(),
        )

    @admin.display(description="Timing")
    def timing(self, attempt: RenderAttempt) -> SafeString:
        rows = [
            (attempt.created_at.strftime("%d %b %H:%M:%S") if attempt.created_at else "-", "claimed"),
            (_seconds(attempt.created_at, attempt.submitted_at), "to submit"),
            (_seconds(attempt.started_at, attempt.comfy_finished_at), "on ComfyUI"),
            (_seconds(attempt.created_at, attempt.finished_at), "in all"),
        ]
        return format_html(
            '<div class="timing">{}</div>',
            format_html_join(mark_safe("<br>"), '{}<span class="quiet">{}</span>', rows),
        )

    @admin.display(description="Error")
    def error_pretty(self, attempt: RenderAttempt) -> SafeString:
        """The error's kind and full message in plain sight; the stored record folded below."""
        error = attempt.error
        if not isinstance(error, dict):
            return pretty_json(error)
        return format_html(
            '<div class="attempt-error"><strong>{}</strong>: {}'
            "<details><summary>Stored record</summary>{}</details></div>",
            error.get("kind", "error"),
            error.get("message", ""),
            pretty_json(error),
        )

    @admin.display(description="Telemetry")
    def telemetry_pretty(self, attempt: RenderAttempt) -> SafeString:
        if not attempt.telemetry:
            return pretty_json(None)
        return format_html(
            "<details><summary>{} fields</summary>{}</details>",
            len(attempt.telemetry),
            pretty_json(attempt.telemetry),
        )


class RenderAttemptInline(RenderAttemptDisplay, admin.TabularInline[RenderAttempt, BookPage]):
    """A page's attempts, newest first, on the page's admin page."""

    model = RenderAttempt
    fields = ("number", "outcome_badge", "instance_url", "prompt_id", "timing", "error_pretty", "telemetry_pretty")
    readonly_fields = fields
    ordering = ("-number",)
    extra = 0
    can_delete = False
    show_change_link = True
    verbose_name_plural = "Render attempts"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(RenderAttempt)
class RenderAttemptAdmin(RenderAttemptDisplay, admin.ModelAdmin[RenderAttempt]):
    list_display = ("__str__", "outcome_badge", "instance_url", "workflow", "submitted_at", "duration", "error_kind")
    list_filter = ("outcome", "instance_url", "workflow")
    search_fields = ("=prompt_id", "page__book__title")
    list_select_related = ("page__book",)
    date_hierarchy = "created_at"
    fieldsets = (
        (None, {"fields": ("page_link", "number", "outcome_badge", "workflow", "seed")}),
        ("ComfyUI", {"fields": ("instance_url", "prompt_id", "client_id")}),
        (
            "Timing",
            {"fields": ("created_at", "submitted_at", "started_at", "comfy_finished_at", "finished_at", "timing")},
        ),
        ("What happened", {"fields": ("error_pretty", "telemetry_pretty")}),
    )
    readonly_fields = (
        "page_link",
        "number",
        "outcome_badge",
        "workflow",
        "seed",
        "instance_url",
        "prompt_id",
        "client_id",
        "created_at",
        "submitted_at",
        "started_at",
        "comfy_finished_at",
        "finished_at",
        "timing",
        "error_pretty",
        "telemetry_pretty",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # attempts are records of what the pipeline did

    @admin.display(description="Page")
    def page_link(self, attempt: RenderAttempt) -> SafeString:
        url = reverse("admin:books_bookpage_change", args=[attempt.page_id])
        return format_html('<a href="{}">{}</a>', url, attempt.page)

    @admin.display(description="Duration")
    def duration(self, attempt: RenderAttempt) -> str:
        return _seconds(attempt.created_at, attempt.finished_at)

    @admin.display(description="Error")
    def error_kind(self, attempt: RenderAttempt) -> str:
        return str(attempt.error.get("kind", "")) if isinstance(attempt.error, dict) else ""


@admin.register(ComfyInstance)
class ComfyInstanceAdmin(admin.ModelAdmin[ComfyInstance]):
    """ComfyUI instances: seeded from COMFYUI_URLS; support may add one, change its slots or
    disable it (a disabled instance gets no new work; its running prompts finish)."""

    list_display = (
        "url",
        "gpu_index",
        "slots",
        "enabled",
        "state",
        "queue_remaining",
        "vram_free_mb",
        "gpu_temperature_c",
        "last_probe_at",
        "registration_source",
        "host",
        "last_seen_at",
    )
    list_editable = ("slots", "enabled")
    list_filter = ("state", "enabled")
    fields = (
        "url",
        "gpu_index",
        "slots",
        "enabled",
        "state",
        "consecutive_failures",
        "last_error",
        "down_since",
        "last_probe_at",
        "next_probe_at",
        "queue_remaining",
        "vram_total_mb",
        "vram_free_mb",
        "gpu_utilization_pct",
        "gpu_temperature_c",
        "gpu_power_w",
        "reading_source",
        "readings_at",
        "registration_source",
        "host",
        "last_seen_at",
        "applied_bundle",
        "workflows",
    )
    readonly_fields = fields[4:]

    @admin.display(description="applied bundle")
    def applied_bundle(self, instance: ComfyInstance) -> str:
        bundle = instance.host.applied_bundle if instance.host else None
        return str(bundle) if bundle else "-"

    @admin.display(description="workflows")
    def workflows(self, instance: ComfyInstance) -> str:
        if instance.host is None:
            return "all (not in a fleet)"
        slugs = instance.host.fleet.workflows.values_list("workflow_slug", flat=True)
        return ", ".join(slugs) or "none assigned"
