"""Fixed-window rate limits counted in Django's cache (Redis in production, shared by every web
process): regenerate requests, new books and failed sign-ins."""

from __future__ import annotations

import math
import time

from django.core.cache import cache


def rate_limit_hit(key: str, *, limit: int, window_sec: int, count: bool = True) -> int:
    """Count one event for ``key`` (``count=False`` only looks). Returns 0 while the window holds at
    most ``limit`` events (with this one), else the seconds until the next window.

    ``add`` then ``incr`` is atomic in Redis and in the local-memory cache the tests use."""
    now = time.time()
    window = int(now // window_sec)
    name = f"bookrender:{key}:{window}"
    if count:
        cache.add(name, 0, timeout=window_sec * 2)
        try:
            events = cache.incr(name)
        except ValueError:  # the key expired between add and incr
            cache.set(name, 1, timeout=window_sec * 2)
            events = 1
    else:
        events = int(cache.get(name, 0)) + 1
    if events <= limit:
        return 0
    return max(1, math.ceil((window + 1) * window_sec - now))
