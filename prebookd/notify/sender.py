"""The outbox sender: delivers messages off the hot path, never in a booking's way.

Each round it waits until no instant is near (`quiet`: the engine's hot windows and
the next instant, handed in), claims due messages (a lease in the table), and hands
each to a thread pool of its own: apprise is synchronous, and a slow SMTP server or a
hung webhook then holds one worker thread, never the event loop. A send not done
after `send_timeout` is given up on and retried later; its thread cannot be cancelled
and keeps its worker until it returns, so at most `workers` sends can hang at once:
then nothing more is sent until one returns, and nothing piles up.

Delivery is at least once: a message is marked sent after apprise says it went; a
crash (or a timed-out send that went through after all) between the two sends it
again once its lease is over. Failures are retried with exponential backoff and
jitter for up to `max_age` (24 h), then the message is `dead` with its last error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import structlog

from prebookd.db import notify_store
from prebookd.errors import describe
from prebookd.notify import channels
from prebookd.notify.messages import render
from prebookd.notify.workers import Workers

log = structlog.get_logger(__name__)

BATCH = 20  # messages claimed at a time
POLL = 1.0  # the outbox is looked at least this often (a result's message wakes it)
FIRST_RETRY = 10.0
LAST_RETRY = 3600.0
BEFORE_INSTANT = 2.0  # no send starts this long before an instant...
AFTER_INSTANT = 1.0  # ...nor this long after one (answers, retries, results)

WaitClear = Callable[[], Awaitable[None]]
NextInstant = Callable[[], float | None]
Send = Callable[[Sequence[str], str, str, float], str | None]


def retry_delay(attempts: int, rng: random.Random) -> float:
    """Backoff after the `attempts`-th failure: 10 s, 20 s, 40 s, ... up to an hour,
    each spread by ±50 % so that many messages failing together do not retry together."""
    base = min(FIRST_RETRY * 2.0 ** max(attempts - 1, 0), LAST_RETRY)
    return base * rng.uniform(0.5, 1.5)


class OutboxSender:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        operator_urls: Sequence[str] = (),
        workers: int = 4,
        send_timeout: float = 10.0,
        max_age: float = 86_400.0,
        wait_clear: WaitClear | None = None,
        next_instant: NextInstant | None = None,
        send: Send = channels.send,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool = pool
        self.operator_urls = tuple(operator_urls)
        for url in self.operator_urls:
            channels.register_url(url)
        self._unreachable = False
        self.send_timeout = send_timeout
        self.max_age = max_age
        self._wait_clear = wait_clear
        self._next_instant = next_instant
        self._send = send
        self._clock = clock
        self._rng = random.Random()
        self._threads = Workers(workers)
        # Free workers: taken when a send starts, given back when its thread returns
        # (not when we stop waiting for it: a hung send keeps its worker).
        self._free = asyncio.Semaphore(workers)
        self._wakeup = asyncio.Event()
        # One statement at a time: the sender never holds more than one connection of
        # the daemon's small pool, which claims and result batches need.
        self._db = asyncio.Semaphore(1)
        self._worker_back_event = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_instant = float("-inf")  # the latest instant seen near
        self.sent = 0
        self.retried = 0
        self.dead = 0
        self.hung = 0  # sends given up on whose thread has not returned yet

    def wake(self, *_: object) -> None:
        """New messages may be due (a result batch was written)."""
        self._wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=POLL)
                except TimeoutError:
                    pass
                self._wakeup.clear()
                try:
                    while not stop.is_set() and await self._worker_free(stop):
                        if not await self.send_due():
                            break
                    self._unreachable = False
                except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                    if not self._unreachable:  # once per outage, not once a second
                        log.warning("notify_outbox_unreachable", error=describe(e))
                    self._unreachable = True
                except Exception:  # a bug must not stop the daemon: notifications wait
                    log.exception("notify_round_failed")
        finally:
            await self.close()

    async def _worker_free(self, stop: asyncio.Event) -> bool:
        """Wait for a free worker (all may be held by hung sends); False if stopping."""
        while self._free_workers() == 0 and not stop.is_set():
            self._worker_back_event.clear()
            try:
                await asyncio.wait_for(self._worker_back_event.wait(), timeout=POLL)
            except TimeoutError:
                pass
        return not stop.is_set()

    async def send_due(self) -> int:
        """One round: claim what is due (as many as workers are free) and start sending
        it; returns how many were started."""
        await self.quiet()
        free = self._free_workers()
        if free == 0:
            return 0
        # Our own wait gives up at send_timeout + 1: a lease past that is never cut short
        # by a live sender; after a crash the messages are due again this soon.
        lease = self.send_timeout + 2.0
        async with self._db:
            messages = await notify_store.claim_due(self._pool, min(free, BATCH), lease)
        for message in messages:
            await self._free.acquire()
            task = asyncio.create_task(self._deliver(message), name=f"notify-{message['id']}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(messages)

    def _free_workers(self) -> int:
        return self._free._value  # a peek: acquire() below is what counts

    async def quiet(self) -> None:
        """Wait until no instant is near: sends (and their DB writes) go between them."""
        while True:
            if self._wait_clear is not None:
                await self._wait_clear()
            now = self._clock()
            upcoming = self._next_instant() if self._next_instant is not None else None
            if upcoming is not None and upcoming - now < BEFORE_INSTANT:
                self._last_instant = max(self._last_instant, upcoming)
            wait = self._last_instant + AFTER_INSTANT - now
            if wait <= 0:
                return
            await asyncio.sleep(min(wait, POLL))

    async def _deliver(self, message: asyncpg.Record) -> None:
        try:
            await self._deliver_one(message)
        except Exception:  # a bug here must not go unseen, nor stop the sender
            log.exception("notification_delivery_bug", message_id=message["id"])

    async def _deliver_one(self, message: asyncpg.Record) -> None:
        urls = self._urls(message)
        payload = _payload(message["payload"])
        text = render(message["event"], payload, message["lang"])
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        future = asyncio.wrap_future(
            self._threads.submit(self._send, urls, text.title, text.body, self.send_timeout),
            loop=loop,
        )
        future.add_done_callback(self._worker_back)
        try:
            # The plugins' own socket timeouts bound most sends; this bounds the rest.
            error = await asyncio.wait_for(asyncio.shield(future), self.send_timeout + 1.0)
        except TimeoutError:
            self.hung += 1
            future.add_done_callback(self._hung_back)
            error = f"no answer within {self.send_timeout + 1.0:g} s"
        except Exception as exc:
            error = describe(exc)
        if not urls:
            error = None  # nowhere to send it (operator channels unset): done
        await self._record(message, error, time.monotonic() - started)

    def _urls(self, message: asyncpg.Record) -> list[str]:
        if message["channel_id"] is None:
            return list(self.operator_urls)
        channels.register_url(message["url"])
        return [message["url"]]

    def _worker_back(self, _: object) -> None:
        self._free.release()
        self._worker_back_event.set()

    def _hung_back(self, _: object) -> None:
        self.hung -= 1

    async def _record(self, message: asyncpg.Record, error: str | None, took: float) -> None:
        fields = {"message_id": message["id"], "kind": message["event"], "took_s": round(took, 3)}
        # Only the instants' own 10 ms guard, not the 2 s quiet: the mark must come well
        # within the lease, or the message could be claimed and sent again.
        if self._wait_clear is not None:
            await self._wait_clear()
        try:
            if error is None:
                async with self._db:
                    await notify_store.mark_sent(self._pool, message["id"])
                self.sent += 1
                log.info("notification_sent", **fields)
                return
            age = self._clock() - message["created_at"].timestamp()
            retry_at = self._clock() + retry_delay(message["attempts"], self._rng)
            if retry_at - message["created_at"].timestamp() > self.max_age:
                async with self._db:
                    await notify_store.mark_failed(self._pool, message["id"], error, None)
                self.dead += 1
                log.error("notification_dead", **fields, error=error, age_s=round(age))
                return
            async with self._db:
                await notify_store.mark_failed(self._pool, message["id"], error, retry_at)
            self.retried += 1
            log.warning(
                "notification_failed",
                **fields,
                error=error,
                retry_in_s=round(retry_at - self._clock(), 1),
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # The lease runs out and the message is tried again: sent twice at worst.
            log.warning("notification_not_recorded", **fields, error=describe(exc))

    def send_direct(self, urls: Sequence[str], title: str, body: str) -> None:
        """Send now, not through the outbox (it is in Postgres, which may be away), once,
        in a worker; the outcome is only logged."""
        future = self._threads.submit(self._send, urls, title, body, self.send_timeout)

        def done(future: concurrent.futures.Future[str | None]) -> None:
            error = future.exception() or future.result()
            if error:
                log.warning("operator_alert_failed", title=title, error=str(error))
            else:
                log.info("operator_alert_sent", title=title)

        future.add_done_callback(done)

    def snapshot(self) -> dict[str, Any]:
        return {"sent": self.sent, "retried": self.retried, "dead": self.dead, "hung": self.hung}

    async def close(self) -> None:
        """Stop: wait briefly for sends in flight to be recorded; hung threads are left
        to the process's end (they are daemon-like: never joined)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.send_timeout + 2.0)
        self._threads.shutdown()


def _payload(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw) if isinstance(raw, str | bytes) else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
