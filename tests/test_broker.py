"""Celery's Redis transport (config/broker.py): one redis-py client per channel, and messages
still go through it."""

from __future__ import annotations

import uuid

import pytest

from config.broker import Channel
from config.celery import app


def test_a_channel_reuses_one_client_until_kombu_drops_its_pool():
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        assert isinstance(channel, Channel)
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
            assert first.connection_pool is channel.pool
        channel._disconnect_pools()  # what kombu does in a process after a fork
        with channel.conn_or_acquire() as third:
            assert third is not first
            assert third.connection_pool is channel.pool


def test_a_message_goes_out_and_comes_back_through_it():
    name = f"test-broker-{uuid.uuid4().hex}"
    with app.connection_for_write() as connection:
        queue = connection.SimpleQueue(name)
        try:
            queue.put({"page": 7, "attempt": 2})
            message = queue.get(timeout=5)
            message.ack()
            assert message.payload == {"page": 7, "attempt": 2}
            with pytest.raises(queue.Empty):
                queue.get_nowait()
        finally:
            queue.queue.delete()
            queue.close()
