"""`prebookd run`: the one place that wires the daemon together.

startup (schema, pools, spool recovery, listener + resync, READY=1) -> main loop
(wait for a signal or a crashed task; SIGHUP reloads) -> shutdown (stop arming, let
requests in flight finish and their results be written, up to `shutdown_timeout`;
give back claims never sent). Signal handlers only log and set events; the main
loop acts on them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import asyncpg
import structlog

from prebookd import __version__, setting_sources
from prebookd.aimharder.client import AimHarderClient
from prebookd.daemon import upkeep
from prebookd.daemon.clock import HotWindows
from prebookd.daemon.engine import Engine, EngineConfig
from prebookd.daemon.firing_report import iso_instant
from prebookd.daemon.listener import Listener
from prebookd.daemon.listing_watch import ListingWatch
from prebookd.daemon.metrics import Metrics
from prebookd.daemon.planner import Planner
from prebookd.daemon.results import ResultWriter
from prebookd.daemon.sessions import SessionKeeper
from prebookd.daemon.spool import Spool
from prebookd.daemon.statedir import StateDirLock, lock_state_dir
from prebookd.daemon.status import StatusServer
from prebookd.daemon.supervise import Background, Backoff, Signals, first_of, wait_future
from prebookd.daemon.systemd import Notifier
from prebookd.daemon.watchers import Watcher, WatchTiming
from prebookd.db import store
from prebookd.db.connection import create_pool, database
from prebookd.db.embedded import EmbeddedPostgres
from prebookd.db.migrate import migrate, pending_migrations
from prebookd.errors import ConfigError, describe
from prebookd.log import configure_logging
from prebookd.notify.service import Notifications
from prebookd.settings import Settings, mask_dsn

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_CRASHED = 1
SPOOL_FILE = "results.spool"
# Giving claims back on the way out is a courtesy (leases expire anyway): a
# Postgres that does not answer must not hold up the stop.
RELEASE_TIMEOUT = 2.0
RESULTS_LAST_WRITE = 2.0  # of the stop's budget, kept for writing the last results
POOL_CLOSE_TIMEOUT = 3.0


async def run_daemon(settings: Settings) -> int:
    # Before anything else: a second `prebookd run` on this state directory must leave
    # it (spool, embedded Postgres) and the database untouched (StateDirInUse).
    with lock_state_dir(settings.state_dir, settings.instance_name) as lock:
        # What this process is; its settings are `prebookd config`'s to show.
        log.info(
            "daemon_starting",
            version=__version__,
            instance=settings.instance_name,
            lease_owner=lock.lease_owner,
            predecessor=lock.predecessor,
            state_dir=str(settings.state_dir),
        )
        return await _run(settings, lock)


async def _run(settings: Settings, lock: StateDirLock) -> int:
    signals = Signals()
    signals.install()
    async with database(settings) as (dsn, embedded):
        conn = await upkeep.connect_when_up(dsn, signals.stop)
        if conn is None:
            return EXIT_OK  # asked to stop before Postgres ever answered
        try:
            # Check first: a least-privilege role may read the migrations table but
            # not create anything, and needs no more when the schema is current.
            applied = await migrate(conn) if await pending_migrations(conn) else []
        finally:
            await conn.close()
        if applied:
            log.info("migrations_applied", versions=[m.version for m in applied])
        pool = await create_pool(dsn, settings)
        client = AimHarderClient(
            limit=settings.http_pool_limit,
            limit_per_host=settings.http_pool_per_host,
            request_timeout=settings.request_timeout,
            proxy_url=settings.proxy,
        )
        await client.start()
        notifier = Notifier()
        try:
            daemon = Daemon(settings, lock, dsn, pool, client, signals, notifier, embedded)
            return await daemon.serve()
        finally:
            await client.close()
            try:
                await asyncio.wait_for(pool.close(), timeout=POOL_CLOSE_TIMEOUT)
            except TimeoutError:
                pool.terminate()  # connections gone silent: do not wait on them
            notifier.close()


class Daemon:
    def __init__(
        self,
        settings: Settings,
        lock: StateDirLock,
        dsn: str,
        pool: asyncpg.Pool,
        client: AimHarderClient,
        signals: Signals,
        notifier: Notifier,
        embedded: EmbeddedPostgres | None = None,
    ) -> None:
        self.settings = settings
        self._lock = lock
        self._embedded = embedded
        self._pool = pool
        self._client = client
        self._signals = signals
        self._notifier = notifier
        self._started_at = time.time()
        self._crashed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        self._tasks_stop = asyncio.Event()
        self._background = Background(self._on_crash)
        self.hot = HotWindows()
        self.spool = Spool(settings.state_dir / SPOOL_FILE)
        self.results = ResultWriter(
            lambda updates: store.write_results(
                pool, updates, with_messages=self.notify.messages_on
            ),
            flush_interval=settings.result_flush_interval,
            wait_clear=self.hot.wait_clear,
            spool=self.spool,
        )
        self.sessions = SessionKeeper(
            pool,
            account_url=settings.aimharder_url,
            refresh_age=settings.token_refresh_age,
            keep_horizon=settings.session_keep_horizon,
            wait_clear=self.hot.wait_clear,
            proxy_url=settings.proxy,
        )
        self.planner = Planner(
            pool,
            horizon=settings.plan_horizon,
            interval=settings.plan_interval,
            allowed_hosts=settings.box_hosts,
            wait_clear=self.hot.wait_clear,
            proxy_url=settings.proxy,
        )
        self.watcher = Watcher(
            pool,
            client,
            timing=WatchTiming.of(settings),
            allowed_hosts=settings.box_hosts,
            wait_clear=self.hot.wait_clear,
            owner=lock.lease_owner,
        )
        self.metrics = Metrics()
        self.engine = Engine(
            self._engine_config(),
            pool=pool,
            client=client,
            results=self.results,
            on_crash=self._on_crash,
            hot=self.hot,
            sessions=self.sessions,
            metrics=self.metrics,
        )
        self.status_server: StatusServer | None = None
        if settings.status_port:
            self.status_server = StatusServer(
                settings.status_host,
                settings.status_port,
                self.snapshot,
                self.metrics,
                wait_clear=self.hot.wait_clear,
            )
        self.listener = Listener(
            dsn, on_notification=self.engine.on_notification, on_connected=self.engine.resync
        )
        self.notify = Notifications(  # issue 15: outbox sender, heartbeat, alarms
            settings,
            pool,
            wait_clear=self.hot.wait_clear,
            next_instant=self.engine.next_instant,
            db_connected=lambda: self.listener.connected,
            firings=lambda: self.engine.last_firings,
            spooled=lambda: self.results.spooled,
        )
        self.results.on_confirmed(self.notify.results_written)
        self.sessions.on_dead = self.notify.session_dead
        self.listing_watch = ListingWatch(  # issue 15: hand-made rows at risk, told early
            pool,
            lambda: self.settings,
            next_instant=self.engine.next_instant,
            wait_clear=self.hot.wait_clear,
            warn=self.notify.warn_row,
        )

    def _engine_config(self) -> EngineConfig:
        return EngineConfig.from_settings(
            self.settings, self._lock.lease_owner, self._lock.predecessor
        )

    def _on_crash(self, error: BaseException) -> None:
        if not self._crashed.done():
            self._crashed.set_result(error)

    async def serve(self) -> int:
        await self.sessions.start()
        await self.planner.start()
        await self.watcher.start()
        await self._start_status_server()
        try:
            return await self._serve()
        finally:
            if self.status_server is not None:
                await self.status_server.stop()
            await self.sessions.close()
            await self.planner.close()
            await self.watcher.close()

    async def _start_status_server(self) -> None:
        if self.status_server is None:
            return
        try:
            await self.status_server.start()
        except OSError as exc:
            # Bookings matter more than the status page: say so loudly and go on.
            log.error(
                "status_server_failed",
                host=self.settings.status_host,
                port=self.settings.status_port,
                error=describe(exc),
            )
            self.status_server = None

    async def _serve(self) -> int:
        await self.notify.started(self._lock.predecessor, self.spool.size())
        if not await self._recover_spool():
            return await self.shutdown()
        stop = self._tasks_stop
        self._background.start(self.listener.run(stop), "listener")
        self._background.start(self.results.run(stop), "result-writer")
        self._background.start(self.engine.fetch_loop(stop), "row-fetcher")
        self._background.start(self.engine.lease_loop(stop), "leases")
        self._background.start(self._resync_every_interval(), "reconcile")
        self._background.start(upkeep.watchdog(self._notifier, self._tasks_stop), "watchdog")
        if self._embedded is not None:
            self._background.start(
                upkeep.keep_embedded_up(self._embedded, self.hot, self._tasks_stop),
                "embedded-postgres",
            )
        self._background.start(self.sessions.keep_alive(stop), "session-keeper")
        self._background.start(self.planner.run(stop), "planner")
        self._background.start(self.watcher.run(stop), "watcher")
        self._background.start(self.notify.run(stop), "notify")
        self._background.start(self.listing_watch.run(stop), "listing-watch")
        days = lambda: self.settings.history_days  # noqa: E731 (live: a reload may change it)
        self._background.start(upkeep.purge_history(self._pool, days, self.hot, stop), "purge")

        await first_of(
            self.listener.ready.wait(), self._signals.stop.wait(), wait_future(self._crashed)
        )
        if self.listener.ready.is_set() and not self._stopping():
            self._notifier.notify("READY=1", f"STATUS={self.status_line()}")
            nxt = self.engine.next_instant()
            log.info(
                "daemon_ready",
                version=__version__,
                instance=self.settings.instance_name,
                database=self._database(),
                armed=self.engine.armed_count,  # rows held: within the horizon, to fire
                next_instant=None if nxt is None else iso_instant(nxt),
            )
            while not self._stopping():
                await first_of(
                    self._signals.stop.wait(),
                    self._signals.reload.wait(),
                    wait_future(self._crashed),
                )
                if self._signals.reload.is_set() and not self._stopping():
                    self._signals.reload.clear()
                    await self.reload()
        return await self.shutdown()

    async def _recover_spool(self) -> bool:
        """Write what an earlier run spooled before arming anything: a row whose result
        is still only in the spool looks unsent in the table and would be sent again."""
        recovered = self.results.recover(self.spool)
        if not recovered:
            return True
        log.info("spool_recovered", results=recovered, path=str(self.spool.path))
        backoff = Backoff(0.5, 10.0)
        while not await self.results.flush():
            await first_of(self._signals.stop.wait(), timeout=backoff.next())
            if self._stopping():
                return False
        log.info("spool_written", results=recovered)
        return True

    def _database(self) -> str:
        if self._embedded is not None:
            return f"embedded at {self._embedded.data_dir}"
        url = self.settings.database_url
        return mask_dsn(url.get_secret_value()) if url is not None else "?"

    def _stopping(self) -> bool:
        return self._signals.stop.is_set() or self._crashed.done()

    async def reload(self) -> None:
        """SIGHUP: re-read settings (env file included), apply the live ones, resync."""
        self._notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        # Parsing settings and reconfiguring logging take milliseconds of the loop: not
        # while an instant is about to fire.
        await self.engine.hot.wait_clear()
        try:
            new = setting_sources.read_settings()
            setting_sources.log_unknown_variables()  # a typo in the env file just edited
        except ConfigError as exc:
            log.error("settings_reload_failed", error=describe(exc), action="kept the old settings")
            new = self.settings
        changed = setting_sources.changed_settings(self.settings, new)
        live = sorted(changed & setting_sources.LIVE_SETTINGS)
        need_restart = sorted(changed - setting_sources.LIVE_SETTINGS)
        if live:
            applied = {name: getattr(new, name) for name in live}
            self.settings = self.settings.model_copy(update=applied)
            configure_logging(self.settings.log_level, self.settings.log_format)
            self.engine.reconfigure(self._engine_config())
            self.results.flush_interval = self.settings.result_flush_interval
            self.sessions.refresh_age = self.settings.token_refresh_age
            self.sessions.keep_horizon = self.settings.session_keep_horizon
            self.planner.horizon = self.settings.plan_horizon
            self.planner.interval = self.settings.plan_interval
        log.info("settings_reloaded", applied=live, need_restart=need_restart)
        if need_restart:
            log.warning("settings_need_restart", settings=need_restart)
        try:
            rows = await self.engine.resync()
            log.info("resynced", rows=rows, armed=self.engine.armed_count)
        except Exception as exc:
            log.warning("resync_failed", error=describe(exc))
        self._notifier.notify("READY=1", f"STATUS={self.status_line()}")

    async def shutdown(self) -> int:
        exit_code = EXIT_CRASHED if self._crashed.done() else EXIT_OK
        self._notifier.notify("STOPPING=1")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_timeout
        log.info(
            "daemon_stopping",
            in_flight=len(self.engine.firings),
            deadline_s=self.settings.shutdown_timeout,
        )
        # One budget for the whole stop: requests in flight get it but for the time
        # kept back to give claims back and write the last results. Closing the pools
        # after it takes seconds at most: the sum stays below systemd's
        # TimeoutStopSec (30 s) with the default 20 s.
        kept_back = min(RELEASE_TIMEOUT + RESULTS_LAST_WRITE, self.settings.shutdown_timeout / 2)
        unsent = await self.engine.shutdown(deadline - kept_back)
        if unsent:
            try:
                released = await asyncio.wait_for(
                    store.release_claims(self._pool, unsent, self._lock.lease_owner),
                    timeout=max(0.1, min(RELEASE_TIMEOUT, deadline - loop.time())),
                )
                log.info("claims_released", rows=released)
            except Exception as exc:  # the lease expires by itself
                log.warning("release_failed", rows=len(unsent), error=describe(exc))
        self._tasks_stop.set()
        written = await self.results.drain(max(deadline, loop.time() + 0.5))
        await self._background.stop()
        self.engine.rows.flush()  # the lines about rows still queued: before the last one
        log.info(
            "daemon_stopped",
            results_written=self.results.written,
            all_written=written,
            spooled=self.results.spooled,
        )
        return exit_code

    def snapshot(self) -> dict[str, Any]:
        """Everything `prebookd status` and /metrics show."""
        return {
            "instance": self.settings.instance_name,
            "lease_owner": self._lock.lease_owner,
            "started_at": dt.datetime.fromtimestamp(self._started_at, dt.UTC).isoformat(),
            "listener_connected": self.listener.connected,
            "listener_reconnects": self.listener.reconnects,
            **self.engine.snapshot(),
            "sessions_kept": self.sessions.refreshed,
            "planner": self.planner.snapshot(),
            "db_pool": {
                "size": self._pool.get_size(),
                "idle": self._pool.get_idle_size(),
                "max": self._pool.get_max_size(),
            },
            "http_pool": {
                "in_use": self._client.pool_in_use(),
                "limit": self.settings.http_pool_limit,
            },
            "results_backlog": self.results.backlog,
            "spooled": self.results.spooled,
            **self.notify.snapshot(),
        }

    async def _resync_every_interval(self) -> None:
        await upkeep.reconcile(
            self.engine,
            lambda: self.listener.connected,
            lambda: self.settings.reconcile_interval,  # live: a reload may change it
            lambda: self._notifier.notify(f"STATUS={self.status_line()}"),
            self._tasks_stop,
        )

    def status_line(self) -> str:
        """systemd's one-line STATUS=."""
        nxt = self.engine.next_instant()
        last = self.engine.last_firings[-1] if self.engine.last_firings else None
        text = f"armed {self.engine.armed_count}"
        text += ", next instant " + ("none" if nxt is None else iso_instant(nxt))
        if last is not None and last["lateness_max_ms"] is not None:
            text += f", last fired {last['count']} late by <= {last['lateness_max_ms']:.2f} ms"
        return text
