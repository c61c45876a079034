from __future__ import annotations

import mimetypes

from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_GET

from workflows.models import Style


@login_required
@require_GET
def style_preview(request: HttpRequest, slug: str) -> FileResponse:
    """A style's preview image, for the New book page; through the storage API, since media files
    are not served on their own."""
    style = get_object_or_404(Style, slug=slug)
    if not style.preview:
        raise Http404("this style has no preview image")
    content_type = mimetypes.guess_type(str(style.preview.name))[0] or "application/octet-stream"
    response = FileResponse(style.preview.open("rb"), content_type=content_type)
    response["Cache-Control"] = "private, max-age=3600"
    return response
