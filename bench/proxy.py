"""A TCP proxy on 127.0.0.1 that delays every byte by a fixed one-way latency in each direction.

Pipelined: each chunk is read as soon as it arrives, stamped, and written once its delay has passed, so any
number of chunks are in flight at once and the proxy adds latency without limiting throughput (a chunk
never waits for the one before it to be delivered plus the delay). Connection set-up and close are delayed
the same way: a connect costs one round trip, as over a WAN. asyncio on one thread of its own.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Optional, Tuple

#: Bytes read at once from either side (the delay is per chunk, so chunking does not change the latency).
CHUNK = 256 << 10


class LatencyProxy:
    """`with LatencyProxy(("127.0.0.1", port), up=0.010, down=0.010) as proxy:` then talk to proxy.url.

    `up` delays client->server bytes, `down` server->client bytes (seconds); RTT is their sum.
    """

    def __init__(self, target: Tuple[str, int], *, up: float, down: float):
        self.target, self.up, self.down = target, up, down
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: Optional[asyncio.AbstractServer] = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="latency-proxy", daemon=True)
        self.connections = 0
        self._live: set = set()  # the connections' tasks

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LatencyProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, "127.0.0.1", 0), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for _ in range(10):  # a cancelled connection cancels its pipes: until none is left
                tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
                if not tasks:
                    break
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)  # each closes its sockets on the way out
            await asyncio.sleep(0.05)  # and their transports finish closing

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        self._live.add(task)  # the loop keeps only weak references: a waiting connection must not be collected
        try:
            await asyncio.sleep(self.up + self.down)  # the SYN / SYN-ACK round trip
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except (OSError, asyncio.CancelledError):
            client_writer.close()
            self._live.discard(task)
            return
        for writer in (client_writer, server_writer):
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.gather(self._pipe(client_reader, server_writer, self.up),
                                 self._pipe(server_reader, client_writer, self.down))
        except (OSError, asyncio.CancelledError):  # a side went away, or the proxy is closing
            pass
        finally:
            client_writer.close()
            server_writer.close()
            self._live.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
        """Read into a queue of (due time, bytes); a second task writes each chunk when it is due."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:  # end of stream, delayed like the bytes before it
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(CHUNK)
                queue.put_nowait((loop.time() + delay, data))
                if not data:
                    break
            await sender
        finally:
            if not sender.done():
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
