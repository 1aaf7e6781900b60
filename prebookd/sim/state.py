"""What the simulator knows and decides: boxes, members, sessions, logins. No I/O.

Every decision that depends on time takes `now`, so the HTTP layer passes its clock
and a test can age a session by backdating `issued_at` instead of sleeping.
"""

from __future__ import annotations

import enum
import itertools
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence

from prebookd.sim.model import (
    Answer,
    Balancer,
    BalancerStats,
    Box,
    Call,
    Credential,
    Faults,
    Member,
    RecordedRequest,
    SimClass,
)
from prebookd.sim.network import BoxClock

# Paths the account site serves at the root of the port; a box cannot be named after
# their first segment, or its URLs would be ambiguous.
RESERVED_SUBDOMAINS = frozenset({"_sim", "api", "login", "setrefresh"})


class LoginOutcome(enum.Enum):
    OK = "ok"
    WRONG = "wrong"  # unknown e-mail or wrong password
    LOCKED = "locked"  # too many failures: refused even with the right password


class SimState:
    """Boxes, their classes and members, and the sessions the account site issued."""

    def __init__(
        self,
        *,
        default_capacity: int = 20,
        default_opens_at: float = 0.0,
        default_waitlist_capacity: int = 0,
        ad_hoc_classes: bool = False,
        session_max_age: float | None = None,
        token_max_age: float | None = None,
        max_login_failures: int = 5,
        login_lock_time: float = 900.0,
        seed: int = 0,
        balancer: Balancer | None = None,
    ) -> None:
        self.default_capacity = default_capacity
        self.default_opens_at = default_opens_at
        self.default_waitlist_capacity = default_waitlist_capacity
        # AimHarder refuses a session id its box does not have; with ad_hoc_classes
        # such an id becomes a class with the defaults above instead (quick trials).
        self.ad_hoc_classes = ad_hoc_classes
        self.session_max_age = session_max_age  # seconds a cookie works; None: forever
        self.token_max_age = token_max_age  # seconds a refresh token can be used; None: forever
        self.max_login_failures = max_login_failures
        self.login_lock_time = login_lock_time
        self.seed = seed
        self.balancer = balancer or Balancer()  # see set_balancer
        self.balancer_stats = BalancerStats()
        self.requests: list[RecordedRequest] = []
        self._boxes: dict[str, Box] = {}
        self._members: dict[str, Member] = {}  # e-mail -> member
        self._cookies: dict[str, Credential] = {}  # amhrdrauth value -> whose, since when
        self._tokens: dict[str, Credential] = {}  # refresh token -> whose, since when
        self._reservation_ids = itertools.count(90_000_001)
        self._user_ids = itertools.count(700_001)

    # --- setup ----------------------------------------------------------------------

    def add_box(
        self,
        subdomain: str,
        box_id: str = "",
        name: str = "",
        *,
        daily_limit: int | None = None,
        late_cancel_window: float = 0.0,
        limit_shows_waitlist: bool = False,
        day_as_text: bool = False,
        clock_offset_ms: float = 0.0,
        delay_ms: float = 0.0,
        jitter_ms: float = 0.0,
    ) -> None:
        """Serve a box under `{base}/{subdomain}`. Adding it again replaces its settings
        (id, name, limits, listing format, clock); its classes, bookings and faults are
        kept. limit_shows_waitlist: the listing's limit as "16 (3)"; day_as_text: its
        day as "martes, 1 de diciembre" (both seen from some boxes). clock_offset_ms,
        delay_ms, jitter_ms: its clock and distance (see set_box_clock)."""
        if not subdomain or "/" in subdomain or subdomain in RESERVED_SUBDOMAINS:
            raise ValueError(f"invalid box subdomain: {subdomain!r}")
        clock = BoxClock(clock_offset_ms, delay_ms, jitter_ms)  # checked before any change
        box = self._boxes.get(subdomain)
        if box is None:
            box = self._boxes[subdomain] = Box(subdomain, box_id, name or subdomain)
            box.rng = self._rng_for(subdomain)
            box.net_rng = self._rng_for(f"{subdomain}:net")
        box.clock = clock
        box.box_id, box.name = box_id, name or subdomain
        box.daily_limit, box.late_cancel_window = daily_limit, late_cancel_window
        box.limit_shows_waitlist, box.day_as_text = limit_shows_waitlist, day_as_text

    def add_class(self, subdomain: str, cls: SimClass) -> None:
        """Add or replace a class of a known box; bookings made so far are kept."""
        self.box(subdomain).classes[cls.session_id] = cls

    def add_member(
        self,
        email: str,
        auth_cookie: str,
        *,
        token: str | None = None,
        password: str | None = None,
        issued_at: float | None = None,
        name: str | None = None,
        no_credits: bool = False,
        user_id: int | None = None,
        family_ids: Sequence[str] | None = None,
        boxes: Sequence[str] | None = None,
    ) -> None:
        """A member whose `amhrdrauth` cookie is `auth_cookie` and whose refresh token is
        `token` (default `refresh-{auth_cookie}`), both issued at `issued_at` (default now).
        `password` lets the member log in. `user_id` is their AimHarder id (default: the
        next of a counter); `family_ids` the family members they may book for; `boxes`
        the subdomains of the boxes they belong to, as login and whoami list them
        (default: every box). Adding the same e-mail again adds a cookie and updates
        the rest (a None password, name, user_id, family_ids or boxes keeps the one set
        before)."""
        issued = Credential(email, time.time() if issued_at is None else issued_at)
        member = self._members.get(email)
        if member is None:
            member = self._members[email] = Member(
                email, name or email.split("@")[0], next(self._user_ids)
            )
        member.name = name or member.name
        member.password = password if password is not None else member.password
        member.no_credits = no_credits
        member.user_id = user_id if user_id is not None else member.user_id
        if family_ids is not None:
            member.family_ids = tuple(family_ids)
        if boxes is not None:
            member.boxes = tuple(boxes)
        self._cookies[auth_cookie] = issued
        self._tokens[token if token is not None else f"refresh-{auth_cookie}"] = issued

    def set_faults(self, subdomain: str, faults: Faults) -> None:
        """Inject `faults` on a box's endpoints (Faults() for none). The box's random
        sequence restarts from the seed, so the same requests meet the same faults."""
        box = self.box(subdomain)
        box.faults = faults
        box.rng = self._rng_for(subdomain)

    def set_box_clock(self, subdomain: str, clock: BoxClock) -> None:
        """Give a box its own clock and distance (BoxClock() for none): the `Date` it
        answers and every decision it takes (booking opening, late cancelling, session
        age) go by real time + clock_offset_ms; each request reaches it, and each answer
        comes back, one one-way delay (delay_ms + up to jitter_ms) later. Its random
        sequence of delays restarts from the seed."""
        box = self.box(subdomain)
        box.clock = clock
        box.net_rng = self._rng_for(f"{subdomain}:net")

    def set_balancer(self, balancer: Balancer) -> None:
        """Put `balancer` in front of every box and the account site (Balancer() for
        none). New connections meet it at once; the idle clock of a connection already
        idle restarts now (Simulator does that)."""
        self.balancer = balancer

    def _rng_for(self, subdomain: str) -> random.Random:
        # One sequence per box: traffic to one box does not shift another's faults.
        return random.Random(f"{self.seed}:{subdomain}")

    # --- reading --------------------------------------------------------------------

    @property
    def boxes(self) -> list[str]:
        return list(self._boxes)

    @property
    def members(self) -> list[str]:
        return sorted(self._members)

    def bookings(self, subdomain: str, session_id: str) -> list[str]:
        """Emails booked in a class, in the order places were given."""
        return [r.email for r in self.box(subdomain).booked.get(session_id, [])]

    def waitlist(self, subdomain: str, session_id: str) -> list[str]:
        """Emails on a class's waiting list, first to be promoted first."""
        return [r.email for r in self.box(subdomain).waiting.get(session_id, [])]

    def reservation_id(
        self, subdomain: str, session_id: str, email: str, family_id: str = ""
    ) -> str | None:
        """The `idres` of a member's (or their family member's) place or wait in a
        class, None if they hold none."""
        res = self.box(subdomain).by_member.get((session_id, email, family_id))
        return res.idres if res else None

    def reset(self) -> None:
        """Forget recorded requests, bookings, waiting lists, login failures and what
        the balancer did, and restart every box's fault and delay sequences; boxes, classes,
        members, sessions, fault and balancer settings stay."""
        self.requests.clear()
        self.balancer_stats = BalancerStats()
        for box in self._boxes.values():
            box.clear_reservations()
            box.rng = self._rng_for(box.subdomain)
            box.net_rng = self._rng_for(f"{box.subdomain}:net")
        for member in self._members.values():
            member.failed_logins, member.locked_until = 0, 0.0

    def box(self, subdomain: str) -> Box:
        try:
            return self._boxes[subdomain]
        except KeyError:
            raise KeyError(f"unknown box {subdomain!r}") from None

    def find_box(self, subdomain: str) -> Box | None:
        return self._boxes.get(subdomain)

    def member(self, email: str) -> Member | None:
        return self._members.get(email)

    def boxes_of(self, member: Member) -> list[Box]:
        """The boxes a member belongs to, in the order they were added (unknown
        subdomains in Member.boxes are skipped: the box may be added later)."""
        return [
            b for b in self._boxes.values() if member.boxes is None or b.subdomain in member.boxes
        ]

    def next_reservation_id(self) -> str:
        return str(next(self._reservation_ids))

    # --- sessions -------------------------------------------------------------------

    def member_for_cookie(self, cookie: str | None, now: float) -> Member | None:
        """The member an `amhrdrauth` value logs in, None if unknown or too old."""
        issued = self._cookies.get(cookie or "")
        if issued is None or _expired(issued, self.session_max_age, now):
            return None
        return self._members.get(issued.email)

    def member_for_token(self, token: str) -> Member | None:
        """Whose refresh token this is, however old (for recording who asked)."""
        issued = self._tokens.get(token)
        return self._members.get(issued.email) if issued else None

    def login(self, username: str, password: str, now: float) -> tuple[LoginOutcome, Member | None]:
        """Check credentials, counting failures: after `max_login_failures` in a row the
        account is locked for `login_lock_time` seconds, right password or not."""
        wanted = username.lower()
        member = next((m for m in self._members.values() if m.email.lower() == wanted), None)
        if member is None:
            return LoginOutcome.WRONG, None
        if member.locked_until > now:
            return LoginOutcome.LOCKED, member
        if member.locked_until:  # the lock is over: a fresh count
            member.failed_logins, member.locked_until = 0, 0.0
        if member.password is not None and secrets.compare_digest(member.password, password):
            member.failed_logins = 0
            return LoginOutcome.OK, member
        member.failed_logins += 1
        if member.failed_logins >= self.max_login_failures:
            member.locked_until = now + self.login_lock_time
        return LoginOutcome.WRONG, member

    def open_session(self, email: str, now: float, fingerprint: str | None) -> tuple[str, str]:
        """A new (auth cookie, refresh token) pair for a member, as login issues."""
        cookie, token = secrets.token_hex(24), secrets.token_hex(32)
        self._cookies[cookie] = Credential(email, now, fingerprint)
        self._tokens[token] = Credential(email, now, fingerprint)
        return cookie, token

    def refresh(self, token: str, now: float, fingerprint: str | None) -> tuple[str, str] | None:
        """Swap a live refresh token for a new (cookie, token) pair; the old token dies.
        Cookies issued before keep working until they age out. None: the token is unknown
        or older than `token_max_age`, and a new login is needed."""
        issued = self._tokens.pop(token, None)
        if issued is None or _expired(issued, self.token_max_age, now):
            return None
        return self.open_session(issued.email, now, fingerprint or issued.fingerprint)


def _expired(issued: Credential, max_age: float | None, now: float) -> bool:
    return max_age is not None and now - issued.issued_at > max_age


# A handler of the simulated AimHarder: the state, the parsed request, the answer.
Route = Callable[[SimState, Call], Awaitable[Answer]]
