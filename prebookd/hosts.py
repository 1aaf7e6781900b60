"""Which hosts may be sent members' cookies (a box's base URL) and passwords (the
account URL): the patterns of `PREBOOKD_BOX_HOSTS` and the check against them."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence

from yarl import URL

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
