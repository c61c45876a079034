"""What people and scripts get when a request cannot be served: a friendly page when a stale tab's
form fails the CSRF check, and JSON 403 and 404 answers for JSON clients (the /api/ endpoints,
and requests that send or accept JSON), instead of Django's HTML pages."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views import defaults


def wants_json(request: HttpRequest) -> bool:
    return (
        request.path.startswith("/api/")
        or request.content_type == "application/json"
        or "application/json" in request.headers.get("Accept", "")
    )


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW. Nothing was done; the page to go back to (the one the button was on,
    when it is ours) gives the button a fresh token, so the same click works the second time."""
    if wants_json(request):
        return JsonResponse(
            {
                "error": "The CSRF check failed: send the csrftoken cookie's value in an X-CSRFToken header.",
                "reason": reason,
            },
            status=403,
        )
    back = request.headers.get("Referer", "")
    if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        back = "/"
    return render(request, "csrf_failure.html", {"back": back}, status=403)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if wants_json(request):
        return JsonResponse({"error": "You may not do this."}, status=403)
    return defaults.permission_denied(request, exception)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if wants_json(request):
        return JsonResponse({"error": "Not found."}, status=404)
    return defaults.page_not_found(request, exception)
