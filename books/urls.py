from __future__ import annotations

from django.urls import path

from books import views

app_name = "books"
urlpatterns = [
    path("books/", views.book_list, name="list"),
    path("books/new", views.book_new, name="new"),
    path("books/<int:book_id>/", views.book_status, name="status"),
    path("books/<int:book_id>/pages", views.book_cards, name="cards"),
    path("books/<int:book_id>/pages/<int:number>/image", views.page_image, name="page_image"),
    path("books/<int:book_id>/regenerate", views.book_regenerate_view, name="regenerate"),
    path("api/books/<int:book_id>", views.api_book, name="api_book"),
]
