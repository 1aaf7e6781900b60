"""The status endpoint: /healthz, /status and /metrics over HTTP on loopback.

The daemon hands in a `snapshot()` callable (a plain dict of what it holds now) and
its `Metrics`; this module only serves them. It binds 127.0.0.1 by default: the
endpoint has no authentication and tells who is armed when, so exposing it further
is the operator's choice (a reverse proxy, or PREBOOKD_STATUS_HOST).

Scrapes are served on the daemon's own event loop, so a handler first waits out any
hot window around an opening instant (`wait_clear`, the same gate the result writer
uses): a Prometheus scrape never delays a burst.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from aiohttp import web

from prebookd.daemon.metrics import CONTENT_TYPE, Metrics, box_clock_gauges
from prebookd.notify.report import gauges as notify_gauges
from prebookd.timeparse import read_iso

log = structlog.get_logger(__name__)

Snapshot = Callable[[], dict[str, Any]]


class StatusServer:
    def __init__(
        self,
        host: str,
        port: int,
        snapshot: Snapshot,
        metrics: Metrics,
        *,
        wait_clear: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """`port` 0 binds an ephemeral port (tests); the daemon turns the endpoint off
        for PREBOOKD_STATUS_PORT=0 by not creating this server at all."""
        self._host = host
        self._port = port
        self._snapshot = snapshot
        self._metrics = metrics
        self._wait_clear = wait_clear
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None

    @property
    def bound_port(self) -> int:
        if self._bound_port is None:
            raise RuntimeError("the status server is not started")
        return self._bound_port

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/status", self._status)
        app.router.add_get("/metrics", self._metrics_page)
        # No access log: a scrape every 15 s would drown the journal.
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self._bound_port = _port_of(runner)
        log.info("status_server_started", host=self._host, port=self._bound_port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            log.info("status_server_stopped")

    # ---- handlers ------------------------------------------------------------

    async def _healthz(self, _request: web.Request) -> web.Response:
        snapshot = await self._take()
        if snapshot is None:
            return _json({"status": "error", "reason": "snapshot failed"}, status=500)
        if snapshot.get("listener_connected"):
            return _json({"status": "ok"})
        # Not connected to Postgres: notifications are being missed. 503 so that a
        # load balancer or a monitor's HTTP check sees it without parsing anything.
        return _json({"status": "unavailable", "reason": "listener not connected"}, status=503)

    async def _status(self, _request: web.Request) -> web.Response:
        snapshot = await self._take()
        if snapshot is None:
            return _json({"status": "error", "reason": "snapshot failed"}, status=500)
        return _json(snapshot)

    async def _metrics_page(self, _request: web.Request) -> web.Response:
        snapshot = await self._take()
        if snapshot is None:
            return _json({"status": "error", "reason": "snapshot failed"}, status=500)
        body = self._metrics.render(gauges_from_snapshot(snapshot))
        return web.Response(body=body.encode(), headers={"Content-Type": CONTENT_TYPE})

    async def _take(self) -> dict[str, Any] | None:
        if self._wait_clear is not None:
            await self._wait_clear()
        try:
            return self._snapshot()
        except Exception:
            # A bug in the snapshot must not take the endpoint (or the daemon) down.
            log.exception("status_snapshot_failed")
            return None


def gauges_from_snapshot(snapshot: Mapping[str, Any]) -> dict[str, float]:
    """The snapshot's numbers under Prometheus names; a key missing is left out."""
    gauges: dict[str, float] = {}

    def put(name: str, value: Any) -> None:
        if isinstance(value, bool):
            gauges[name] = 1.0 if value else 0.0
        elif isinstance(value, int | float):
            gauges[name] = float(value)

    put("prebookd_armed_rows", snapshot.get("armed"))
    put("prebookd_listener_connected", snapshot.get("listener_connected"))
    put("prebookd_listener_reconnects", snapshot.get("listener_reconnects"))
    put("prebookd_sessions_kept", snapshot.get("sessions_kept"))
    put("prebookd_results_backlog", snapshot.get("results_backlog"))
    put("prebookd_results_spooled", snapshot.get("spooled"))
    db_pool = snapshot.get("db_pool") or {}
    put("prebookd_db_pool_size", db_pool.get("size"))
    put("prebookd_db_pool_idle", db_pool.get("idle"))
    put("prebookd_db_pool_max", db_pool.get("max"))
    http_pool = snapshot.get("http_pool") or {}
    put("prebookd_http_connections_in_use", http_pool.get("in_use"))
    put("prebookd_http_connections_limit", http_pool.get("limit"))
    put("prebookd_start_time_seconds", _epoch(snapshot.get("started_at")))
    instants = [_epoch(n.get("instant")) for n in snapshot.get("next_instants") or []]
    known = [i for i in instants if i is not None]
    if known:
        put("prebookd_next_instant_seconds", min(known))
    gauges.update(notify_gauges(dict(snapshot)))  # issue 15
    gauges.update(box_clock_gauges(snapshot))  # issue 18
    return gauges


def _epoch(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    moment = read_iso(value)
    return moment.timestamp() if moment is not None else None


def _json(payload: Any, *, status: int = 200) -> web.Response:
    # default=str: a datetime or UUID left in the snapshot still renders.
    body = json.dumps(payload, default=str, indent=1)
    return web.Response(text=body, status=status, content_type="application/json")


def _port_of(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("the status server has no TCP address")
