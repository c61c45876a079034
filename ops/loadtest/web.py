"""The load test's user: signs in to the web app and creates books through the New book form
(a JSON upload), then follows them through ``GET /api/books/{id}``, as a person's browser or a
script would."""

from __future__ import annotations

import json
import re
from typing import Any

import requests

TIMEOUT_SEC = 30.0


class WebError(RuntimeError):
    """The web app did not answer as a person would expect; the message says what it did."""


class WebClient:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()

    def _csrf(self) -> str:
        token = self.session.cookies.get("csrftoken")
        if not token:
            self.session.get(self.base_url + "/accounts/login/", timeout=TIMEOUT_SEC)
            token = self.session.cookies.get("csrftoken")
        if not token:
            raise WebError("the login page set no CSRF cookie")
        return str(token)

    def sign_in(self, username: str, password: str) -> None:
        response = self.session.post(
            self.base_url + "/accounts/login/",
            data={"username": username, "password": password, "csrfmiddlewaretoken": self._csrf(), "next": "/books/"},
            allow_redirects=False,
            timeout=TIMEOUT_SEC,
        )
        if response.status_code != 302:
            raise WebError(f"signing in as {username} answered {response.status_code}, not a redirect")

    def create_book(self, *, title: str, pages: list[dict[str, Any]], style: str = "model-free") -> int:
        """POST /books/new with the pages as a JSON upload; returns the new book's id. ``confirm`` with
        the page count skips the preview a person sees first (the count must match, or nothing is
        created)."""
        data = {
            "title": title,
            "style": style,
            "text": "",
            "confirm": "1",
            "expected_pages": str(len(pages)),
            "csrfmiddlewaretoken": self._csrf(),
        }
        response = self.session.post(
            self.base_url + "/books/new",
            data=data,
            files={"upload": ("pages.json", json.dumps(pages), "application/json")},
            headers={"Referer": self.base_url + "/books/new"},
            allow_redirects=False,
            timeout=TIMEOUT_SEC,
        )
        match = re.search(r"/books/(\d+)/", response.headers.get("Location", ""))
        if response.status_code != 302 or match is None:
            raise WebError(f"New book answered {response.status_code}: {response.text[:300]}")
        return int(match.group(1))

    def book(self, book_id: int) -> dict[str, Any]:
        response = self.session.get(f"{self.base_url}/api/books/{book_id}", timeout=TIMEOUT_SEC)
        if response.status_code != 200:
            raise WebError(f"GET /api/books/{book_id} answered {response.status_code}")
        data: dict[str, Any] = response.json()
        return data
