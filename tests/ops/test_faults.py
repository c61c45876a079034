"""The fault suite's own parts: the flaky proxy drops what it is asked to, the bookkeeping audit
catches a lost page, a second image and a second submission, and the runner runs a scenario
against a live system and ends with its summary line."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
import uuid
from pathlib import Path

import pytest

from books.models import BookPage, PageVersion
from books.services import PageSpec, book_create
from comfysim.testing import image_graph
from ops.faults import __main__ as runner
from ops.faults.audit import SubmissionLedger, audit_books
from ops.faults.proxy import FlakyProxy
from renders.models import RenderAttempt
from renders.services import page_image_name, prompt_id_for
from tests.conftest import database_url

Status = BookPage.Status


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(1024):
            self.request.sendall(data)


@pytest.fixture
def echo_server():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address
    server.shutdown()
    server.server_close()


def round_trip(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"ping")
            return sock.recv(16) == b"ping"
    except OSError:
        return False


def test_the_proxy_drops_roughly_the_asked_fraction_of_connections(echo_server):
    with FlakyProxy(*echo_server, drop_rate=0.10, seed=3) as proxy:
        answered = [round_trip(proxy.port) for _ in range(400)]
        stats = proxy.stats()

    assert stats["connections"] == 400
    assert 0.06 <= stats["refused_fraction"] <= 0.14
    assert answered.count(False) == stats["refused"]  # every refused connection is an error the client sees


def test_the_proxy_cuts_a_connection_that_stays_open_and_adds_latency(echo_server):
    with FlakyProxy(*echo_server, drop_rate=0.0, latency=(0.1, 0.1)) as proxy:
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        started = time.monotonic()
        sock.sendall(b"ping")
        assert sock.recv(16) == b"ping"
        assert time.monotonic() - started >= 0.2  # a delay each way

        proxy.configure(drop_rate=1.0)
        with pytest.raises(ConnectionError):  # reset by peer, or a broken pipe if the write comes first
            time.sleep(1.5)  # it is cut at its next once-a-second check
            sock.sendall(b"ping")
            sock.recv(16)
        sock.close()
        assert proxy.stats()["cut"] == 1


def done_page(page: BookPage, media: Path, attempt: int = 1) -> RenderAttempt:
    """What page_finish leaves behind: the image file, the page Done, one successful attempt."""
    name = page_image_name(page, attempt, uuid.uuid4())
    (media / name).parent.mkdir(parents=True, exist_ok=True)
    (media / name).write_bytes(b"png")
    page.image.name, page.image_attempt, page.status, page.attempt = name, attempt, Status.DONE, attempt
    page.save()
    PageVersion.objects.create(page=page, attempt=attempt, image=name)
    return RenderAttempt.objects.create(
        page=page, number=attempt, prompt_id=prompt_id_for(page, attempt), instance_url="http://gpu0",
        workflow="model-free", seed=1, outcome=RenderAttempt.Outcome.SUCCESS,
    )  # fmt: skip


@pytest.fixture
def four_pages(alice, tmp_path):
    book = book_create(owner=alice, title="Audit", style="model-free", pages=[PageSpec(f"p{n}") for n in range(4)])
    return book, list(book.pages.order_by("number")), tmp_path / "media"


@pytest.mark.django_db
def test_the_audit_passes_sound_books(four_pages):
    book, pages, media = four_pages
    attempts = [done_page(page, media) for page in pages[:3]]
    flagged = pages[3]
    flagged.status, flagged.needs_regeneration, flagged.retry_count = Status.FAILED, True, 1
    flagged.image_error = [{"attempt": 1, "kind": "validation", "message": "bad graph", "instance": "x", "at": "now"}]
    flagged.save()
    submissions = {str(a.prompt_id): 1 for a in attempts}

    assert audit_books(book_ids=[book.pk], media_root=media, submissions=submissions, expected_pages={book.pk: 4}) == []


@pytest.mark.django_db
def test_the_audit_catches_a_lost_page_a_second_image_and_a_second_submission(four_pages):
    book, pages, media = four_pages
    first = done_page(pages[0], media)
    done_page(pages[1], media)
    second_image = media / page_image_name(pages[1], 2, uuid.uuid4())
    second_image.write_bytes(b"another png")  # a file no version has: a lost claim's, left behind
    # pages[2] stays Pending: lost.
    pages[3].status = Status.FAILED  # Needs attention, but without the flag or a structured error
    pages[3].image_error = ["it broke"]
    pages[3].save()
    submissions = {str(first.prompt_id): 2, str(uuid.uuid4()): 1}

    problems = audit_books(book_ids=[book.pk], media_root=media, submissions=submissions, expected_pages={book.pk: 5})

    text = "\n".join(problems)
    assert f"book {book.pk}: 4 pages, created with 5" in text
    assert "page 2: image files" in text and second_image.name in text
    assert "page 3: lost, still Pending" in text
    assert "page 4: Needs attention but not flagged needs_regeneration" in text
    assert "page 4: an error entry is not structured" in text
    assert "page 4: retry_count 0 but 1 errors recorded" in text
    assert "page 1: attempt 1 was submitted to ComfyUI 2 times" in text
    assert "sent to ComfyUI but no attempt of these books has it" in text


def test_the_ledger_counts_submissions_across_a_simulator_restart(simulator):
    prompt_id = str(uuid.uuid4())
    ledger = SubmissionLedger([simulator], interval=60)
    simulator.submit(image_graph("a"), prompt_id=prompt_id)
    ledger.snapshot()
    simulator.restart()  # its own counts start again from nothing
    simulator.submit(image_graph("b"), prompt_id=prompt_id)
    ledger.snapshot()

    assert ledger.submissions() == {prompt_id: 2}


@pytest.mark.django_db(transaction=True)
def test_the_runner_runs_a_scenario_and_ends_with_its_summary_line(tmp_path, monkeypatch, broker, capsys, settings):
    monkeypatch.setenv("DATABASE_URL", database_url())  # the workers it starts use the test database
    monkeypatch.setenv("BOOKRENDER_MEDIA_ROOT", str(tmp_path / "out" / "media"))
    monkeypatch.setenv("COMFYUI_URLS", settings.COMFYUI_URLS[0])
    monkeypatch.setattr("ops.faults.system.database_is_disposable", lambda: (True, "test"))
    # An override through the fixture: the COMFYUI_URLS the run sets on django.conf.settings is undone.
    settings.COMFYUI_URLS = list(settings.COMFYUI_URLS)

    code = runner.main(["oom", "--out", str(tmp_path / "out")])

    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0, "\n".join(lines)
    assert lines[-1] == "faults: 1/1 scenarios passed"
    assert any(line.startswith("PASS oom") and "recovery" in line for line in lines)
    assert (tmp_path / "out" / "faults.json").exists()


@pytest.mark.django_db
def test_the_runner_refuses_to_flush_a_database_not_made_for_it(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("BOOKRENDER_MEDIA_ROOT", str(tmp_path / "media"))
    assert runner.main(["oom"]) == 2
    assert "refusing to flush database" in capsys.readouterr().err
    assert runner.main(["no-such-scenario"]) == 2
