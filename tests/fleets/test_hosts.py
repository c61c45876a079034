from __future__ import annotations

import json
import re
import time
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from django.utils import timezone

from fleets.hosts import host_register, hosts_sweep
from fleets.models import Host
from fleets.services import fleet_secret_rotate
from ops.assetsync import Server, SyncError, sign
from renders.models import ComfyInstance

ROOT = Path(__file__).resolve().parents[2]


def _signed_post(url: str, *, fleet: str, secret: str, body: bytes, timestamp: int | None = None, nonce: str = ""):
    timestamp_s = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or "ab" * 16
    path = "/fleets/api/register"
    headers = {
        "X-Fleet": fleet,
        "X-Timestamp": timestamp_s,
        "X-Nonce": nonce,
        "X-Signature": sign(secret=secret, timestamp=timestamp_s, nonce=nonce, method="POST", path=path, body=body),
    }
    return requests.post(url + path, data=body, headers=headers, timeout=30)


@pytest.fixture
def host_server(live, fleet):
    return Server(url=live.url, fleet=fleet.slug, secret=fleet.secret, host="gpu-a")


def test_a_host_registers_and_its_instances_appear_as_fleet_instances(host_server, fleet):
    host_server.register()
    host_server.heartbeat(state="ready", applied=None, instances=["http://10.0.0.5:8188", "http://10.0.0.5:8189"])
    host = Host.objects.get(fleet=fleet, name="gpu-a")
    assert host.state == "ready" and host.last_seen_at is not None
    rows = list(ComfyInstance.objects.filter(host=host).order_by("url").values_list("url", "registration_source"))
    assert rows == [("http://10.0.0.5:8188", "fleet"), ("http://10.0.0.5:8189", "fleet")]


def test_a_new_host_is_a_warning_and_its_routine_re_registration_is_not(fleet, caplog):
    caplog.set_level("INFO", logger="bookrender")
    host_register(fleet=fleet, name="gpu-a")
    host_register(fleet=fleet, name="gpu-a")  # the next asset-sync run, or a reboot
    levels = [(r.levelname, r.new) for r in caplog.records if r.getMessage() == "fleet host registered"]
    assert levels == [("WARNING", True), ("INFO", False)]


def test_a_wrong_secret_gets_nothing(live, fleet):
    answer = _signed_post(live.url, fleet=fleet.slug, secret="not-the-secret", body=b'{"host": "x"}')
    assert answer.status_code == 403 and answer.json() == {"error": "refused"}
    assert not Host.objects.exists()
    with pytest.raises(SyncError, match="refused"):
        Server(url=live.url, fleet=fleet.slug, secret="wrong", host="x").register()


def test_a_replayed_registration_is_refused(live, fleet):
    first = _signed_post(live.url, fleet=fleet.slug, secret=fleet.secret, body=b'{"host": "x"}', nonce="cd" * 16)
    replay = _signed_post(live.url, fleet=fleet.slug, secret=fleet.secret, body=b'{"host": "x"}', nonce="cd" * 16)
    assert (first.status_code, replay.status_code) == (200, 403)


def test_a_stale_timestamp_is_refused(live, fleet):
    old = int(time.time()) - 3600
    answer = _signed_post(live.url, fleet=fleet.slug, secret=fleet.secret, body=b'{"host": "x"}', timestamp=old)
    assert answer.status_code == 403


def test_a_rotated_secret_takes_over_and_the_old_one_expires(live, fleet):
    old = fleet.secret
    new = fleet_secret_rotate(fleet=fleet, grace_sec=3600)
    assert _signed_post(live.url, fleet=fleet.slug, secret=new, body=b'{"host": "a"}').status_code == 200
    body = b'{"host": "b"}'
    assert _signed_post(live.url, fleet=fleet.slug, secret=old, body=body, nonce="ef" * 16).status_code == 200
    type(fleet).objects.filter(pk=fleet.pk).update(previous_secret_until=timezone.now() - timedelta(seconds=1))
    assert _signed_post(live.url, fleet=fleet.slug, secret=old, body=body, nonce="12" * 16).status_code == 403


def test_requests_without_the_hosts_token_are_refused(host_server, live):
    assert requests.get(live.url + "/fleets/api/manifest", timeout=30).status_code == 403
    bad = {"Authorization": "Bearer nope"}
    heartbeat = requests.post(
        live.url + "/fleets/api/heartbeat", data=json.dumps({"state": "ready"}), headers=bad, timeout=30
    )
    assert heartbeat.status_code == 403


def test_a_silent_host_goes_stale_then_offline_and_comes_back(host_server, fleet, settings):
    host_server.register()
    host_server.heartbeat(state="ready", applied=None, instances=["http://10.0.0.7:8188"])
    now = timezone.now()
    assert hosts_sweep(now=now + timedelta(seconds=settings.BOOKRENDER_FLEET_HOST_STALE_SEC + 1))["stale"] == 1
    assert hosts_sweep(now=now + timedelta(seconds=settings.BOOKRENDER_FLEET_HOST_OFFLINE_SEC + 1))["offline"] == 1
    instance = ComfyInstance.objects.get(url="http://10.0.0.7:8188")
    assert (instance.enabled, instance.host.state) == (False, "offline")
    host_server.heartbeat(state="ready", applied=None, instances=["http://10.0.0.7:8188"])
    instance.refresh_from_db()
    assert (instance.enabled, instance.host.state) == (True, "ready")


def _systemd_seconds(span: str) -> float:
    units = {"s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    number, unit = re.fullmatch(r"(\d+)([a-z]+)", span).groups()
    return float(number) * units[unit]


def test_a_host_synced_by_its_timer_does_not_go_stale_between_runs():
    """A host's heartbeat is a run of its asset sync (a nothing-to-do run registers and reports
    ready). Stale hosts get no work: the default threshold must outlast two runs' gap."""
    from config import env

    timer = (ROOT / "ops" / "services" / "comfyui-asset-sync.timer").read_text()
    every = _systemd_seconds(re.search(r"^OnUnitActiveSec=(\S+)$", timer, re.M).group(1))
    slack = _systemd_seconds(re.search(r"^AccuracySec=(\S+)$", timer, re.M).group(1))
    stale = float(env.KNOWN["BOOKRENDER_FLEET_HOST_STALE_SEC"])
    assert 2 * (every + slack) <= stale < float(env.KNOWN["BOOKRENDER_FLEET_HOST_OFFLINE_SEC"])
