from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from books.models import Book
from books.services import PageSpec, book_create

DEMO_PAGES = [
    "A lighthouse on a cliff at dawn, watercolour",
    "A small fox reading a map under a lantern",
    "The fox and a heron crossing a rope bridge in fog",
    "A market of floating lanterns on a river at night",
    "An old sailor mending a net, warm morning light",
    "The fox asleep in a boat under a sky full of stars",
]


class Command(BaseCommand):
    help = "Create the demo user (demo / demo-password), an admin (admin / admin-password) and a demo book."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--style", default="model-free")

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        # An address, so the console mail backend shows the "book is ready" email in the maintenance log.
        demo, created = User.objects.get_or_create(username="demo", defaults={"email": "demo@example.com"})
        if created:
            demo.set_password("demo-password")
            demo.save()
        admin, created = User.objects.get_or_create(username="admin", defaults={"is_staff": True, "is_superuser": True})
        if created:
            admin.set_password("admin-password")
            admin.save()
        if Book.objects.filter(owner=demo, title="The Fox and the Lighthouse").exists():
            self.stdout.write("demo book already there")
            return
        book = book_create(
            owner=demo,
            title="The Fox and the Lighthouse",
            style=options["style"],
            pages=[PageSpec(prompt=p) for p in DEMO_PAGES],
        )
        self.stdout.write(f"demo book {book.pk} created with {len(DEMO_PAGES)} pages")
