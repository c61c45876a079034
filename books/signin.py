"""Sign-in forms with a limit on failed attempts per username, for the site's login page and the
admin's. Per username, not per address: behind the reverse proxy every request comes from
127.0.0.1, so an address limit would lock everyone out together."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm

from books.ratelimit import rate_limit_hit

# Five wrong passwords for one username in 15 minutes, then that username waits for the window.
SIGNIN_FAILURES_LIMIT = 5
SIGNIN_WINDOW_SEC = 15 * 60


class _LimitedSignIn(AuthenticationForm):
    def clean(self) -> dict[str, Any]:
        key = "signin-failures:" + str(self.data.get("username", "")).strip().lower()
        wait = rate_limit_hit(key, limit=SIGNIN_FAILURES_LIMIT, window_sec=SIGNIN_WINDOW_SEC, count=False)
        if wait:
            raise forms.ValidationError(
                f"Too many failed sign-ins for this username: try again in {wait} s.", code="throttled"
            )
        try:
            return super().clean()
        except forms.ValidationError as exc:
            if exc.code == "invalid_login":
                rate_limit_hit(key, limit=SIGNIN_FAILURES_LIMIT, window_sec=SIGNIN_WINDOW_SEC)
            raise


class SignInForm(_LimitedSignIn):
    pass


class AdminSignInForm(_LimitedSignIn, AdminAuthenticationForm):
    pass
