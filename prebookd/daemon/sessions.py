"""Keeping members' AimHarder sessions alive, so a booking never meets a dead one.

AimHarder's own front end refreshes its token every 29 minutes, and a token left
alone for about 30 minutes may die. So prebookd refreshes (`tokenUpdate`) the
background session of every member with a prebooking coming up, whenever its token
is older than `token_refresh_age`: in a background loop, and again when a row is
armed. A session AimHarder has ended fails the row at arming time with a reason the
member understands, instead of at the instant.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from uuid import UUID

import aiohttp
import asyncpg
import structlog

from prebookd.aimharder import account
from prebookd.aimharder.account import Refreshed, SessionDead
from prebookd.aimharder.proxy import proxied_session
from prebookd.daemon.clock import WallClock
from prebookd.db import store
from prebookd.errors import describe
from prebookd.log import mask_email
from prebookd.models import MemberSession

log = structlog.get_logger(__name__)

KEEP_INTERVAL_MAX = 300.0


Outcome = MemberSession | SessionDead | None  # None: could not ask; keep the old one


class SessionKeeper:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        account_url: str,
        refresh_age: float,
        keep_horizon: float,
        wait_clear: Callable[[], Awaitable[None]],
        clock: WallClock = time.time,
        proxy_url: str | None = None,  # PREBOOKD_PROXY_URL
    ) -> None:
        self._pool = pool
        self.account_url = account_url
        self._proxy_url = proxy_url
        self.refresh_age = refresh_age
        self.keep_horizon = keep_horizon
        self._wait_clear = wait_clear
        self._clock = clock
        self._http: aiohttp.ClientSession | None = None
        self._in_flight: dict[UUID, asyncio.Future[Outcome]] = {}
        self.refreshed = 0
        self.dead = 0
        self.on_dead: Callable[[str], None] | None = None  # told the member's e-mail

    async def start(self) -> None:
        self._http = proxied_session(
            self._proxy_url, connector={"limit": 4}, cookie_jar=aiohttp.DummyCookieJar()
        )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def is_stale(self, session: MemberSession) -> bool:
        if session.token is None:
            return False  # nothing to refresh with: use the cookies as they are
        if session.refreshed_at is None:
            return True
        return self._clock() - session.refreshed_at > self.refresh_age

    async def refresh(self, session: MemberSession) -> Outcome:
        """tokenUpdate once per session at a time; store what AimHarder answered."""
        running = self._in_flight.get(session.id)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._in_flight[session.id] = future
        try:
            outcome = await self._refresh(session)
            future.set_result(outcome)
            return outcome
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._in_flight[session.id]

    async def _refresh(self, session: MemberSession) -> Outcome:
        assert self._http is not None, "keeper not started"
        assert session.token is not None
        member = mask_email(session.email)
        try:
            answer = await account.refresh_token(
                self._http,
                self.account_url,
                session.token,
                session.fingerprint or account.fingerprint_for(session.email),
                session.cookies,
            )
        except account.AccountError as exc:
            log.warning("session_refresh_failed", member=member, error=describe(exc))
            await self._note_error(session, str(exc))
            return None
        if isinstance(answer, SessionDead):
            self.dead += 1
            log.warning("session_dead", member=member, reason=answer.reason)
            if self.on_dead is not None:
                self.on_dead(session.email)
            await self._note_error(session, f"session ended by AimHarder: {answer.reason}")
            return answer
        return await self._save(session, answer)

    async def _save(self, session: MemberSession, answer: Refreshed) -> MemberSession:
        renewed = MemberSession(
            id=session.id,
            email=session.email,
            token=answer.token,
            fingerprint=session.fingerprint,
            cookies=answer.cookies,
            refreshed_at=self._clock(),
        )
        try:
            await store.save_session_refresh(self._pool, session.id, answer.token, answer.cookies)
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            # The old token is dead now: keep the new one in memory at least.
            log.error("session_save_failed", member=mask_email(session.email), error=describe(exc))
        self.refreshed += 1
        log.info("session_refreshed", member=mask_email(session.email))
        return renewed

    async def _note_error(self, session: MemberSession, error: str) -> None:
        try:
            await store.record_session_error(self._pool, session.id, error)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            pass  # the log line above says it already

    async def keep_alive(self, stop: asyncio.Event) -> None:
        """Refresh stale sessions of members with prebookings coming up, periodically."""
        interval = min(KEEP_INTERVAL_MAX, self.refresh_age / 4)
        while not stop.is_set():
            try:
                await self.keep_once()
            except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                log.warning("session_keeping_failed", error=describe(exc))
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                pass

    async def keep_once(self) -> int:
        now = self._clock()
        records = await store.sessions_to_keep(
            self._pool, horizon_end=now + self.keep_horizon, stale_before=now - self.refresh_age
        )
        for record in records:
            session = MemberSession.from_record(record)
            if session is not None:
                await self._wait_clear()  # never in an instant's way
                await self.refresh(session)
        return len(records)
