from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView

from books.signin import AdminSignInForm, SignInForm
from books.views import admin_regenerate_page
from renders.views import healthz, metrics
from workflows.views import style_preview

# Failed sign-ins are limited per username on both login pages (books/signin.py).
admin.site.login_form = AdminSignInForm
# JSON clients get JSON 403 and 404 answers; people get Django's pages (see books.errorviews).
handler403 = "books.errorviews.permission_denied"
handler404 = "books.errorviews.page_not_found"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="books:list", permanent=False)),
    # Before admin.site.urls, whose catch-all would otherwise answer it. admin_view: staff only.
    path(
        "admin/books/<int:book_id>/regenerate-page/<int:number>",
        admin.site.admin_view(admin_regenerate_page),
        name="admin_regenerate_page",
    ),
    path("admin/", admin.site.urls),
    path("fleets/api/", include("fleets.urls")),
    path("metrics", metrics, name="metrics"),
    path("healthz", healthz, name="healthz"),
    path("accounts/login/", auth_views.LoginView.as_view(authentication_form=SignInForm), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("styles/<slug:slug>/preview", style_preview, name="style_preview"),
    path("", include("books.urls")),
]
