"""The text of each message, from an outbox row's facts: pure, no I/O.

Plain text with a short title, in the channel's language (`es` or `en`: the web app
records none for a member, so a channel carries its own). Made only of the payload's
facts (outcome, box, class, instants, lateness, attempts): never a cookie or token.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_TZ = "Europe/Madrid"

# outcome code -> (Spanish, English); codes not listed read as "not booked (code)".
OUTCOMES: dict[str, tuple[str, str]] = {
    "booked": ("Reservada", "Booked"),
    "waitlisted": ("En lista de espera", "On the waiting list"),
    "already_booked": ("Ya tenías plaza", "Already booked"),
    "full": ("Clase llena", "Class full"),
    "not_open": ("La reserva aún no estaba abierta", "Booking was not open yet"),
    "blocked": ("AimHarder bloqueó la petición", "AimHarder blocked the request"),
    "refused": ("El box rechazó la reserva", "The box refused the booking"),
    "rate_limited": ("AimHarder limitó las peticiones", "AimHarder rate-limited the box"),
    "session_expired": (
        "Sesión caducada: vuelve a iniciar sesión",
        "Session expired: log in again",
    ),
    "missed": ("No se pudo enviar a tiempo", "Could not be sent in time"),
    "bad_row": ("La prerreserva no es válida", "The prebooking is not valid"),
}

WARNINGS: dict[str, tuple[str, str]] = {
    "session_dead": (
        "Tu sesión de AimHarder ha caducado: inicia sesión de nuevo antes de {when} "
        "o la reserva fallará.",
        "Your AimHarder session has ended: log in again before {when} or the booking will fail.",
    ),
    "session_rejected": (
        "El box rechaza tu sesión: inicia sesión de nuevo antes de {when}.",
        "The box rejects your session: log in again before {when}.",
    ),
    "class_gone": (
        "La clase ya no está en el horario del box; la reserva de {when} fallará.",
        "The class is no longer in the box's schedule; the booking at {when} will fail.",
    ),
}


@dataclass(frozen=True)
class Message:
    title: str
    body: str


def render(event: str, payload: dict[str, Any], lang: str | None) -> Message:
    en = lang == "en"
    if event == "outcome":
        return _outcome(payload, en)
    if event == "warning":
        return _warning(payload, en)
    if event == "test":
        return Message(
            "prebookd: test" if en else "prebookd: prueba",
            "This channel works." if en else "Este canal funciona.",
        )
    # The operator's: made by the daemon, in English, title and body given.
    return Message(str(payload.get("title", f"prebookd: {event}")), str(payload.get("body", "")))


def _outcome(p: dict[str, Any], en: bool) -> Message:
    code = str(p.get("outcome") or p.get("status") or "unknown")
    good = p.get("status") == "completed"
    label = OUTCOMES.get(code, (f"No reservada ({code})", f"Not booked ({code})"))[en]
    lines = [_class_line(p, en)]
    choice = p.get("choice")
    if isinstance(choice, int) and choice > 0:  # a backup class: the ones before were full
        lines.append(f"Alternative {choice}" if en else f"Alternativa {choice}")
    sent = p.get("written_at")
    if sent is not None:
        late = p.get("lateness_ms")
        lines.append(
            ("Sent at {at}" if en else "Enviada a las {at}").format(at=_clock(sent, p, ms=True))
            + ("" if late is None else f", +{float(late):.1f} ms")
            + (f", {p.get('attempts')} " + ("attempt(s)" if en else "intento(s)"))
        )
    if not good and p.get("error"):
        lines.append(("Detail: " if en else "Detalle: ") + str(p["error"])[:200])
    title = f"{'✅' if good else '❌'} {label}"
    return Message(title, "\n".join(lines))


def _warning(p: dict[str, Any], en: bool) -> Message:
    cause = str(p.get("cause", ""))
    when = _clock(p.get("available_at"), p, ms=False, weekday=True, en=en)
    text = WARNINGS.get(cause, ("Aviso: {when}", "Warning: {when}"))[en].format(when=when)
    title = "⚠️ " + ("Booking at risk" if en else "Reserva en peligro")
    return Message(title, text + "\n" + _class_line(p, en))


def _class_line(p: dict[str, Any], en: bool) -> str:
    box = p.get("box") or "?"
    name = p.get("class_name") or (("class " if en else "clase ") + str(p.get("class_id") or "?"))
    day = _day(p.get("day"))
    opens = _clock(p.get("available_at"), p, ms=False, weekday=True, en=en)
    return (
        f"{box}: {name}"
        + (f" ({day})" if day else "")
        + ("; " + ("booking opened " if en else "apertura ") + opens)
    )


def _day(raw: Any) -> str:
    text = str(raw or "")
    if len(text) == 8 and text.isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return text[:20]


_WEEKDAYS = (
    ("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"),
    ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
)


def _clock(
    epoch: Any, p: dict[str, Any], *, ms: bool, weekday: bool = False, en: bool = False
) -> str:
    """An instant in the box's time zone: 07:00:00.000, or Thursday 2030-12-01 07:00."""
    if epoch is None:
        return "?"
    try:
        tz = ZoneInfo(str(p.get("timezone") or DEFAULT_TZ))
    except (ZoneInfoNotFoundError, ValueError):
        tz = ZoneInfo(DEFAULT_TZ)
    try:
        local = dt.datetime.fromtimestamp(float(epoch), tz)
    except (OverflowError, OSError, ValueError):
        return "?"
    if ms:
        return local.strftime("%H:%M:%S.") + f"{local.microsecond // 1000:03d}"
    day = _WEEKDAYS[en][local.weekday()] + " " if weekday else ""
    return day + local.strftime("%Y-%m-%d %H:%M %Z")
