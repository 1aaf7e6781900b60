"""`prebookd run`: the one place that wires the daemon together.

startup (schema, pools, listener + resync, READY=1) -> main loop (wait for a signal
or a crashed task) -> shutdown (stop arming, let requests in flight finish and their
results be written, up to `shutdown_timeout`; give back claims never sent).
Signal handlers only log and set events; this module acts on them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Coroutine
from typing import Any

import structlog

from prebookd import store
from prebookd.aimharder import AimHarderClient
from prebookd.clock import HotWindows
from prebookd.db import connect, create_pool, database_dsn
from prebookd.engine import Engine, EngineConfig
from prebookd.listener import Listener
from prebookd.migrate import migrate
from prebookd.results import ResultWriter
from prebookd.settings import Settings
from prebookd.systemd import Notifier

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_CRASHED = 1


class Signals:
    """SIGTERM/SIGINT ask for a graceful stop (a second SIGINT exits at once);
    SIGHUP asks for a resync."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.resync = asyncio.Event()
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
        log.info("signal_received", signal="SIGHUP", action="resync")
        self.resync.set()


async def run_daemon(settings: Settings) -> int:
    log.info("daemon_starting", **settings.describe())
    notifier = Notifier()
    signals = Signals()
    signals.install()
    async with database_dsn(settings) as dsn:
        conn = await connect(dsn)
        try:
            applied = await migrate(conn)
        finally:
            await conn.close()
        if applied:
            log.info("migrations_applied", versions=[m.version for m in applied])
        pool = await create_pool(dsn, settings)
        client = AimHarderClient(
            limit=settings.http_pool_limit,
            limit_per_host=settings.http_pool_per_host,
            request_timeout=settings.request_timeout,
        )
        await client.start()
        try:
            return await _serve(settings, dsn, pool, client, signals, notifier)
        finally:
            await client.close()
            await pool.close()
            notifier.close()


async def _serve(
    settings: Settings,
    dsn: str,
    pool: Any,
    client: AimHarderClient,
    signals: Signals,
    notifier: Notifier,
) -> int:
    crashed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    def on_crash(error: BaseException) -> None:
        if not crashed.done():
            crashed.set_result(error)

    hot = HotWindows()
    results = ResultWriter(
        lambda updates: store.write_results(pool, updates),
        flush_interval=settings.result_flush_interval,
        wait_clear=hot.wait_clear,
    )
    engine = Engine(
        EngineConfig.from_settings(settings),
        pool=pool,
        client=client,
        results=results,
        on_crash=on_crash,
        hot=hot,
    )
    listener = Listener(dsn, on_notification=engine.on_notification, on_connected=engine.resync)
    background = Background(on_crash)
    tasks_stop = asyncio.Event()
    background.start(listener.run(tasks_stop), "listener")
    background.start(results.run(tasks_stop), "result-writer")
    background.start(engine.fetch_loop(tasks_stop), "row-fetcher")
    background.start(_reconcile(engine, listener, settings, signals, tasks_stop), "reconcile")
    background.start(_watchdog(notifier, tasks_stop), "watchdog")

    await _first_of(listener.ready.wait(), signals.stop.wait(), _wait_future(crashed))
    if listener.ready.is_set() and not signals.stop.is_set() and not crashed.done():
        notifier.notify("READY=1", f"STATUS={_status(engine)}")
        log.info("daemon_ready", armed=engine.armed_count, instance=settings.instance_name)
        await _first_of(signals.stop.wait(), _wait_future(crashed))

    exit_code = EXIT_CRASHED if crashed.done() else EXIT_OK
    notifier.notify("STOPPING=1")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.shutdown_timeout
    log.info("daemon_stopping", in_flight=len(engine.firings), deadline_s=settings.shutdown_timeout)
    unsent = await engine.shutdown(deadline)
    if unsent:
        try:
            released = await store.release_claims(pool, unsent, settings.instance_name)
            log.info("claims_released", rows=released)
        except Exception as exc:  # the lease expires by itself
            log.warning("release_failed", rows=len(unsent), error=str(exc))
    tasks_stop.set()
    written = await results.drain(max(deadline, loop.time() + 2.0))
    await background.stop()
    log.info("daemon_stopped", results_written=results.written, all_written=written)
    return exit_code


async def _reconcile(
    engine: Engine,
    listener: Listener,
    settings: Settings,
    signals: Signals,
    stop: asyncio.Event,
) -> None:
    """Full resync every reconcile_interval, and on SIGHUP: the NOTIFY safety net."""
    while not stop.is_set():
        await _first_of(signals.resync.wait(), stop.wait(), timeout=settings.reconcile_interval)
        signals.resync.clear()
        if stop.is_set() or not listener.connected:
            continue  # the listener resyncs itself when it reconnects
        try:
            rows = await engine.resync()
            log.debug("reconciled", rows=rows, armed=engine.armed_count)
        except Exception as exc:
            log.warning("reconcile_failed", error=str(exc))


async def _watchdog(notifier: Notifier, stop: asyncio.Event) -> None:
    """WATCHDOG=1 from the event loop itself: a blocked loop stops the pings."""
    usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    if not notifier.enabled or usec <= 0:
        await stop.wait()
        return
    interval = usec / 2_000_000
    while not stop.is_set():
        notifier.notify("WATCHDOG=1")
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass


def _status(engine: Engine) -> str:
    nxt = engine.next_instant()
    when = "none" if nxt is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(nxt))
    return f"armed {engine.armed_count}, next instant {when}"


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


async def _first_of(*aws: Coroutine[Any, Any, Any], timeout: float | None = None) -> None:
    """Wait until the first of `aws` finishes (or the timeout passes); cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _wait_future(future: asyncio.Future[Any]) -> None:
    await asyncio.shield(future)
