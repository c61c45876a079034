from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now


class Book(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="books")
    title = models.CharField(max_length=200)
    # The style chosen, and the workflow version and values it was created with: a new version of
    # the workflow, or a change to the style, never changes a book that exists.
    style = models.ForeignKey("workflows.Style", on_delete=models.PROTECT, related_name="books")
    workflow_version = models.ForeignKey("workflows.WorkflowVersion", on_delete=models.PROTECT, related_name="books")
    # Property name -> value, every property but the primary input (workflows.services.book_values).
    values = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # When the owner was last told the book settled (finished, or needs attention): one notice per
    # settling, claimed with a conditional update (books.notifications).
    notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        # "My books" lists a user's books, newest first.
        indexes = [models.Index(fields=["owner", "-created_at"], name="book_owner_recent")]

    def __str__(self) -> str:
        return self.title


class BookPageQuerySet(models.QuerySet["BookPage"]):
    def update(self, **kwargs: object) -> int:
        """Every change to a page moves its ``updated_at`` (``auto_now`` covers only ``save()``),
        so the status page's live update can send just the cards changed since its last poll."""
        kwargs.setdefault("updated_at", Now())
        return super().update(**kwargs)


class BookPage(models.Model):
    class Status(models.TextChoices):
        # The labels are the badges people see.
        QUEUED = "queued", "Pending"
        RENDERING = "rendering", "Rendering"
        DONE = "done", "Done"
        FAILED = "failed", "Needs attention"
        # Stopped by its owner (or an admin): not rendered, nothing to fix; regenerate restarts it.
        CANCELLED = "cancelled", "Cancelled"

    book = models.ForeignKey(Book, on_delete=models.CASCADE, related_name="pages")
    number = models.PositiveIntegerField()
    # Seeds every attempt's ComfyUI prompt_id (uuid5 of this and the attempt number), so ids are
    # unique across databases and a rebuilt database never re-attaches to an old prompt.
    uid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    prompt = models.TextField()
    negative_prompt = models.TextField(blank=True, default="")
    # The page's own property values, over the book's: {"width": 512, "seed": 7, ...}.
    overrides = models.JSONField(default=dict, blank=True)

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    # Advances on every enqueue (first render, retry, regenerate, admin rerun); never goes back.
    # A Celery message names the attempt it was sent for, and is ignored once it is not current.
    attempt = models.PositiveIntegerField(default=0)
    retry_count = models.PositiveIntegerField(default=0)
    last_attempted_at = models.DateTimeField(null=True, blank=True)
    needs_regeneration = models.BooleanField(default=False)
    # Prompt overrides, ComfyUI prompt ids, instance, seed, who asked for a regenerate and when.
    job_metadata = models.JSONField(default=dict, blank=True)
    # Structured errors, newest last: {attempt, kind, message, node_id, node_type,
    # exception_type, instance, at}.
    image_error = models.JSONField(default=list, blank=True)
    # When a queued page may next be claimed (backoff after a failure, or a deferral).
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # A rendering page's worker renews this while it works; once it lapses the sweeper resumes it.
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # The fencing token of the claim that holds a rendering page. Every change a worker makes after
    # its claim checks it, so a worker whose page was handed to another one changes nothing.
    claim = models.UUIDField(null=True, blank=True, editable=False)
    # When the latest wake-up message for this page was published (the sweeper republishes a page
    # that is overdue and has had no message for a while, whatever else the queue holds).
    published_at = models.DateTimeField(null=True, blank=True)
    # While rendering: ComfyUI's latest progress event, {"value", "max", "node"} (at most one
    # write a second); cleared when the attempt ends.
    progress = models.JSONField(null=True, blank=True)

    # The page's input image (img2img, a sketch to colour in), if any: a storage name under inputs/,
    # named by its content (books/inputs.py). The worker uploads it to ComfyUI for {{INPUT_IMAGE}}.
    input_image = models.FileField(upload_to="inputs/", blank=True, default="", max_length=255)
    # The chosen version's image (by default the newest success); every success is a PageVersion.
    image = models.FileField(upload_to="pages/", blank=True, max_length=255)
    # The attempt whose image is chosen: a stale attempt can never overwrite a newer one.
    image_attempt = models.PositiveIntegerField(null=True, blank=True)
    rendered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Moved by every save and every queryset update (BookPageQuerySet): the live update's cursor.
    updated_at = models.DateTimeField(auto_now=True)

    objects = BookPageQuerySet.as_manager()

    class Meta:
        ordering = ["book", "number"]
        constraints = [
            # Also the index for the status page, which lists one book's pages in order.
            models.UniqueConstraint(fields=["book", "number"], name="page_unique_number"),
            models.CheckConstraint(condition=Q(number__gte=1), name="page_number_positive"),
        ]
        indexes = [
            # The sweeper: queued pages that are due (lost publishes, backoff over, deferrals).
            models.Index(fields=["next_attempt_at"], condition=Q(status="queued"), name="page_queued_due"),
            # The sweeper: rendering pages whose worker stopped renewing its lease.
            models.Index(
                fields=["lease_expires_at"],
                condition=Q(status="rendering"),
                name="page_rendering_lease",
            ),
            # My books and the status page: pages of a book counted by status (progress bars).
            models.Index(fields=["book", "status"], name="page_book_status"),
            # Admin and support: pages flagged for regeneration.
            models.Index(fields=["book"], condition=Q(needs_regeneration=True), name="page_needs_regen"),
        ]

    def __str__(self) -> str:
        return f"{self.book} p.{self.number}"

    @property
    def latest_error(self) -> dict[str, object] | None:
        return self.image_error[-1] if self.image_error else None

    @property
    def image_kind(self) -> str:
        """``image``, ``animated`` or ``video``: how the status page and the gallery show it."""
        from books.storage import media_kind

        return media_kind(str(self.image.name or ""))


class PageVersion(models.Model):
    """One successful render of a page. Every success is kept (up to BOOKRENDER_PAGE_VERSIONS_KEPT
    per page); the page's ``image`` is the chosen one, never deleted by clean-up."""

    page = models.ForeignKey(BookPage, on_delete=models.CASCADE, related_name="versions")
    attempt = models.PositiveIntegerField()
    image = models.FileField(upload_to="pages/", max_length=255)
    seed = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["page", "-attempt"]
        constraints = [models.UniqueConstraint(fields=["page", "attempt"], name="version_unique_attempt")]

    def __str__(self) -> str:
        return f"{self.page} version {self.attempt}"


class Webhook(models.Model):
    """A user's webhook: when one of their books settles, bookrender POSTs a JSON event to ``url``,
    signed with HMAC-SHA256 of the body under ``secret`` (books/webhooks.py)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook")
    url = models.URLField(max_length=500)
    secret = models.CharField(max_length=64)
    updated_at = models.DateTimeField(auto_now=True)
    # The outcome of the latest delivery, shown on the settings page: "" (none yet), "ok", or why not.
    last_result = models.CharField(max_length=300, blank=True, default="")
    last_sent_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"webhook of {self.user}"
