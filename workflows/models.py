"""The workflow registry: workflows, their immutable versions, and the styles people choose.

A book keeps the version it was created with (``Book.workflow_version``), so registering a new
version never changes a book that already exists. Versions are never edited: a change is a new
version, and a style is moved to it in the admin."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from django.db import models

from workflows.properties import Property, properties_parse


class Workflow(models.Model):
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=64, unique=True)
    description = models.TextField(blank=True, default="")
    # An inactive workflow's styles are not offered for new books; existing books still render.
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class WorkflowVersion(models.Model):
    workflow = models.ForeignKey(Workflow, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    # The API-format graph, with {{PLACEHOLDER}} strings where properties go.
    graph = models.JSONField()
    output_node = models.CharField(max_length=32, help_text="The id of the node whose output is the page.")
    output_ext = models.CharField(max_length=8, default="png")
    output_mime = models.CharField(max_length=64, default="image/png")
    # The typed properties, as workflows.properties reads them.
    properties = models.JSONField()
    # Where it was checked against /object_info before it was registered ("" for built-ins).
    checked_on = models.CharField(max_length=255, blank=True, default="")
    notes = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["workflow", "-number"]
        constraints = [models.UniqueConstraint(fields=["workflow", "number"], name="workflow_version_unique_number")]

    def __str__(self) -> str:
        return f"{self.workflow.slug} v{self.number}"

    @cached_property
    def props(self) -> list[Property]:
        """The parsed properties, once per instance: a version never changes once registered."""
        return properties_parse(self.properties)

    @property
    def primary(self) -> Property:
        return next(p for p in self.props if p.primary)


class Style(models.Model):
    """What a person picks for a book (seed 001's "effect"): a workflow version, the values it
    fixes, and the rest of its properties for people to choose."""

    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=64, unique=True)
    description = models.TextField(blank=True, default="")
    preview = models.ImageField(upload_to="styles/", blank=True, max_length=255)
    version = models.ForeignKey(WorkflowVersion, on_delete=models.PROTECT, related_name="styles")
    # Property name -> value; people cannot change these.
    overrides = models.JSONField(default=dict, blank=True)
    is_active = models.BooleanField(default=True)
    # Styles are listed in this order on the New book form (then by name).
    position = models.PositiveSmallIntegerField(default=100)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["position", "name"]

    def __str__(self) -> str:
        return self.name

    @property
    def configurable(self) -> list[Property]:
        """The properties a person may set: all but the primary input and the fixed ones."""
        return [p for p in self.version.props if not p.primary and p.name not in self.overrides]

    @property
    def offered(self) -> bool:
        return self.is_active and self.version.workflow.is_active

    def as_dict(self) -> dict[str, Any]:
        return {"slug": self.slug, "name": self.name, "version": str(self.version)}
