"""A flaky TCP proxy for the network-blip scenario: it sits between bookrender's workers and one
ComfyUI, drops a fraction of the connections and delays every chunk it forwards.

bookrender keeps its HTTP connection and WebSocket to each ComfyUI open from one page to the next,
so refusing new connections alone would rarely hit anything. With probability ``drop_rate`` a
connection is refused as it opens, and an open connection is cut in each second of its life; both
with a TCP reset (the client sees "connection reset"), as behind a lossy link or a restarting load
balancer. A refused request never reaches ComfyUI; a cut one may or may not have, and its answer is
lost. Latency is added per forwarded chunk, in both directions, keeping the order of the bytes.

    with FlakyProxy("127.0.0.1", 8188, drop_rate=0.1, latency=(0.02, 0.15)) as proxy:
        ... point COMFYUI_URLS at proxy.url ...
        proxy.stats()  # {"connections": 120, "refused": 11, "cut": 9, ...}
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading

CHUNK = 65536
CUT_CHECK_SEC = 1.0  # an open connection draws its chance of being cut once per this many seconds


class FlakyProxy:
    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        drop_rate: float = 0.1,
        latency: tuple[float, float] = (0.0, 0.0),
        seed: int | None = None,
        listen_host: str = "127.0.0.1",
    ) -> None:
        if not 0.0 <= drop_rate <= 1.0:
            raise ValueError(f"drop_rate {drop_rate} is not between 0 and 1")
        low, high = latency
        if not 0.0 <= low <= high:
            raise ValueError(f"latency {latency} needs 0 <= low <= high")
        self.target = (target_host, target_port)
        self.drop_rate = drop_rate
        self.latency = latency
        self.listen_host = listen_host
        self.port = 0
        # Seeded, so that a run can be repeated. Delays draw from a stream of their own, so that how
        # many chunks a run forwards does not change which connections are dropped.
        self._drop_rng = random.Random(f"drop:{seed}") if seed is not None else random.Random()
        self._delay_rng = random.Random(f"delay:{seed}") if seed is not None else random.Random()
        self._lock = threading.Lock()
        self._counts = {"connections": 0, "refused": 0, "cut": 0, "upstream_errors": 0, "bytes": 0}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.listen_host}:{self.port}"

    def stats(self) -> dict[str, float]:
        with self._lock:
            counts: dict[str, float] = dict(self._counts)
        counts["dropped"] = counts["refused"] + counts["cut"]
        counts["refused_fraction"] = round(counts["refused"] / counts["connections"], 4) if counts["connections"] else 0
        return counts

    def configure(self, *, drop_rate: float | None = None, latency: tuple[float, float] | None = None) -> None:
        """Change the faults while running (the blip ends: ``configure(drop_rate=0, latency=(0, 0))``)."""
        with self._lock:
            if drop_rate is not None:
                self.drop_rate = drop_rate
            if latency is not None:
                self.latency = latency

    # --- the event loop, in a thread of its own -------------------------------------------------

    def start(self) -> FlakyProxy:
        self._thread = threading.Thread(target=self._run, name="flaky-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._server is None:
            raise RuntimeError("the proxy did not start")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> FlakyProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(asyncio.start_server(self._handle, self.listen_host, 0))
            self.port = int(self._server.sockets[0].getsockname()[1])
            self._ready.set()
            loop.run_forever()
            self._server.close()
            loop.run_until_complete(_cancel_all())
        finally:
            self._ready.set()
            loop.close()

    # --- one connection ------------------------------------------------------------------------

    def _drop(self, counter: str) -> bool:
        with self._lock:
            dropped = self._drop_rng.random() < self.drop_rate
            if dropped:
                self._counts[counter] += 1
            return dropped

    def _delay(self) -> float:
        with self._lock:
            low, high = self.latency
            return self._delay_rng.uniform(low, high) if high > 0 else 0.0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._forward(reader, writer)
        except asyncio.CancelledError:
            pass  # the proxy is stopping: end quietly rather than log every open connection

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self._counts["connections"] += 1
        if self._drop("refused"):
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            with self._lock:
                self._counts["upstream_errors"] += 1
            _reset(writer)  # like a proxy whose backend is down: the client sees a reset
            return
        pipes = [
            asyncio.ensure_future(self._pipe(reader, up_writer)),
            asyncio.ensure_future(self._pipe(up_reader, writer)),
        ]
        try:
            # HTTP never half-closes a keep-alive connection: when one side ends, the connection ends.
            while True:
                done, _ = await asyncio.wait(pipes, timeout=CUT_CHECK_SEC, return_when=asyncio.FIRST_COMPLETED)
                if done:
                    break
                if self._drop("cut"):
                    _reset(writer)
                    _reset(up_writer)
                    break
        finally:
            for task in pipes:
                task.cancel()
            for w in (writer, up_writer):
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    return
                delay = self._delay()
                if delay:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
                with self._lock:
                    self._counts["bytes"] += len(data)
        except (ConnectionError, OSError):
            return


async def _cancel_all() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST rather than a FIN: what a dropped connection looks like to the client."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()
