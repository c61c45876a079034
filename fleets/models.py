"""GPU fleets: content-addressed assets, immutable bundles of them, fleets that point at one bundle,
and the hosts that register themselves with a fleet (seed 001).

Workflows are assigned to fleets by slug (``FleetWorkflow.workflow_slug``), the name
renders/workflows.py gives a template.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class Asset(models.Model):
    """One file, stored once under ``assets/<kind>/<sha256>`` in the "assets" storage. It counts as
    present only once the server has read it back and found its size and sha256 (``verified_at``)."""

    class Kind(models.TextChoices):
        CHECKPOINT = "checkpoint", "Checkpoint"
        LORA = "lora", "LoRA"
        VAE = "vae", "VAE"
        EMBEDDING = "embedding", "Embedding"
        CONTROLNET = "controlnet", "ControlNet"
        CUSTOM_NODE = "custom_node", "Custom node (archive)"
        OTHER = "other", "Other"

    sha256 = models.CharField(max_length=64, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    size = models.BigIntegerField()
    original_name = models.CharField(max_length=255)
    source_url = models.URLField(max_length=1000, blank=True, default="")
    notes = models.TextField(blank=True, default="")
    # Custom nodes: the node classes the archive provides, one per line. The activation check uses
    # them to tell which bundle entry a workflow's node class needs.
    node_classes = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    verified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["kind", "original_name"]

    def __str__(self) -> str:
        return f"{self.original_name} ({self.kind}, {self.sha256[:12]})"

    @property
    def key(self) -> str:
        return f"assets/{self.kind}/{self.sha256}"

    def provided_node_classes(self) -> set[str]:
        return {line.strip() for line in self.node_classes.splitlines() if line.strip()}


class Bundle(models.Model):
    """A manifest of assets and where each goes under the ComfyUI folder. Immutable once published:
    its manifest is written to ``bundles/<id>/manifest.json`` and that file's sha256 recorded."""

    name = models.CharField(max_length=100, unique=True)
    notes = models.TextField(blank=True, default="")
    # The ComfyUI it needs (ops/comfyui.py's source and ref); empty: whatever the host has.
    comfyui_source = models.CharField(max_length=500, blank=True, default="")
    comfyui_ref = models.CharField(max_length=100, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    published_at = models.DateTimeField(null=True, blank=True)
    manifest_sha256 = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(published_at__isnull=True, manifest_sha256="")
                | Q(published_at__isnull=False) & ~Q(manifest_sha256=""),
                name="bundle_published_has_manifest",
            )
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_published(self) -> bool:
        return self.published_at is not None

    @property
    def manifest_key(self) -> str:
        return f"bundles/{self.pk}/manifest.json"


class BundleEntry(models.Model):
    class Action(models.TextChoices):
        COPY = "copy", "Copy the file"
        EXTRACT_ZIP = "extract_zip", "Extract a .zip into the folder"
        EXTRACT_TAR_GZ = "extract_tar_gz", "Extract a .tar.gz into the folder"

    bundle = models.ForeignKey(Bundle, on_delete=models.CASCADE, related_name="entries")
    # PROTECT: an asset a bundle uses cannot be deleted.
    asset = models.ForeignKey(Asset, on_delete=models.PROTECT, related_name="entries")
    # Relative to the ComfyUI folder: a file for copy, a folder for the extract actions.
    target_path = models.CharField(max_length=500)
    action = models.CharField(max_length=16, choices=Action.choices, default=Action.COPY)

    class Meta:
        verbose_name_plural = "bundle entries"
        ordering = ["bundle", "target_path"]
        constraints = [models.UniqueConstraint(fields=["bundle", "target_path"], name="bundle_entry_unique_path")]

    def __str__(self) -> str:
        return f"{self.target_path} ← {self.asset.original_name}"


class Fleet(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=100, blank=True, default="")
    active_bundle = models.ForeignKey(Bundle, on_delete=models.PROTECT, null=True, blank=True, related_name="active_in")
    # Hosts sign their requests with this (HMAC-SHA256). After a rotation the previous secret is
    # accepted until previous_secret_until, so running hosts can be given the new one.
    secret = models.CharField(max_length=128)
    previous_secret = models.CharField(max_length=128, blank=True, default="")
    previous_secret_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class FleetWorkflow(models.Model):
    """A workflow this fleet runs. By slug, as renders/workflows.py names templates."""

    fleet = models.ForeignKey(Fleet, on_delete=models.CASCADE, related_name="workflows")
    workflow_slug = models.CharField(max_length=64)

    class Meta:
        ordering = ["fleet", "workflow_slug"]
        constraints = [models.UniqueConstraint(fields=["fleet", "workflow_slug"], name="fleet_workflow_unique")]

    def __str__(self) -> str:
        return f"{self.fleet} runs {self.workflow_slug}"


class Activation(models.Model):
    """Append-only: one row each time a fleet's pointer moved."""

    class Kind(models.TextChoices):
        ACTIVATE = "activate", "Activated"
        ROLLBACK = "rollback", "Rolled back"

    fleet = models.ForeignKey(Fleet, on_delete=models.CASCADE, related_name="activations")
    bundle = models.ForeignKey(Bundle, on_delete=models.PROTECT, related_name="activations")
    previous_bundle = models.ForeignKey(Bundle, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    by = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.fleet}: {self.get_kind_display()} {self.bundle} by {self.by}"


class Host(models.Model):
    """A GPU host that registered itself with its fleet's secret."""

    class State(models.TextChoices):
        APPLYING = "applying", "Applying a bundle"
        READY = "ready", "Ready"
        FAILED = "failed", "Apply failed"
        STALE = "stale", "Stale (no heartbeat)"
        OFFLINE = "offline", "Offline"

    fleet = models.ForeignKey(Fleet, on_delete=models.CASCADE, related_name="hosts")
    name = models.CharField(max_length=100)
    # sha256 of the host's own bearer token; the token itself is shown to the host once.
    token_sha256 = models.CharField(max_length=64, unique=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.APPLYING)
    applied_bundle = models.ForeignKey(Bundle, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    last_error = models.TextField(blank=True, default="")
    last_apply_seconds = models.FloatField(null=True, blank=True)
    registered_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["fleet", "name"]
        constraints = [models.UniqueConstraint(fields=["fleet", "name"], name="host_unique_name")]

    def __str__(self) -> str:
        return f"{self.fleet}/{self.name}"


class HostNonce(models.Model):
    """Nonces of signed requests seen within the allowed clock skew: a replay collides here."""

    fleet = models.ForeignKey(Fleet, on_delete=models.CASCADE, related_name="+")
    nonce = models.CharField(max_length=64)
    seen_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["fleet", "nonce"], name="host_nonce_unique")]
        indexes = [models.Index(fields=["seen_at"], name="host_nonce_seen")]

    def __str__(self) -> str:
        return self.nonce
