"""A box's class listing, `GET {box}/api/bookings`: what `prebookd classes`,
`prebookd login --box` and `prebookd add --class` read the day's classes from.

Boxes fill in the listing their own way (shared/AIMHARDER.md, "Classes of a day"):
`limit` may be "16 (3)" (places, then waiting-list places), `day` a Spanish date text
("martes, 1 de diciembre") rather than YYYYMMDD, `bookState` null, 0 or 1. None of
that fails a listing: a class whose limit cannot be read shows 0 places, one whose
bookState cannot be read shows as not booked. Only what naming and booking a class
needs (its id and time) must be there.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from prebookd.aimharder.account import (
    AccountError,
    Cookies,
    SessionExpired,
    browser_headers,
    exchange,
    json_answer,
)

_LEADING_INT = re.compile(r"\s*([+-]?[0-9]{1,9})(?![0-9])")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class ClassInfo:
    """One class session of a day at a box, as `GET /api/bookings` lists it."""

    session_id: str  # bookings[].id: what booking needs
    time: str  # "07:00 - 08:00"
    name: str
    occupancy: int
    limit: int
    waitlist: int  # people on the waiting list
    booked: bool  # this member holds a place
    waitlisted: bool  # this member is on the waiting list
    reservation_id: str | None  # idres: what cancelling needs

    @property
    def start(self) -> str:
        """The start time, "07:00"."""
        return self.time.split("-", 1)[0].strip()

    @property
    def label(self) -> str:
        """ "07:00 WOD": how `prebookd add --class` names a class."""
        return f"{self.start} {self.name}"


async def list_classes(
    http: aiohttp.ClientSession,
    box_base_url: str,
    aimharder_box_id: str,
    day: str,
    cookies: Cookies,
    family_id: str = "",
) -> list[ClassInfo]:
    """`GET {box}/api/bookings` for `day` (YYYYMMDD), as the member whose cookies these
    are sees it. Raises SessionExpired on `{"logout": 1}`."""
    box_base_url = box_base_url.rstrip("/")
    params = {
        "day": day,
        "familyId": family_id,
        "box": aimharder_box_id,
        "_": str(int(time.time() * 1000)),  # the front end's cache buster
    }
    status, raw, _ = await exchange(
        http,
        "GET",
        f"{box_base_url}/api/bookings",
        what="class listing",
        headers=browser_headers(box_base_url, cookies),
        params=params,
    )
    return parse_classes(status, raw)


def loose_int(value: Any) -> int | None:
    """16, "16", "16 (3)", 16.0 as 16; null, "", "null", "-" or anything else as None."""
    if isinstance(value, int):  # a JSON true or false too: 1 or 0
        return int(value)
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        match = _LEADING_INT.match(value)
        return int(match[1]) if match else None
    return None


class _Listed(BaseModel):
    """One entry of `bookings[]`; numbers may come as strings, extra keys are ignored."""

    model_config = ConfigDict(extra="ignore")

    id: str
    time: str
    className: str = ""
    ocupation: int = 0
    limitc: int | None = None
    limit: int | None = None
    waitlist: int = 0
    bookState: int | None = None
    idres: str | None = None

    @field_validator("id", "idres", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("idres", mode="before")
    @classmethod
    def _reservation(cls, value: Any) -> Any:
        return None if value in ("", 0) else value  # no reservation

    @field_validator("limitc", "limit", "bookState", mode="before")
    @classmethod
    def _lenient(cls, value: Any) -> int | None:
        return loose_int(value)

    @field_validator("ocupation", "waitlist", mode="before")
    @classmethod
    def _count(cls, value: Any) -> Any:
        if value is None or value == "":
            return 0
        number = loose_int(value) if isinstance(value, str) else None
        return value if number is None else number  # "many" stays, and is refused


class _Listing(BaseModel):
    model_config = ConfigDict(extra="ignore")  # `day`, `timetable`...: not read

    bookings: list[_Listed] = Field(default_factory=list)


def parse_classes(status: int, raw: bytes) -> list[ClassInfo]:
    """A `GET /api/bookings` answer as ClassInfo, in the order listed."""
    if status == 401 or status in _REDIRECTS:
        # The login page, by status or by redirect: a dead session, as {"logout": 1}.
        raise SessionExpired(
            f"AimHarder answered HTTP {status} to the class listing: the session is dead, "
            "log in again (`prebookd login`)"
        )
    answer = json_answer(status, raw, "class listing")
    if isinstance(answer, dict) and answer.get("logout"):
        raise SessionExpired(
            "AimHarder answered logout to the class listing: the session is dead, "
            "log in again (`prebookd login`)"
        )
    if status != 200 or not isinstance(answer, dict) or "bookings" not in answer:
        raise AccountError(f"class listing: unexpected answer (HTTP {status})")
    try:
        listing = _Listing.model_validate(answer)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(map(str, first["loc"]))
        raise AccountError(f"class listing: unexpected answer ({where}: {first['msg']})") from None
    return [
        ClassInfo(
            session_id=entry.id,
            time=entry.time,
            name=entry.className,
            occupancy=entry.ocupation,
            limit=entry.limitc if entry.limitc is not None else (entry.limit or 0),
            waitlist=entry.waitlist,
            booked=entry.bookState == 1,
            # bookState 0 is the waiting list once there is a reservation; without one
            # it is only a value some answers use for "not booked".
            waitlisted=entry.bookState == 0 and entry.idres is not None,
            reservation_id=entry.idres,
        )
        for entry in listing.bookings
    ]
