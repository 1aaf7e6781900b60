"""Which hosts may be sent members' cookies (a box's base URL) and passwords (the
account URL): the patterns of `PREBOOKD_BOX_HOSTS`, the check against them, and a
box's base URL as a row gives it."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Any

from yarl import URL

from prebookd.errors import BadRow
from prebookd.text import one_line

# Where members' cookies (a box's base URL) and passwords (the account URL) may go.
DEFAULT_BOX_HOSTS = ("aimharder.com", "*.aimharder.com", "aimharder.es", "*.aimharder.es")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def parse_host_patterns(value: str | Iterable[str]) -> tuple[str, ...]:
    """`aimharder.com,*.aimharder.com,127.0.0.1` as patterns: a host name or IP address
    matches itself, `*.domain` any host under domain (not domain itself); ValueError
    names the first pattern that is neither."""
    patterns: list[str] = []
    for item in value.split(",") if isinstance(value, str) else value:
        pattern = _normal_host(str(item))
        if not pattern:
            continue  # "a,,b" or a trailing comma
        name = pattern.removeprefix("*.")
        if name == pattern:
            valid = bool(_HOST_NAME.fullmatch(name) or _ip(name))
        else:  # a wildcard over a domain: not over an address, nor a whole TLD
            valid = bool(_HOST_NAME.fullmatch(name)) and "." in name and not _ip(name)
        if not valid:
            raise ValueError(
                f"{str(item).strip()[:60]!r} is not a host name, an IP address or *.domain.tld"
            )
        patterns.append(pattern)
    return tuple(dict.fromkeys(patterns))


def url_not_allowed(url: URL, allowed_hosts: Sequence[str]) -> str | None:
    """Why `url` may not be sent members' cookies or passwords, or None when it may:
    https to a host `allowed_hosts` matches, or plain http to a loopback host it names
    exactly (the simulator in tests and the demo)."""
    if url.scheme not in ("http", "https"):
        return "it is not an http(s) URL"
    if url.user is not None or url.password is not None:
        return "it carries a user name or password"
    host = _normal_host(url.raw_host or "")
    if not host:
        return "it has no host"
    allowed = {_normal_host(pattern) for pattern in allowed_hosts}
    named = host in allowed
    if not named and not any(p[:2] == "*." and host.endswith(p[1:]) for p in allowed):
        return f"its host {host[:60]} is not in PREBOOKD_BOX_HOSTS"
    if url.scheme == "http" and not (named and _loopback(host)):
        return "plain http is only for a loopback host named in PREBOOKD_BOX_HOSTS; use https"
    return None


def _normal_host(host: str) -> str:
    # "[::1]" as written in a URL, "AimHarder.com." with the root's dot: the same hosts.
    return host.strip().lower().removeprefix("[").removesuffix("]").removesuffix(".")


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _loopback(host: str) -> bool:
    address = _ip(host)
    return host == "localhost" if address is None else address.is_loopback


# A box's subdomain is one DNS label: anything else would send the member's cookies
# to another host (`evil.example#` makes https://evil.example#.aimharder.com).
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def box_base_url(base_url: Any, subdomain: Any, allowed_hosts: Sequence[str]) -> str:
    """The base URL a box's requests go to, with the member's cookies: the row's
    base_url if it is an https URL on `allowed_hosts` (plain http only to a loopback
    host named there), or https://SUBDOMAIN.aimharder.com; else BadRow saying why."""
    derived = f"https://{subdomain}.aimharder.com"
    if not base_url:
        if not subdomain:
            raise BadRow("box has neither base_url nor subdomain")
        if not isinstance(subdomain, str) or not _DNS_LABEL.fullmatch(subdomain):
            raise BadRow(f"box subdomain is not a host name: {one_line(subdomain, 100)}")
        base_url = derived
    problem = f"box base_url is not an http(s) URL: {one_line(base_url, 100)}"
    # It goes in the Origin and Referer headers as it is: no whitespace (a CR or LF
    # would end the header), nothing unprintable, nothing a header cannot encode.
    if not isinstance(base_url, str) or not base_url.isprintable() or not base_url.isascii():
        raise BadRow(problem)
    try:
        url = URL(base_url)
        valid = url.scheme in ("http", "https") and bool(url.host) and url.port is not None
    except (ValueError, TypeError):  # a port out of range, a broken IPv6 literal...
        valid = False
    if not valid or any(c in base_url for c in " ?#"):  # "/api/book" is appended
        raise BadRow(problem)
    # The URL the subdomain makes is always AimHarder's; any other must be allowed.
    named = isinstance(subdomain, str) and _DNS_LABEL.fullmatch(subdomain)
    if not named or base_url.rstrip("/").lower() != derived.lower():
        refused = url_not_allowed(url, allowed_hosts)
        if refused is not None:
            raise BadRow(f"box base_url {one_line(base_url, 100)} is not allowed: {refused}")
    return base_url.rstrip("/")
