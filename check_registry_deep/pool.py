"""A small pool of daemon threads: queued work can be cancelled, and no worker ever blocks the process's exit."""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from typing import Callable, Optional, Tuple


class WorkerPool:
    def __init__(self, workers: int):
        self._queue: queue.Queue[Optional[Tuple[concurrent.futures.Future, Callable]]] = queue.Queue()
        self._closed = threading.Event()
        self._threads = [threading.Thread(target=self._work, name=f"verify-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._closed.is_set():
                return
            future, fn = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the waiting thread, which decides
                future.set_exception(exc)

    def submit(self, fn: Callable) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((future, fn))
        return future

    def shutdown(self) -> None:
        """Cancel whatever has not started; running work notices the cancel event and stops on its own.

        Quick with thousands queued (a manifest with 10,000 layers): workers stop taking work first, and the
        queue is emptied in one go rather than fought over item by item while they run.
        """
        self._closed.set()
        with self._queue.mutex:
            items = list(self._queue.queue)
            self._queue.queue.clear()
        for item in items:
            if item is not None:
                item[0].cancel()
        for _ in self._threads:
            self._queue.put(None)
