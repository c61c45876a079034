"""Admin > Workflows: register a workflow, upload its API JSON as a new version (checked against a
live ComfyUI's /object_info), and make styles from versions. Versions are never edited: a change
is a new version, so books made with an old one keep rendering as they did."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from workflows.graphs import GraphError, graph_parse
from workflows.models import Style, Workflow, WorkflowVersion
from workflows.properties import PropertyError
from workflows.services import style_overrides_check, version_check, version_create

PROPERTIES_HELP = (
    'A JSON list, one object per property: {"name", "kind" (text, integer, float, seed, choice, boolean, image), '
    '"placeholder" (PROMPT for {{PROMPT}} in the graph), "default", "min", "max", "max_length", "choices", '
    '"label", "help"}; exactly one has "primary": true (the page\'s prompt, kind text, or its image, kind image '
    "with placeholder INPUT_IMAGE). {{FILENAME_PREFIX}} is filled for each attempt and is not a property. "
    "Left empty when the upload is a bookrender template with its own properties."
)
EXAMPLE_PROPERTIES = [
    {"name": "prompt", "kind": "text", "placeholder": "PROMPT", "primary": True, "max_length": 4000},
    {"name": "seed", "kind": "seed", "placeholder": "SEED"},
]


class WorkflowVersionForm(forms.ModelForm[WorkflowVersion]):
    api_json = forms.FileField(
        label="API JSON",
        help_text=(
            "The workflow exported from ComfyUI in API format (Settings > enable Dev mode, then "
            "Workflow > Export (API)), with {{PLACEHOLDER}} strings where properties go; or a "
            'bookrender template {"prompt": {...}, "output_node": ..., "properties": [...]}.'
        ),
    )
    properties = forms.JSONField(required=False, help_text=PROPERTIES_HELP, widget=forms.Textarea(attrs={"rows": 8}))
    output_node = forms.CharField(
        required=False, max_length=32, help_text='The id of the node whose output is the page (e.g. "9" for SaveImage).'
    )
    check_on = forms.CharField(
        required=False,
        max_length=255,
        label="Check against",
        help_text="A ComfyUI URL to check the graph against (/object_info); empty: the first instance that is up.",
    )

    class Meta:
        model = WorkflowVersion
        fields = ("workflow", "api_json", "output_node", "output_ext", "output_mime", "properties", "notes")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        upload = cleaned.get("api_json")
        if upload is None:
            return cleaned
        try:
            graph, extras = graph_parse(upload.read())
        except GraphError as exc:
            self.add_error("api_json", str(exc))
            return cleaned
        properties = cleaned.get("properties") or extras.get("properties")
        output_node = cleaned.get("output_node") or extras.get("output_node") or ""
        if not properties:
            self.add_error("properties", "Declare the workflow's properties (see the example in the help).")
            return cleaned
        if not output_node:
            self.add_error("output_node", "Name the node whose output is the page.")
            return cleaned
        for key in ("output_ext", "output_mime"):
            if key in extras and key not in self.changed_data:
                cleaned[key] = extras[key]
        try:
            _props, server = version_check(
                graph=graph, output_node=str(output_node), properties=properties, server=cleaned.get("check_on") or None
            )
        except PropertyError as exc:
            self.add_error("properties", str(exc)[:1].upper() + str(exc)[1:] + ".")
            return cleaned
        except GraphError as exc:
            self.add_error("api_json", "The workflow does not validate: " + str(exc) + ".")
            return cleaned
        cleaned.update(graph=graph, properties=properties, output_node=str(output_node), checked_on=server)
        return cleaned


@admin.register(WorkflowVersion)
class WorkflowVersionAdmin(admin.ModelAdmin[WorkflowVersion]):
    list_display = ("__str__", "output_node", "output_ext", "checked_on", "created_at")
    list_filter = ("workflow",)
    readonly_fields = (
        "workflow",
        "number",
        "output_node",
        "output_ext",
        "output_mime",
        "properties_pretty",
        "graph_pretty",
        "checked_on",
        "notes",
        "created_at",
    )

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = WorkflowVersionForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return (
                "workflow",
                "api_json",
                "output_node",
                "output_ext",
                "output_mime",
                "properties",
                "check_on",
                "notes",
            )
        return self.readonly_fields

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.readonly_fields if obj is not None else ()

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        initial = super().get_changeform_initial_data(request)
        initial.setdefault("properties", json.dumps(EXAMPLE_PROPERTIES, indent=2))
        return initial

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if change:
            return  # versions are never edited
        data = form.cleaned_data
        created = version_create(
            workflow=data["workflow"],
            graph=data["graph"],
            output_node=data["output_node"],
            properties=data["properties"],
            output_ext=data["output_ext"],
            output_mime=data["output_mime"],
            notes=data.get("notes", ""),
            checked_on=data["checked_on"],
        )
        obj.pk, obj.number = created.pk, created.number

    @admin.display(description="Properties")
    def properties_pretty(self, obj: WorkflowVersion) -> str:
        return json.dumps(obj.properties, indent=2)

    @admin.display(description="Graph (API format)")
    def graph_pretty(self, obj: WorkflowVersion) -> str:
        return json.dumps(obj.graph, indent=2)


class VersionInline(admin.TabularInline[WorkflowVersion, Workflow]):
    model = WorkflowVersion
    fields = ("number", "output_node", "output_ext", "checked_on", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a version is added with its upload form (Workflow versions > Add)


@admin.register(Workflow)
class WorkflowAdmin(admin.ModelAdmin[Workflow]):
    list_display = ("name", "slug", "is_active", "created_at")
    list_filter = ("is_active",)
    prepopulated_fields = {"slug": ("name",)}
    inlines = [VersionInline]


class StyleForm(forms.ModelForm[Style]):
    class Meta:
        model = Style
        fields = ("name", "slug", "description", "preview", "version", "overrides", "is_active", "position")
        help_texts = {
            "overrides": 'Values people cannot change, by property name: {"steps": 30, "sampler": "euler"}.',
        }

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        version = cleaned.get("version")
        if version is not None:
            try:
                cleaned["overrides"] = style_overrides_check(version=version, overrides=cleaned.get("overrides") or {})
            except PropertyError as exc:
                self.add_error("overrides", str(exc)[:1].upper() + str(exc)[1:] + ".")
        return cleaned


@admin.register(Style)
class StyleAdmin(admin.ModelAdmin[Style]):
    form = StyleForm
    list_display = ("name", "slug", "version", "is_active", "position")
    list_filter = ("is_active", "version__workflow")
    prepopulated_fields = {"slug": ("name",)}
