"""Assets, bundles, fleets and hosts in the admin (seed 001's Admin → ComfyUI pages)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import models
from django.db.models import QuerySet
from django.db.models.deletion import ProtectedError
from django.http import HttpRequest

from fleets.assets import AssetError, asset_delete, asset_store
from fleets.bundles import BundleError, bundle_entry_add, bundle_publish
from fleets.models import Activation, Asset, Bundle, BundleEntry, Fleet, FleetWorkflow, Host
from fleets.services import (
    ActivationError,
    assignment_check,
    fleet_activate,
    fleet_create,
    fleet_rollback,
    fleet_secret_rotate,
)
from workflows.services import workflow_choices


class AssetUploadForm(forms.ModelForm[Asset]):
    upload = forms.FileField(help_text="Streamed to a temporary file, hashed, stored under assets/<kind>/<sha256>.")
    source_url = forms.URLField(required=False, max_length=1000, assume_scheme="https")

    class Meta:
        model = Asset
        fields = ("kind", "source_url", "notes", "node_classes")


@admin.register(Asset)
class AssetAdmin(admin.ModelAdmin[Asset]):
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    list_display = ("original_name", "kind", "size", "sha256", "verified_at", "created_at")
    list_filter = ("kind",)
    search_fields = ("original_name", "sha256")
    readonly_fields = ("sha256", "kind", "size", "original_name", "verified_at", "created_at", "key")

    def get_form(self, request: HttpRequest, obj: Asset | None = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = AssetUploadForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Asset | None = None) -> Any:
        return self.readonly_fields if obj is not None else ()

    def get_fields(self, request: HttpRequest, obj: Asset | None = None) -> Any:
        if obj is None:
            return ("upload", "kind", "source_url", "notes", "node_classes")
        return (*self.readonly_fields, "source_url", "notes", "node_classes")

    def save_model(self, request: HttpRequest, obj: Asset, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        upload = form.cleaned_data["upload"]
        try:
            asset, created = asset_store(
                stream=upload.file,
                kind=form.cleaned_data["kind"],
                original_name=upload.name,
                source_url=form.cleaned_data["source_url"],
                notes=form.cleaned_data["notes"],
                node_classes=form.cleaned_data["node_classes"],
            )
        except AssetError as exc:
            raise forms.ValidationError(str(exc)) from exc
        obj.pk = asset.pk
        obj.__dict__.update({k: v for k, v in asset.__dict__.items() if not k.startswith("_")})
        if not created:
            messages.info(request, f"The same content is already stored as {asset}; nothing was uploaded again.")

    def delete_model(self, request: HttpRequest, obj: Asset) -> None:
        try:
            asset_delete(asset=obj)
        except ProtectedError:
            messages.error(request, f"{obj} is used by a bundle and cannot be deleted.")

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Asset]) -> None:
        for asset in queryset:
            self.delete_model(request, asset)


class BundleEntryForm(forms.ModelForm[BundleEntry]):
    class Meta:
        model = BundleEntry
        fields = ("asset", "target_path", "action")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["target_path"].required = False
        self.fields["action"].required = False
        self.fields["target_path"].help_text = "Empty: the kind's folder and the file's name."

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.instance.pk is None and data.get("asset") is not None and not self.errors:
            bundle = self.instance.bundle if self.instance.bundle_id else None
            if bundle is not None and bundle.is_published:
                raise forms.ValidationError("a published bundle cannot change")
        return data


class BundleEntryInline(admin.TabularInline[BundleEntry, Bundle]):
    model = BundleEntry
    form = BundleEntryForm
    extra = 1
    autocomplete_fields = ("asset",)

    def has_change_permission(self, request: HttpRequest, obj: Bundle | None = None) -> bool:
        return obj is None or not obj.is_published

    has_add_permission = has_change_permission  # type: ignore[assignment]
    has_delete_permission = has_change_permission


@admin.register(Bundle)
class BundleAdmin(admin.ModelAdmin[Bundle]):
    list_display = ("name", "published_at", "manifest_sha256", "created_at")
    readonly_fields = ("published_at", "manifest_sha256", "manifest_key")
    inlines = [BundleEntryInline]
    actions = ["publish"]

    def get_readonly_fields(self, request: HttpRequest, obj: Bundle | None = None) -> Any:
        if obj is not None and obj.is_published:
            return ("name", "notes", "comfyui_source", "comfyui_ref", *self.readonly_fields)
        return self.readonly_fields

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        """New entries go through bundle_entry_add (path, action and overlap checks)."""
        for entry_form in formset.forms:
            data = entry_form.cleaned_data
            if not data or data.get("DELETE") or entry_form.instance.pk or data.get("asset") is None:
                continue
            try:
                bundle_entry_add(
                    bundle=form.instance,
                    asset=data["asset"],
                    target_path=data.get("target_path") or "",
                    action=data.get("action") or "",
                )
            except BundleError as exc:
                messages.error(request, str(exc))
        for entry_form in formset.deleted_forms:
            if entry_form.instance.pk and not form.instance.is_published:
                entry_form.instance.delete()

    @admin.action(description="Publish (write the manifest; the bundle can no longer change)")
    def publish(self, request: HttpRequest, queryset: QuerySet[Bundle]) -> None:
        for bundle in queryset:
            try:
                published = bundle_publish(bundle=bundle)
                messages.success(request, f"{published} published; manifest sha256 {published.manifest_sha256}")
            except BundleError as exc:
                messages.error(request, str(exc))


class FleetWorkflowFormSet(forms.BaseInlineFormSet):  # type: ignore[type-arg]
    """A workflow newly assigned to a fleet with an active bundle is checked against that bundle
    (``fleets.services.assignment_check``), as an activation checks every assigned workflow."""

    def clean(self) -> None:
        super().clean()
        fleet = self.instance
        if fleet.pk is None:
            return
        for form in self.forms:
            slug = form.cleaned_data.get("workflow_slug") if form.has_changed() else None
            if not slug or form.cleaned_data.get("DELETE"):
                continue
            try:
                assignment_check(fleet=fleet, workflow_slug=slug)
            except ActivationError as exc:
                form.add_error("workflow_slug", str(exc))


class FleetWorkflowInline(admin.TabularInline[FleetWorkflow, Fleet]):
    model = FleetWorkflow
    formset = FleetWorkflowFormSet
    extra = 1

    def formfield_for_dbfield(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "workflow_slug":
            # A blank first choice: the extra row left alone is then unchanged, and not saved.
            return forms.ChoiceField(choices=[("", "---------"), *workflow_choices()], label="workflow")
        return super().formfield_for_dbfield(db_field, request, **kwargs)


class ActivationInline(admin.TabularInline[Activation, Fleet]):
    """The activation log: append-only, so nothing here can be changed or deleted."""

    model = Activation
    fk_name = "fleet"
    extra = 0
    fields = ("created_at", "kind", "bundle", "previous_bundle", "by")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class FleetForm(forms.ModelForm[Fleet]):
    activate = forms.ModelChoiceField(
        queryset=Bundle.objects.filter(published_at__isnull=False),
        required=False,
        label="Activate bundle",
        help_text="Refused when a workflow of this fleet needs an asset the bundle lacks.",
    )

    class Meta:
        model = Fleet
        fields = ("slug", "name")


@admin.register(Fleet)
class FleetAdmin(admin.ModelAdmin[Fleet]):
    form = FleetForm
    list_display = ("slug", "name", "active_bundle", "created_at")
    readonly_fields = ("active_bundle",)
    inlines = [FleetWorkflowInline, ActivationInline]
    actions = ["rollback", "rotate_secret"]

    def save_model(self, request: HttpRequest, obj: Fleet, form: Any, change: bool) -> None:
        if not change:
            created = fleet_create(slug=obj.slug, name=obj.name)
            obj.pk, obj.secret = created.pk, created.secret
            messages.warning(request, f"Fleet secret (shown once; give it to the hosts): {created.secret}")
        else:
            super().save_model(request, obj, form, change)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        bundle = form.cleaned_data.get("activate")
        if bundle is not None:
            try:
                fleet_activate(fleet=form.instance, bundle=bundle, by=request.user.get_username())
                messages.success(request, f"{bundle} is now active on {form.instance}")
            except ActivationError as exc:
                messages.error(request, str(exc))

    @admin.action(description="Roll back to the previous bundle")
    def rollback(self, request: HttpRequest, queryset: QuerySet[Fleet]) -> None:
        for fleet in queryset:
            try:
                activation = fleet_rollback(fleet=fleet, by=request.user.get_username())
                messages.success(request, f"{fleet} rolled back to {activation.bundle}")
            except ActivationError as exc:
                messages.error(request, str(exc))

    @admin.action(description="Rotate the secret (the old one works for an hour more)")
    def rotate_secret(self, request: HttpRequest, queryset: QuerySet[Fleet]) -> None:
        for fleet in queryset:
            messages.warning(request, f"New secret of {fleet} (shown once): {fleet_secret_rotate(fleet=fleet)}")


@admin.register(Host)
class HostAdmin(admin.ModelAdmin[Host]):
    list_display = ("name", "fleet", "state", "applied_bundle", "last_seen_at", "last_apply_seconds")
    list_filter = ("fleet", "state")
    readonly_fields = (
        "fleet",
        "name",
        "state",
        "applied_bundle",
        "last_error",
        "last_apply_seconds",
        "registered_at",
        "last_seen_at",
    )
    exclude = ("token_sha256",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # hosts register themselves
