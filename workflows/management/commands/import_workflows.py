"""Register the workflow templates in a folder (the former BOOKRENDER_WORKFLOWS_DIR): each file
``<slug>.json`` becomes the workflow ``<slug>`` (created if needed) with a new version when its
graph or properties differ from the latest one, and a style of the same slug if there is none.
Each graph is checked against a live ComfyUI's /object_info first, unless --no-live-check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from renders.workflows import workflow_load_dir
from workflows.graphs import GraphError, graph_check_live
from workflows.models import Style, Workflow
from workflows.services import instance_for_checks, node_classes_fetch, version_create


class Command(BaseCommand):
    help = "Register the workflow templates (*.json) in a folder as workflows, versions and styles."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("folder", type=Path)
        parser.add_argument("--check-on", default="", help="ComfyUI URL to check against (default: the first up)")
        parser.add_argument("--no-live-check", action="store_true", help="skip the /object_info check")
        parser.add_argument("--dry-run", action="store_true", help="check and report, register nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        templates, errors = workflow_load_dir(options["folder"])
        for error in errors:
            self.stderr.write(f"skipped: {error}")
        server, nodes = "", None
        if not options["no_live_check"] and templates:
            try:
                server = options["check_on"] or instance_for_checks()
                nodes = node_classes_fetch(server)
            except GraphError as exc:
                raise CommandError(f"{exc} (or pass --no-live-check)") from None
        for template in templates:
            if nodes is not None:
                try:
                    graph_check_live(graph=template.graph, output_node=template.output_node, nodes=nodes, server=server)
                except GraphError as exc:
                    self.stderr.write(f"skipped {template.slug}: {exc}")
                    errors.append(exc)  # type: ignore[arg-type]
                    continue
            self.stdout.write(f"{template.slug}: {self._register(template, server, dry_run=options['dry_run'])}")
        if errors:
            raise CommandError(f"{len(errors)} template(s) could not be registered")

    def _register(self, template: Any, server: str, *, dry_run: bool) -> str:
        workflow = Workflow.objects.filter(slug=template.slug).first()
        latest = workflow.versions.order_by("-number").first() if workflow else None
        if latest is not None and latest.graph == template.graph and latest.properties == template.properties_json:
            return f"unchanged ({latest})"
        if dry_run:
            return "would register a new version" if workflow else "would register a new workflow"
        with transaction.atomic():
            if workflow is None:
                workflow = Workflow.objects.create(
                    name=template.title, slug=template.slug, description=template.description
                )
            version = version_create(
                workflow=workflow,
                graph=template.graph,
                output_node=template.output_node,
                properties=template.properties_json,
                output_ext=template.output_ext,
                output_mime=template.output_mime,
                notes=f"Imported from {template.path}",
                checked_on=server,
            )
            if not Style.objects.filter(slug=template.slug).exists():
                Style.objects.create(
                    name=template.title, slug=template.slug, description=template.description, version=version
                )
        return f"registered {version}"
