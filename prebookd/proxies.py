"""The proxy AimHarder is reached through (`PREBOOKD_PROXY_URL`, a box's own
`boxes.proxy_url`): AimHarder answers 403 to some cloud address ranges. Which URLs are
proxies, and how one is shown: its password is a secret, never printed or logged."""

from __future__ import annotations

from urllib.parse import urlsplit

from yarl import URL

from prebookd.errors import BadRow
from prebookd.log import register_secret

PROXY_SCHEMES = ("http", "https", "socks5")
PROXY_FORM = "scheme://[user:password@]host:port with scheme http, https or socks5"


def parse_proxy_url(value: str) -> str:
    """`value` as a proxy URL (stripped, no trailing slash); ValueError saying what is
    wrong, never quoting the URL (it may hold a password). Its password is registered
    to be masked in any log line."""
    text = value.strip().removesuffix("/")
    try:
        url = URL(text)
        scheme, host, port = url.scheme, url.host, url.explicit_port
        rest = url.raw_path.strip("/"), url.raw_query_string, url.raw_fragment
    except (ValueError, TypeError):  # a port out of range or not a number, a bad IPv6...
        raise ValueError(f"is not a URL: expected {PROXY_FORM}") from None
    if url.raw_password is not None:
        register_secret(url.raw_password)  # as written, and as sent (decoded)
        register_secret(url.password)
    if scheme not in PROXY_SCHEMES:
        raise ValueError(f"must be an http://, https:// or socks5:// URL ({PROXY_FORM})")
    if not host or port is None or any(rest) or not url.is_absolute():
        raise ValueError(f"expected {PROXY_FORM}")
    return text


def mask_proxy_url(value: str) -> str:
    """The proxy URL with its password replaced, safe to print."""
    parts = urlsplit(value)
    try:
        password = parts.password
    except ValueError:
        password = None
    if password is None:
        return value
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:****@{parts.netloc.rpartition('@')[2]}").geturl()


def box_proxy_url(value: object) -> str | None:
    """`boxes.proxy_url` as a row gives it: None when empty (the global proxy, or none);
    BadRow saying why when it is no proxy URL (nothing of the row is sent)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        if not isinstance(value, str):
            raise ValueError("is not text")
        return parse_proxy_url(value)
    except ValueError as exc:
        raise BadRow(f"box proxy_url {exc}: see `prebookd box set --proxy`") from None
