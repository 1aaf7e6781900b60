"""HTTP sessions to AimHarder, direct or through a proxy (`PREBOOKD_PROXY_URL`, a box's
own `boxes.proxy_url`; prebookd/proxies.py says which URLs are proxies).

An http:// or https:// proxy is aiohttp's own (`proxy=`): a CONNECT tunnel per
connection to an https box (and a plain request in absolute form to an http one). A
socks5:// proxy is a connector of its own (aiohttp-socks). Either way the proxy is met
when a connection is opened, not when a request is written: the handshakes happen
where a direct connection's would, at staging, and nothing is left for the instant
but the write.
"""

from __future__ import annotations

import warnings
from typing import Any

import aiohttp
from aiohttp_socks import ProxyConnector, ProxyError
from yarl import URL


class _SocksConnector(ProxyConnector):
    """aiohttp-socks' connector, whose refusals (wrong password, a proxy that will not
    connect) are aiohttp's connection errors like any other: nothing was written."""

    async def _wrap_create_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super()._wrap_create_connection(*args, **kwargs)
        except ProxyError as exc:
            raise aiohttp.ClientConnectionError(f"socks5 proxy refused: {exc}") from None


def proxied_session(
    proxy_url: str | None, *, connector: dict[str, Any] | None = None, **options: Any
) -> aiohttp.ClientSession:
    """A ClientSession to AimHarder through `proxy_url` (None: direct), its connector
    made with the `connector` keywords (limit, limit_per_host, ...) and the session with
    `options`. The caller closes it."""
    limits = connector or {}
    if proxy_url is not None and proxy_url.startswith("socks5://"):
        return aiohttp.ClientSession(
            connector=_SocksConnector.from_url(proxy_url, **limits), **options
        )
    proxy, auth = None, None
    if proxy_url is not None:
        # The credentials apart from the URL: aiohttp quotes the proxy URL in its errors
        # (a refused CONNECT), which end up in logs and in prebookings.error_message.
        proxy = URL(proxy_url)
        if proxy.user is not None:
            auth = proxy.user, proxy.password or ""
            proxy = proxy.with_user(None)
    if auth is None:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(**limits), proxy=proxy, **options
        )
    # aiohttp 3.14 deprecates proxy_auth for 4.0 (pyproject keeps aiohttp < 4), in favour
    # of a Proxy-Authorization header on each request, which a session cannot default.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(**limits),
            proxy=proxy,
            proxy_auth=aiohttp.BasicAuth(*auth),
            **options,
        )


class ProxiedSessions:
    """Sessions to boxes by proxy, for what reads their listings: one through the
    default proxy (PREBOOKD_PROXY_URL, or direct), and one more per box proxy met, made
    when first asked for. A box that needs a proxy of its own needs it for every
    request, not only for bookings."""

    def __init__(self, default: str | None, *, limit: int) -> None:
        self._default = default
        self._limit = limit
        self._sessions: dict[str | None, aiohttp.ClientSession] = {}

    def get(self, box_proxy: str | None) -> aiohttp.ClientSession:
        """The session for a box whose own proxy is `box_proxy` (None: the default)."""
        proxy = box_proxy or self._default
        if (session := self._sessions.get(proxy)) is None:
            session = self._sessions[proxy] = proxied_session(
                proxy, connector={"limit": self._limit}, cookie_jar=aiohttp.DummyCookieJar()
            )
        return session

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()
