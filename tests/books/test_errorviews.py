"""A stale tab's click gets a friendly page that leads back; JSON clients get JSON 403 and 404."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from tests.books.conftest import page_set

pytestmark = pytest.mark.django_db


def test_a_stale_tabs_button_gets_a_friendly_page_that_leads_back(alice, book):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    status_url = f"http://testserver/books/{book.pk}/"
    response = client.post(f"/books/{book.pk}/regenerate", {"page": "1"}, HTTP_REFERER=status_url)
    html = response.content.decode()
    assert response.status_code == 403
    assert "Nothing was changed." in html
    assert f'href="{status_url}" id="csrf-back"' in html
    assert book.pages.get(number=1).attempt == 1


def test_a_csrf_failure_never_leads_to_another_site(alice, book):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = client.post(f"/books/{book.pk}/regenerate", HTTP_REFERER="https://evil.example/")
    assert 'href="/" id="csrf-back"' in response.content.decode()


def test_a_json_client_failing_the_csrf_check_gets_json(alice, book):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = client.post(f"/books/{book.pk}/regenerate", json.dumps({"pages": [1]}), content_type="application/json")
    assert response.status_code == 403 and response["Content-Type"] == "application/json"
    assert "X-CSRFToken" in response.json()["error"]


def test_the_api_answers_json_404_for_other_peoples_books_and_unknown_paths(bob_client, book):
    for path in (f"/api/books/{book.pk}", "/api/books/999999", "/api/nothing-here"):
        response = bob_client.get(path)
        assert response.status_code == 404 and response.json() == {"error": "Not found."}, path


def test_a_json_regenerate_of_another_users_book_gets_json_404(bob_client, book):
    page_set(book, 2, "failed")
    response = bob_client.post(f"/books/{book.pk}/regenerate", "{}", content_type="application/json")
    assert response.status_code == 404 and response.json() == {"error": "Not found."}


def test_people_still_get_an_html_404(bob_client, book):
    response = bob_client.get(f"/books/{book.pk}/")
    assert response.status_code == 404 and "text/html" in response["Content-Type"]
