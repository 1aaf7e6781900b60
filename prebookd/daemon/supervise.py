"""Supervision for `prebookd run`: signals that only set events, named background
tasks whose death stops the daemon, small waits on several things at once, and the
backoff between tries of something that failed."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import Coroutine
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class Backoff:
    """Waits between tries of something that keeps failing (Postgres away): doubling from
    `first` up to `cap`, each drawn within +-`jitter` of that, so that two instances
    that lost Postgres together do not come back to it in step."""

    def __init__(self, first: float, cap: float, *, jitter: float = 0.2) -> None:
        self.first = first
        self.cap = cap
        self.jitter = jitter
        self._next = first

    def next(self) -> float:
        """The wait before the next try; the one after it is twice as long."""
        wait = self._next
        self._next = min(self._next * 2, self.cap)
        return wait * random.uniform(1 - self.jitter, 1 + self.jitter)

    def reset(self) -> None:
        """It worked: the next failure waits `first` again."""
        self._next = self.first


class Signals:
    """SIGTERM/SIGINT ask for a graceful stop (a second SIGINT exits at once);
    SIGHUP asks for a reload."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.reload = asyncio.Event()
        self._interrupts = 0

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._on_interrupt)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)

    def _on_stop(self, name: str) -> None:
        log.info("signal_received", signal=name, action="graceful stop")
        self.stop.set()

    def _on_interrupt(self) -> None:
        self._interrupts += 1
        if self._interrupts > 1:
            log.warning("signal_received", signal="SIGINT", action="exit now")
            os._exit(130)
        self._on_stop("SIGINT")

    def _on_hup(self) -> None:
        log.info("signal_received", signal="SIGHUP", action="reload")
        self.reload.set()


class Background:
    """Named, supervised tasks: one that dies unexpectedly stops the daemon."""

    def __init__(self, on_crash: Any) -> None:
        self._on_crash = on_crash
        self._tasks: list[asyncio.Task[Any]] = []

    def start(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._done)
        self._tasks.append(task)

    def _done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("task_crashed", task=task.get_name(), error=repr(error))
            self._on_crash(error)

    async def stop(self) -> None:
        _, pending = await asyncio.wait(self._tasks, timeout=3.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def first_of(*aws: Coroutine[Any, Any, Any], timeout: float | None = None) -> None:
    """Wait until the first of `aws` finishes (or the timeout passes); cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def wait_future(future: asyncio.Future[Any]) -> None:
    await asyncio.shield(future)
