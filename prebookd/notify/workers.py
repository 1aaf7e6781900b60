"""A small pool of daemon threads for apprise's blocking sends.

Not `concurrent.futures.ThreadPoolExecutor`: its threads are joined when the
interpreter exits, so one send hung on a silent server would hold up the daemon's
exit. A hung send here holds its thread, and the process exits past it.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_Job = tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]


class Workers:
    def __init__(self, count: int, name: str = "prebookd-notify") -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True)
            for n in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, call: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((future, call, args))
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, call, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call(*args))
            except BaseException as exc:
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Threads end after their current job (a hung one never: it is a daemon)."""
        for _ in self._threads:
            self._jobs.put(None)
