from __future__ import annotations

from django.urls import path

from fleets import views

app_name = "fleets"
urlpatterns = [
    path("register", views.register, name="register"),
    path("heartbeat", views.heartbeat, name="heartbeat"),
    path("manifest", views.manifest, name="manifest"),
    path("blobs/<str:sha256>", views.blob, name="blob"),
]
