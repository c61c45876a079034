from __future__ import annotations

from django.urls import path

from books import views

app_name = "books"
urlpatterns = [
    path("books/", views.book_list, name="list"),
    path("books/new", views.book_new, name="new"),
    path("account/webhook", views.webhook_view, name="webhook"),
    path("books/<int:book_id>/", views.book_status, name="status"),
    path("books/<int:book_id>/pages", views.book_cards, name="cards"),
    path("books/<int:book_id>/pages/<int:number>/image", views.page_image, name="page_image"),
    path("books/<int:book_id>/pages/<int:number>/input", views.page_input, name="page_input"),
    path("books/<int:book_id>/pages/<int:number>/thumb", views.page_thumb, name="page_thumb"),
    path("books/<int:book_id>/pages/<int:number>/edit", views.page_edit_view, name="page_edit"),
    path("books/<int:book_id>/pages/<int:number>/delete", views.page_delete_view, name="page_delete"),
    path("books/<int:book_id>/pages/<int:number>/move", views.page_move_view, name="page_move"),
    path("books/<int:book_id>/pages/add", views.page_add_view, name="page_add"),
    path("books/<int:book_id>/gallery", views.book_gallery, name="gallery"),
    path("books/<int:book_id>/download.zip", views.book_download_zip, name="download_zip"),
    path("books/<int:book_id>/download.pdf", views.book_download_pdf, name="download_pdf"),
    path("books/<int:book_id>/duplicate", views.book_duplicate_view, name="duplicate"),
    path("books/<int:book_id>/delete", views.book_delete_view, name="delete"),
    path("books/<int:book_id>/regenerate", views.book_regenerate_view, name="regenerate"),
    path("books/<int:book_id>/cancel", views.book_cancel_view, name="cancel"),
    path(
        "books/<int:book_id>/pages/<int:number>/versions/<int:attempt>",
        views.page_version_image,
        name="page_version",
    ),
    path(
        "books/<int:book_id>/pages/<int:number>/versions/<int:attempt>/choose",
        views.page_version_choose_view,
        name="page_version_choose",
    ),
    path("api/books/<int:book_id>", views.api_book, name="api_book"),
]
